"""Triton code for element-wise IR expressions, forward and reverse mode.

Every value is a tile over the kernel's axes: T (token rows), D (the state's first axis) and, for a
matrix state, N (its second). A node's kind is the tuple of axes it varies along; its tile has the
block size on those axes and 1 on the others, so tiles broadcast like the IR's shapes. Options are
scalar kernel arguments, constants literals. The reverse mode walks the same nodes backwards and sums
each contribution over the axes its operand does not vary along.
"""
from __future__ import annotations

import os

from recdsl.ir import IR


def exp_function() -> str:
    """The `_exp` device function every module that uses FORWARD defines. On a GPU it is the special-function
    unit's ex2 with subnormal results flushed to zero: tl.exp keeps them through a range fix-up of three
    instructions per element (FSETP and two FMULs in the sm_90 SASS), and a decay or gate below 2^-126 is
    zero for every purpose here. Triton's interpreter runs no inline PTX, so there `_exp` is tl.exp."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        body = "return tl.exp(x)"
    else:
        body = ('return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x * 1.4426950408889634], '
                'dtype=tl.float32, is_pure=True, pack=1)')
    return f"@triton.jit\ndef _exp(x):\n    {body}\n"


# op -> Triton expression over operand names
FORWARD = {
    "neg": "-{0}", "exp": "_exp({0})", "log": "tl.log({0})", "sigmoid": "tl.sigmoid({0})",
    "logsigmoid": "(tl.minimum({0}, 0.0) - tl.log(1.0 + _exp(-tl.abs({0}))))",
    "softplus": "(tl.maximum({0}, 0.0) + tl.log(1.0 + _exp(-tl.abs({0}))))",
    "silu": "({0} * tl.sigmoid({0}))", "tanh": "(2.0 * tl.sigmoid(2.0 * {0}) - 1.0)",
    "relu": "tl.maximum({0}, 0.0)", "sqrt": "tl.sqrt({0})", "abs": "tl.abs({0})",
    "add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})", "div": "({0} / {1})",
}
# op -> contributions to each operand's gradient, given g (the node's gradient), y (its value) and x0, x1
BACKWARD = {
    "neg": ["-{g}"], "exp": ["{g} * {y}"], "log": ["{g} / {x0}"], "sigmoid": ["{g} * {y} * (1.0 - {y})"],
    "logsigmoid": ["{g} * tl.sigmoid(-{x0})"], "softplus": ["{g} * tl.sigmoid({x0})"],
    "silu": ["{g} * (tl.sigmoid({x0}) * (1.0 + {x0} * (1.0 - tl.sigmoid({x0}))))"],
    "tanh": ["{g} * (1.0 - {y} * {y})"], "relu": ["tl.where({x0} > 0.0, {g}, 0.0)"],
    "sqrt": ["{g} * 0.5 / {y}"], "abs": ["tl.where({x0} >= 0.0, {g}, -{g})"],
    "add": ["{g}", "{g}"], "sub": ["{g}", "-{g}"], "mul": ["{g} * {x1}", "{g} * {x0}"],
    "div": ["{g} / {x1}", "-{g} * {x0} / ({x1} * {x1})"],
}
# outer and matmul multiply tiles laid out on different axes; matmul then sums the contracted axis N
BACKWARD["outer"] = BACKWARD["matmul"] = BACKWARD["mul"]
SUPPORTED = set(FORWARD) | {"pow", "const", "input", "weight", "option", "state", "outer", "matmul"}


def literal(v: float) -> str:
    return repr(float(v))


class Emitter:
    """Emit forward and reverse-mode code for value nodes. `kinds` gives every node's axes, `axes` the
    kernel's axis order and `masks` the name of each axis's validity mask."""

    def __init__(self, ir: IR, kinds: dict[int, tuple], axes: tuple, masks: dict[str, str], suffix: str = ""):
        self.ir, self.kinds, self.axes, self.masks, self.suffix = ir, kinds, axes, masks, suffix

    def var(self, i: int) -> str:
        n = self.ir.node(i)
        if n.op == "const":
            return literal(n.args[0])
        return f"v{i}{self.suffix}"

    def forward(self, nodes: list[int]) -> list[str]:
        """Lines computing every non-leaf node in `nodes` (already in topological order)."""
        lines = []
        for i in nodes:
            n = self.ir.node(i)
            if not self.ir.operands(i):
                continue
            ops = [self.var(o) for o in self.ir.operands(i)]
            if n.op == "pow":
                e = self.ir.node(self.ir.operands(i)[1]).args[0]
                expr = {2.0: f"({ops[0]} * {ops[0]})", 0.5: f"tl.sqrt({ops[0]})", 1.0: ops[0],
                        -1.0: f"(1.0 / {ops[0]})"}.get(e, f"tl.exp({literal(e)} * tl.log({ops[0]}))")
            elif n.op == "outer":
                expr = f"({ops[0]} * {ops[1]})"
            elif n.op == "matmul":
                expr = f"tl.sum({ops[0]} * {ops[1]}, axis={self.axes.index('N')}, keep_dims=True)"
            else:
                expr = FORWARD[n.op].format(*ops)
            lines.append(f"{self.var(i)} = {expr}  # IR %{i} {n.op}")
        return lines

    def reduce_to(self, contrib: str, have: tuple, want: tuple) -> str:
        """Sum a contribution varying along `have` over the axes `want` lacks (masked lanes excluded)."""
        extra = [a for a in self.axes if a in have and a not in want]
        if not extra:
            return contrib
        out = f"tl.where({' & '.join(self.masks[a] for a in have)}, {contrib}, 0.0)"
        for a in extra:
            out = f"tl.sum({out}, axis={self.axes.index(a)}, keep_dims=True)"
        return out

    def backward(self, nodes: list[int], seeds: dict[int, str]) -> tuple[list[str], dict[int, str]]:
        """Reverse mode from `seeds` (node -> Triton expression of its gradient). Returns the lines and,
        for each leaf reached, the name of its gradient (a tile of the leaf's kind)."""
        grads: dict[int, str] = {}
        lines: list[str] = []

        def add(o: int, contrib: str, have: tuple):
            if self.ir.node(o).op in ("const", "option"):
                return
            contrib = self.reduce_to(contrib, have, self.kinds[o])
            name = f"g{o}{self.suffix}"
            if o in grads:
                lines.append(f"{name} = {name} + {contrib}")
            else:
                lines.append(f"{name} = {contrib}")
                grads[o] = name

        for i, g in seeds.items():
            lines.append(f"g{i}{self.suffix} = {g}")
            grads[i] = f"g{i}{self.suffix}"
        for i in reversed(nodes):
            n = self.ir.node(i)
            if i not in grads or not self.ir.operands(i):
                continue
            ops = self.ir.operands(i)
            fmt = dict(g=grads[i], y=self.var(i), **{f"x{k}": self.var(o) for k, o in enumerate(ops)})
            if n.op == "pow":
                e = self.ir.node(ops[1]).args[0]
                contribs = [f"{grads[i]} * {literal(e)} * tl.exp({literal(e - 1)} * tl.log({self.var(ops[0])}))"]
            else:
                contribs = [c.format(**fmt) for c in BACKWARD[n.op]]
            # a contribution varies along the node's axes and its operands' (matmul's N included)
            have = set(self.kinds[i])
            for o in ops:
                have |= set(self.kinds.get(o, ()))
            have = tuple(a for a in self.axes if a in have)
            lines.append(f"# d/d of IR %{i} {n.op}")
            for o, c in zip(ops, contribs):
                add(o, c, have)
        leaves = {i: g for i, g in grads.items() if not self.ir.operands(i)}
        return lines, leaves
