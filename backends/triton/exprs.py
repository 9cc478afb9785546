"""Triton code for element-wise IR expressions, forward and reverse mode.

Values are tiles broadcastable to [BT, BD] (time rows x channels): an input is a [BT, BD] tile, a
weight a [1, BD] row, an option a scalar kernel argument, a constant a literal. The reverse mode
walks the same nodes backwards and reduces each contribution to its operand's tile shape.
"""
from __future__ import annotations

from recdsl.ir import IR

# op -> Triton expression over operand names
FORWARD = {
    "neg": "-{0}", "exp": "tl.exp({0})", "log": "tl.log({0})", "sigmoid": "tl.sigmoid({0})",
    "logsigmoid": "(tl.minimum({0}, 0.0) - tl.log(1.0 + tl.exp(-tl.abs({0}))))",
    "softplus": "(tl.maximum({0}, 0.0) + tl.log(1.0 + tl.exp(-tl.abs({0}))))",
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
SUPPORTED = set(FORWARD) | {"pow", "const", "input", "weight", "option", "state"}

TIME, CHANNEL, SCALAR = "T", "C", "S"   # tile kinds: [BT, BD], [1, BD], scalar


def literal(v: float) -> str:
    return repr(float(v))


class Emitter:
    """Emit forward code for a set of value nodes; `names` maps leaves to the Triton names holding them."""

    def __init__(self, ir: IR, leaf_kind: dict[int, str], suffix: str = ""):
        self.ir, self.suffix = ir, suffix
        self.kind: dict[int, str] = dict(leaf_kind)

    def var(self, i: int) -> str:
        n = self.ir.node(i)
        if n.op == "const":
            return literal(n.args[0])
        return f"v{i}{self.suffix}"

    def kind_of(self, i: int) -> str:
        if i not in self.kind:
            ks = {self.kind_of(o) for o in self.ir.operands(i)} if self.ir.operands(i) else {SCALAR}
            self.kind[i] = TIME if TIME in ks else CHANNEL if CHANNEL in ks else SCALAR
        return self.kind[i]

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
            else:
                expr = FORWARD[n.op].format(*ops)
            self.kind_of(i)
            lines.append(f"{self.var(i)} = {expr}  # IR %{i} {n.op}")
        return lines

    def backward(self, nodes: list[int], seeds: dict[int, str], mask: str) -> tuple[list[str], dict[int, str]]:
        """Reverse mode from `seeds` (node -> Triton expression of its gradient). Returns the lines and,
        for each leaf reached, the name of its gradient (reduced to the leaf's tile kind)."""
        grads: dict[int, str] = {}
        lines: list[str] = []

        def add(o: int, contrib: str, src_kind: str):
            if self.ir.node(o).op in ("const", "option"):
                return
            ok = self.kind_of(o)
            if ok == CHANNEL and src_kind == TIME:
                contrib = f"tl.sum(tl.where({mask}, {contrib}, 0.0), axis=0)[None, :]"
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
            lines.append(f"# d/d of IR %{i} {n.op}")
            for o, c in zip(ops, contribs):
                add(o, c, self.kind_of(i))
        leaves = {i: g for i, g in grads.items() if not self.ir.operands(i)}
        return lines, leaves
