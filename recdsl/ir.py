"""The IR: one immutable node type, one op vocabulary, a frozen networkx DiGraph per spec.

Edges run operand -> user and carry `slots` (the operand positions). Nodes are hash-consed
while building, so two equal sub-expressions are one node: `delta(k, v, beta)` and
`householder(k, beta)` then share their `k` and `beta` nodes, which is how the planner pairs them.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import networkx as nx

from .ast import Pos

# op -> (kind, number of operands or None for any); kind 'value' is a tensor per token (and head),
# 'linmap' a linear map acting on the state (a factor of the transition A_t).
OPS: dict[str, tuple[str, int | None]] = {
    # leaves
    "input": ("value", 0), "weight": ("value", 0), "option": ("value", 0), "const": ("value", 0),
    "state": ("value", 0), "hidden": ("value", 0), "core_output": ("value", 0), "index": ("value", 0),
    "uniform": ("value", 2), "normal": ("value", 1),
    # element-wise
    **{u: ("value", 1) for u in ("neg", "exp", "log", "sigmoid", "logsigmoid", "softplus", "silu",
                                 "tanh", "relu", "sqrt", "abs")},
    **{b: ("value", 2) for b in ("add", "sub", "mul", "div", "pow")},
    # contractions and normalisations
    "l2norm": ("value", 1), "matmul": ("value", 2), "outer": ("value", 2),
    # writes
    "delta": ("value", 3),          # sum_j beta_j k_j v_j^T, interleaved with the paired householder
    # layer
    "linear": ("value", 1), "mlp": ("value", 1), "rmsnorm": ("value", 1), "layernorm": ("value", 1),
    "colnorm": ("value", 1), "shortconv": ("value", 1),
    # transition factors
    "identity": ("linmap", 0), "diag": ("linmap", 1), "householder": ("linmap", 2), "rank1": ("linmap", 2),
    "blockdiag": ("linmap", 1), "kron": ("linmap", 2), "compose": ("linmap", 2), "lsum": ("linmap", 2),
    # fixed points: prev(x) is the previous iterate of the state or output; mix applies a linmap to a value
    "prev": ("value", 0), "mix": ("value", 2),
}
ELEMENTWISE_UNARY = {o for o, (k, n) in OPS.items() if n == 1 and o in
                     ("neg", "exp", "log", "sigmoid", "logsigmoid", "softplus", "silu", "tanh", "relu", "sqrt", "abs")}
ELEMENTWISE_BINARY = {"add", "sub", "mul", "div", "pow"}


@dataclass(frozen=True)
class Node:
    """One IR node. `args` holds static attributes (names, numbers); operands are graph edges."""
    op: str
    args: tuple = ()
    shape: tuple[int, ...] = ()
    pos: Pos | None = field(default=None, compare=False, hash=False)

    @property
    def kind(self) -> str:
        return OPS[self.op][0]


@dataclass(frozen=True)
class IR:
    """A lowered spec: the graph plus its named roots and the bound parameters."""
    name: str
    graph: nx.DiGraph = field(compare=False, hash=False)
    roots: tuple[tuple[str, int], ...]          # ("transition", id), ("write", id), ("output:o", id), ("layer:q", id)...
    params: tuple[tuple[str, float], ...]
    heads: int | None
    state: tuple[str, tuple[int, ...]]
    solve: tuple[tuple[str, float], ...] = ()     # fixed-point settings; empty when nothing reads prev()
    filename: str = "<spec>"
    source: str = field(default="", compare=False, hash=False, repr=False)

    def node(self, i: int) -> Node:
        return self._nodes[i]

    def operands(self, i: int) -> list[int]:
        return self._operand_table[i]

    def __post_init__(self):
        # plain tables read on hot paths (and traceable by torch.compile, unlike graph queries)
        object.__setattr__(self, "_operand_table", {i: operands_of(self.graph, i) for i in self.graph.nodes})
        object.__setattr__(self, "_nodes", {i: self.graph.nodes[i]["node"] for i in self.graph.nodes})
        # each node's op and its ancestors' ops: reads() runs on every call of a fixed-point spec, where a
        # networkx ancestors query per test took about 0.4 ms of host time per call (H100 host profile)
        object.__setattr__(self, "_ops_below", {i: frozenset({self._nodes[i].op} | {
            self._nodes[a].op for a in nx.ancestors(self.graph, i)}) for i in self.graph.nodes})

    def root(self, name: str) -> int | None:
        return dict(self.roots).get(name)

    def roots_with(self, prefix: str) -> list[tuple[str, int]]:
        return [(n[len(prefix):], i) for n, i in self.roots if n.startswith(prefix)]

    def factors(self, i: int) -> list[int]:
        """A compose chain's factors in the order they act on the state (rightmost first)."""
        if self.node(i).op == "compose":
            a, b = self.operands(i)
            return self.factors(b) + self.factors(a)
        return [i]

    def reads(self, i: int, *ops: str) -> bool:
        """Whether node i is, or depends on, a node of one of these ops."""
        return not self._ops_below[i].isdisjoint(ops)

    def leaves(self, op: str) -> list[Node]:
        """Leaf nodes of one op, in canonical order."""
        return [self.node(i) for i in self.order() if self.node(i).op == op]

    def order(self) -> list[int]:
        """Deterministic topological order: operands first, ties broken by the canonical key."""
        return list(nx.lexicographical_topological_sort(self.graph, key=lambda i: _sort_key(self.node(i))))

    def text(self) -> str:
        """Canonical text: one line per node, numbered in canonical order, no positions."""
        order = self.order()
        num = {i: k for k, i in enumerate(order)}
        lines = [f"recurrence {self.name}  heads={self.heads}  state {self.state[0]}{list(self.state[1])}"]
        lines += [f"param {k} = {_fmt(v)}" for k, v in self.params]
        lines += [f"solve {k} = {_fmt(v)}" for k, v in self.solve]
        for i in order:
            n = self.node(i)
            ops = ", ".join(f"%{num[u]}" for u in self.operands(i))
            args = ", ".join(_fmt(a) for a in n.args)
            inner = ", ".join(x for x in (args, ops) if x)
            lines.append(f"%{num[i]} = {n.op}({inner}) : {list(n.shape)}")
        lines += [f"{name} -> %{num[i]}" for name, i in sorted(self.roots)]
        return "\n".join(lines)

    def hash(self) -> str:
        """Structural hash: sha256 of the canonical text (stable across processes and runs)."""
        return hashlib.sha256(self.text().encode()).hexdigest()[:16]


def operands_of(graph: nx.DiGraph, i: int) -> list[int]:
    pairs = [(s, u) for u, _, d in graph.in_edges(i, data=True) for s in d["slots"]]
    return [u for _, u in sorted(pairs)]


def _fmt(v) -> str:
    if isinstance(v, float):
        return repr(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)
    if isinstance(v, tuple):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    return str(v)


def _sort_key(n: Node) -> str:
    return f"{n.op}|{_fmt(n.args)}|{n.shape}"


class Builder:
    """Mutable helper used only while lowering: hash-conses nodes into a DiGraph."""

    def __init__(self):
        self.graph = nx.DiGraph()
        self._ids: dict[tuple, int] = {}

    def add(self, op: str, operands: tuple[int, ...] = (), args: tuple = (), shape=(), pos: Pos | None = None) -> int:
        key = (op, args, tuple(shape), operands)
        if key in self._ids:
            return self._ids[key]
        i = len(self._ids)
        self._ids[key] = i
        self.graph.add_node(i, node=Node(op, args, tuple(shape), pos))
        for slot, u in enumerate(operands):
            # a node may use the same operand twice (x * x): keep both slots on one edge
            if self.graph.has_edge(u, i):
                self.graph.edges[u, i]["slots"] += (slot,)
            else:
                self.graph.add_edge(u, i, slots=(slot,))
        return i

    def node(self, i: int) -> Node:
        return self.graph.nodes[i]["node"]

    def operands(self, i: int) -> list[int]:
        return operands_of(self.graph, i)
