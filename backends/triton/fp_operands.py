"""The fused fixed-point iteration's element-wise operands (the decay a, the gate g, the input x of
fp_fused.FusedPattern) evaluated inside the kernel from the spec's arguments, where their expressions
allow it.

Materialised before the solve, each is an fp32 [NTOK, D] tensor that every iteration reads again. At
issue 5's shape (examples/fp_rnn.rec: a = lam, g = 1 - lam, x an input) that is 96 MiB an iteration;
evaluated in the kernel it is lam and x in their own dtype, 64 MiB in fp32 and 32 MiB in bf16. An
expression qualifies when it is element-wise (exprs.FORWARD, powers with constant exponents) over
inputs and weights with one value per token or per state entry (none l2-normalised: that needs whole
rows), options and constants. The others stay materialised.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from recdsl.ir import IR

from .exprs import FORWARD, Emitter


@dataclass(frozen=True)
class InlineOperands:
    """Which operands the kernel evaluates, from which arguments, and the kernel lines that define them."""
    targets: tuple[int, ...]                  # the operand nodes evaluated in the kernel
    leaves: tuple[tuple[str, str], ...]       # (op, argument name) the kernel reads: input, weight, option
    lines: tuple[str, ...]                    # the kernel lines defining every operand's tile

    def signature(self) -> str:
        """The kernel's leading arguments (with a trailing ', ' when there are any)."""
        return "".join(f"{_arg(op, name)}, " for op, name in self.leaves)


def _ok(ir: IR, i: int) -> bool:
    n, D = ir.node(i), ir.state[1][0]
    if n.op in ("input", "weight"):
        return n.shape in ((), (D,)) and not any(c[0] == "l2norm" for c in n.args[1])
    if n.op == "pow":
        return ir.node(ir.operands(i)[1]).op == "const"
    return n.op in ("option", "const") or n.op in FORWARD


def _arg(op: str, name: str) -> str:
    return {"input": "in_", "weight": "w_", "option": "opt_"}[op] + name


def plan(ir: IR, operands: list[tuple[int, str, str]]) -> InlineOperands:
    """For operands [(node, kernel variable, its value on masked lanes)]: each is a [BT, BD] tile evaluated
    from the arguments where its whole expression allows it, else loaded from its tensor materialised
    before the solve (named as the variable without its 'b_' prefix). The lines use the kernel's p, o_d,
    off, m_t, m_d and m_td."""
    import networkx as nx
    below_of = {i: nx.ancestors(ir.graph, i) | {i} for i, _, _ in operands}
    targets = tuple(dict.fromkeys(i for i, _, _ in operands if all(_ok(ir, j) for j in below_of[i])))
    below = set().union(*(below_of[i] for i in targets))
    nodes = [i for i in ir.order() if i in below]
    D = ir.state[1][0]
    leaves: dict[tuple[str, str], int] = {}
    out = []
    for i in nodes:
        n = ir.node(i)
        if n.op not in ("input", "weight", "option"):
            continue
        key = (n.op, n.args[0])
        if key in leaves:                       # the same argument under another node: one load
            out.append(f"v{i} = v{leaves[key]}")
            continue
        leaves[key] = i
        arg = _arg(*key)
        if n.op == "option":
            src = arg
        elif n.op == "input":
            src = (f"tl.load({arg} + off, mask=m_td, other=0.0)" if n.shape == (D,) else
                   f"tl.load({arg} + p[:, None], mask=m_t[:, None], other=0.0)")
        else:
            src = (f"tl.load({arg} + o_d[None, :], mask=m_d[None, :], other=0.0)" if n.shape == (D,) else
                   f"tl.load({arg})")
        out.append(f"v{i} = {src}" + (".to(tl.float32)" if n.op != "option" else "") +
                   f"  # IR %{i} {n.op} {n.args[0]}")
    emitter = Emitter(ir, {}, ("T", "D"), {"T": "m_t", "D": "m_d"})
    out += emitter.forward(nodes)
    for i, var, masked in operands:
        if i in targets:
            out.append(f"{var} = tl.where(m_td, {emitter.var(i)}, {masked})  # IR %{i}, evaluated here")
        else:
            out.append(f"{var} = tl.load({var[2:]} + off, mask=m_td, other={masked})  # IR %{i}, "
                       "evaluated before the solve")
    # comments name nodes by their canonical numbers (IR.text()), as the rest of the kernel does
    num = {i: k for k, i in enumerate(ir.order())}
    out = [re.sub(r"# IR %(\d+)", lambda m: f"# IR %{num[int(m.group(1))]}", line) for line in out]
    return InlineOperands(targets, tuple(leaves), tuple(out))


def leaf_values(inline: InlineOperands, args: dict, options: dict, NTOK: int) -> tuple:
    """The kernel's leading arguments for one call: inputs as [NTOK, ...] rows in their own dtype,
    weights as they are, options as floats."""
    vals = []
    for op, name in inline.leaves:
        if op == "option":
            vals.append(float(options[name]))
            continue
        x = args[name].detach()
        vals.append((x.reshape(NTOK, -1) if op == "input" else x).contiguous())
    return tuple(vals)
