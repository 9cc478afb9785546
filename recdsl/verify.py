"""IR verifier: every rule a backend relies on, each failure naming the node and its spec position."""
from __future__ import annotations

import networkx as nx

from .errors import RecSemanticError
from .ir import IR, OPS

LINMAP_OPERANDS = {"compose", "lsum"}
MIXED_OPERANDS = {"mix": ("linmap", "value")}


def verify(ir: IR) -> None:
    def fail(i: int | None, message: str, hint: str = ""):
        n = ir.node(i) if i is not None else None
        pos = n.pos if n is not None and n.pos is not None and n.pos.line else None
        where = f" (node {n.op}{list(n.shape)})" if n is not None else ""
        raise RecSemanticError(message + where, source=ir.source, filename=ir.filename,
                               line=pos.line if pos else 1, column=pos.column if pos else 1, hint=hint)

    g = ir.graph
    if not nx.is_directed_acyclic_graph(g):
        fail(None, "the IR has a cycle")
    for i in g.nodes:
        n = ir.node(i)
        if n.op not in OPS:
            fail(i, f"unknown op {n.op!r}")
        kind, arity = OPS[n.op]
        ops = ir.operands(i)
        if arity is not None and len(ops) != arity:
            fail(i, f"{n.op} takes {arity} operands, has {len(ops)}")
        want = MIXED_OPERANDS.get(n.op) or (("linmap",) * len(ops) if n.op in LINMAP_OPERANDS else ("value",) * len(ops))
        for o, w in zip(ops, want):
            if ir.node(o).kind != w:
                fail(i, f"operand {ir.node(o).op} of {n.op} is a {ir.node(o).kind}, expected a {w}")
        if kind == "linmap" and n.op != "identity" and not n.shape:
            fail(i, "a linear map needs the shape it acts on")
    for name in ("transition", "write"):
        if ir.root(name) is None:
            fail(None, f"the IR has no {name}")
    trans, write = ir.root("transition"), ir.root("write")
    outs = ir.roots_with("output:")
    if len(outs) != 1:
        fail(None, "the IR needs exactly one output")
    S = ir.state[1]
    if ir.node(trans).kind != "linmap" or ir.node(trans).shape != S:
        fail(trans, f"the transition must be a linear map on the state {list(S)}")
    if ir.node(write).kind != "value" or ir.node(write).shape != S:
        fail(write, f"the write must be a value of the state's shape {list(S)}")
    for root in (trans, write):
        for a in nx.ancestors(g, root) | {root}:
            if ir.node(a).op == "state":
                fail(a, "the transition and the write cannot read the state directly",
                     "to iterate on the state, read prev(...) and add `solve`")
    for a in nx.ancestors(g, outs[0][1]):   # prev may: a fixed point's readout reads the previous iterate
        if ir.node(a).op == "delta":
            fail(a, "the output cannot use delta")
    if ir.node(write).op == "delta":
        k, _, beta = ir.operands(write)
        factors = ir.factors(trans)
        if not any(ir.node(f).op == "householder" and ir.operands(f) == [k, beta] for f in factors):
            fail(write, "a delta(k, v, beta) write needs householder(k, beta) with the same k and beta as a "
                        "factor of the transition product",
                 "write transition ... * householder(k, beta) and write delta(k, v, beta)")
    for i in g.nodes:
        if ir.node(i).op == "delta" and i != write:
            fail(i, "delta(...) can only be the whole write")


