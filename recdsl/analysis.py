"""Analysis of a lowered spec: structure family, eigenvalue range of A_t, what that range implies, cost.

Ranges come from interval arithmetic over the declared constraints (`in (a, b)`, `log`, `positive`,
`l2norm`); nothing is sampled. A range the constraints do not bound is reported as unbounded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import networkx as nx

from .ir import IR

INF = math.inf


@dataclass(frozen=True)
class Interval:
    lo: float
    hi: float
    lo_closed: bool = True
    hi_closed: bool = True

    def __str__(self) -> str:
        if self.lo == self.hi:
            return f"{{{_num(self.lo)}}}"
        lb = "[" if self.lo_closed and self.lo > -INF else "("
        rb = "]" if self.hi_closed and self.hi < INF else ")"
        return f"{lb}{_num(self.lo)}, {_num(self.hi)}{rb}"

    @property
    def bounded(self) -> bool:
        return -INF < self.lo and self.hi < INF


UNBOUNDED = Interval(-INF, INF, False, False)


def _num(x: float) -> str:
    if x in (INF, -INF):
        return "inf" if x > 0 else "-inf"
    return f"{x:.6g}"


def _hull(a: Interval, b: Interval) -> Interval:
    lo = min(a.lo, b.lo)
    hi = max(a.hi, b.hi)
    lc = (a.lo_closed if a.lo == lo else False) or (b.lo_closed if b.lo == lo else False)
    hc = (a.hi_closed if a.hi == hi else False) or (b.hi_closed if b.hi == hi else False)
    return Interval(lo, hi, lc, hc)


def _monotone(f, a: Interval, lo_lim=-INF, hi_lim=INF) -> Interval:
    def ev(x, lim_low):
        if x == -INF:
            return lo_lim
        if x == INF:
            return hi_lim
        try:
            return f(x)
        except (OverflowError, ValueError):
            return INF if not lim_low else -INF
    lo, hi = ev(a.lo, True), ev(a.hi, False)
    return Interval(lo, hi, a.lo_closed and a.lo > -INF, a.hi_closed and a.hi < INF)


def _mul(a: Interval, b: Interval) -> Interval:
    cands = []
    for x, xc in ((a.lo, a.lo_closed), (a.hi, a.hi_closed)):
        for y, yc in ((b.lo, b.lo_closed), (b.hi, b.hi_closed)):
            p = 0.0 if (x == 0 or y == 0) else x * y
            cands.append((p, xc and yc))
    lo = min(p for p, _ in cands)
    hi = max(p for p, _ in cands)
    return Interval(lo, hi, any(c for p, c in cands if p == lo), any(c for p, c in cands if p == hi))


def _neg(a: Interval) -> Interval:
    return Interval(-a.hi, -a.lo, a.hi_closed, a.lo_closed)


def _sig(x):
    return 1 / (1 + math.exp(-x)) if x > -700 else 0.0


_UNARY = {
    "exp": lambda a: _monotone(lambda x: math.exp(min(x, 700)), a, 0.0, INF),
    "log": lambda a: _monotone(math.log, a, -INF, INF) if a.lo >= 0 else UNBOUNDED,
    "sqrt": lambda a: _monotone(math.sqrt, a, 0.0, INF) if a.lo >= 0 else UNBOUNDED,
    "sigmoid": lambda a: _monotone(_sig, a, 0.0, 1.0),
    "logsigmoid": lambda a: _monotone(lambda x: math.log(max(_sig(x), 1e-300)), a, -INF, 0.0),
    "softplus": lambda a: _monotone(lambda x: math.log1p(math.exp(min(x, 700))), a, 0.0, INF),
    "tanh": lambda a: _monotone(math.tanh, a, -1.0, 1.0),
    "relu": lambda a: Interval(max(a.lo, 0.0), max(a.hi, 0.0), a.lo_closed or a.lo < 0, a.hi_closed or a.hi <= 0),
    "silu": lambda a: Interval(-0.2785, INF if a.hi == INF else max(a.hi, 0.0) * 1.0, True, False),
    "neg": _neg,
    "abs": lambda a: Interval(0.0 if a.lo <= 0 <= a.hi else min(abs(a.lo), abs(a.hi)), max(abs(a.lo), abs(a.hi))),
}


def value_range(ir: IR, i: int, memo: dict | None = None) -> Interval:
    """Interval of every element of value node i, from the declared constraints."""
    memo = {} if memo is None else memo
    if i in memo:
        return memo[i]
    n, ops = ir.node(i), ir.operands(i)
    r = UNBOUNDED
    if n.op in ("input", "weight"):
        for c in n.args[1]:
            if c[0] == "interval":
                r = Interval(c[1], c[2], c[3], c[4])
            elif c[0] == "log":
                r = Interval(-INF, 0.0, False, True)
            elif c[0] == "positive":
                r = Interval(0.0, INF, False, False)
            elif c[0] == "l2norm":
                r = Interval(-1.0, 1.0)
    elif n.op == "const":
        r = Interval(n.args[0], n.args[0])
    elif n.op == "l2norm":
        r = Interval(-1.0, 1.0)
    elif n.op in _UNARY:
        r = _UNARY[n.op](value_range(ir, ops[0], memo))
    elif n.op in ("add", "sub", "mul", "div", "pow"):
        a, b = (value_range(ir, o, memo) for o in ops)
        if n.op == "add":
            r = Interval(a.lo + b.lo, a.hi + b.hi, a.lo_closed and b.lo_closed, a.hi_closed and b.hi_closed)
        elif n.op == "sub":
            nb = _neg(b)
            r = Interval(a.lo + nb.lo, a.hi + nb.hi, a.lo_closed and nb.lo_closed, a.hi_closed and nb.hi_closed)
        elif n.op == "mul":
            r = _mul(a, b)
        elif n.op == "div" and (b.lo > 0 or b.hi < 0):
            inv = Interval(1 / b.hi if b.hi not in (INF, -INF) else 0.0, 1 / b.lo if b.lo not in (INF, -INF) else 0.0,
                           b.hi_closed, b.lo_closed)
            r = _mul(a, Interval(min(inv.lo, inv.hi), max(inv.lo, inv.hi), inv.lo_closed, inv.hi_closed))
        elif n.op == "pow" and b.lo == b.hi and a.lo >= 0:
            p = b.lo
            r = _monotone(lambda x: x ** p, a, 0.0 if p > 0 else INF, INF if p > 0 else 0.0)
            if p < 0:
                r = Interval(r.hi, r.lo, r.hi_closed, r.lo_closed) if r.lo > r.hi else r
    if math.isnan(r.lo) or math.isnan(r.hi):
        r = UNBOUNDED
    memo[i] = r
    return r


@dataclass(frozen=True)
class Analysis:
    family: str                   # scalar | diagonal | signed_diagonal | householder_product | dplr | block_diagonal |
                                  # kronecker | dense_fixed_point
    detail: str                   # one line: gate kind, n_h, block size, mixer
    eig_range: Interval           # real range bounding every eigenvalue of A_t (its factors' hull for products)
    n_h: int                      # reflections per token (0 when none)
    implications: tuple[str, ...]
    state_size: int
    flops_per_token: int          # per head, sequential recurrence, multiply-adds counted as 2

    def text(self) -> str:
        out = [f"family: {self.family} ({self.detail})",
               f"eigenvalue range of A_t: {self.eig_range}",
               f"state: {self.state_size} numbers per head; ~{self.flops_per_token} flops per token per head"]
        out += [f"  - {s}" for s in self.implications]
        return "\n".join(out)




def _keys_normalised(ir: IR, k: int) -> bool:
    n = ir.node(k)
    return n.op == "l2norm" or (n.op in ("input", "weight") and any(c[0] == "l2norm" for c in n.args[1]))


def linmap_range(ir: IR, i: int, notes: list) -> Interval:
    n, ops = ir.node(i), ir.operands(i)
    if n.op == "identity":
        return Interval(1.0, 1.0)
    if n.op == "diag":
        return value_range(ir, ops[0])
    if n.op == "householder":
        if not _keys_normalised(ir, ops[0]):
            notes.append("keys of householder(...) are not declared l2norm: its eigenvalue 1 - beta ||k||^2 "
                         "is not bounded (declare k l2norm)")
            return UNBOUNDED
        b = value_range(ir, ops[1])
        return _hull(Interval(1.0, 1.0), Interval(1 - b.hi, 1 - b.lo, b.hi_closed, b.lo_closed))
    if n.op == "kron" and n.args[0]:   # spectral norm 1: every eigenvalue in the unit disc
        return Interval(-1.0, 1.0)
    if n.op == "compose":
        parts = [linmap_range(ir, f, notes) for f in ir.factors(i)]
        scalars = [p for f, p in zip(ir.factors(i), parts) if _commutes(ir, f)]
        others = [p for f, p in zip(ir.factors(i), parts) if not _commutes(ir, f)]
        r = others[0] if others else Interval(1.0, 1.0)
        for o in others[1:]:  # non-commuting factors: bound by the hull of products of extremes
            r = _hull(_mul(r, o), r)
        for s in scalars:
            r = _mul(r, s)
        return r
    return UNBOUNDED


def norm_bound(ir, i: int) -> float:
    """An upper bound on the spectral norm of linmap node i from the declared constraints (math.inf where
    none is known). `ir` is an IR or the lowering's Builder (both have node() and operands())."""
    n, ops = ir.node(i), ir.operands(i)
    if n.op == "identity":
        return 1.0
    if n.op == "diag":
        r = value_range(ir, ops[0])
        return max(abs(r.lo), abs(r.hi))
    if n.op == "householder":   # symmetric, eigenvalues 1 and 1 - beta ||k||^2: in [-1, 1] for beta in [0, 2]
        b = value_range(ir, ops[1])
        if _keys_normalised(ir, ops[0]) and b.lo >= 0 and b.hi <= 2:
            return 1.0
        return math.inf
    if n.op == "kron":
        return 1.0 if n.args[0] else math.inf
    if n.op == "compose":
        return norm_bound(ir, ops[0]) * norm_bound(ir, ops[1])
    if n.op == "lsum":
        return norm_bound(ir, ops[0]) + norm_bound(ir, ops[1])
    return math.inf


def _commutes(ir: IR, f: int) -> bool:
    """A scalar gate commutes with everything, so its range multiplies the rest exactly."""
    n = ir.node(f)
    return n.op == "identity" or (n.op == "diag" and ir.node(ir.operands(f)[0]).shape == ())


def analyse(ir: IR) -> Analysis:
    trans = ir.root("transition")
    S = ir.state[1]
    ops = {ir.node(i).op for i in nx.ancestors(ir.graph, trans) | {trans}}
    uses_prev = any(ir.node(i).op == "prev" for i in ir.graph.nodes)
    notes: list[str] = []
    n_h = 0
    for i in nx.ancestors(ir.graph, trans) | {trans}:
        if ir.node(i).op == "householder":
            sk = ir.node(ir.operands(i)[0]).shape
            n_h += sk[0] if len(sk) == 2 else 1
    if uses_prev:
        family = "dense_fixed_point"
        mixers = sorted({ir.node(i).op for i in ir.graph.nodes if ir.node(i).op == "mix"}
                        | {ir.node(j).op for i in ir.graph.nodes if ir.node(i).op == "mix"
                           for j in nx.ancestors(ir.graph, ir.operands(i)[0]) | {ir.operands(i)[0]}
                           if ir.node(j).kind == "linmap"})
        detail = "fixed point of a diagonal scan with a per-token mixer: " + ", ".join(m for m in mixers if m != "mix")
    elif "lsum" in ops or ("rank1" in ops and "householder" not in ops):
        family, detail = "dplr", "diagonal plus low rank"
    elif "kron" in ops:
        family, detail = "kronecker", "Kronecker-structured factors kron(A, B)"
    elif "blockdiag" in ops:
        bs = ir.node(ir.operands(next(i for i in nx.ancestors(ir.graph, trans) | {trans}
                                       if ir.node(i).op == "blockdiag"))[0]).shape
        family, detail = "block_diagonal", f"{bs[0]} blocks of {bs[1]}x{bs[2]}"
    elif "householder" in ops:
        family = "householder_product"
        gates = [ir.node(ir.operands(f)[0]).shape for f in ir.factors(trans) if ir.node(f).op == "diag"]
        gate = "no gate" if not gates else "scalar gate" if all(g == () for g in gates) else "per-key gate"
        detail = f"n_h = {n_h} reflection{'s' if n_h > 1 else ''} per token, {gate}"
    else:
        gates = [ir.node(ir.operands(f)[0]).shape for f in ir.factors(trans) if ir.node(f).op == "diag"]
        if all(g == () for g in gates):
            family, detail = "scalar", "alpha_t * I" if gates else "identity (no decay)"
        else:
            kinds = {("element-wise" if g == S else "per-key" if len(g) == 1 and len(S) > 1 else
                      "per-channel") for g in gates if g != ()}
            family, detail = "diagonal", ", ".join(sorted(kinds))
    rng = UNBOUNDED if uses_prev else linmap_range(ir, trans, notes)
    if family == "diagonal" and rng.lo < 0:
        family = "signed_diagonal"
    if family == "scalar" and rng.lo < 0:
        family, detail = "signed_diagonal", detail + ", signed"
    imp = list(notes) + _implications(family, rng, n_h, S, uses_prev)
    size = int(math.prod(S))
    per_factor = {"householder": 4 * size, "diag": size, "rank1": 4 * size, "blockdiag": 2 * size * (S[1] if len(S) > 1 else 1)}
    flops = sum(per_factor.get(ir.node(i).op, 0) * (max(1, n_h) if ir.node(i).op == "householder" else 1)
                for i in nx.ancestors(ir.graph, trans) | {trans}) + 4 * size
    return Analysis(family, detail, rng, n_h, tuple(imp), size, flops)


def _implications(family: str, r: Interval, n_h: int, S: tuple, uses_prev: bool) -> list[str]:
    out = []
    if uses_prev:
        out.append("dense A_t = (I + (Lambda_t^-1 - I) Q_t)^-1: a single layer is not limited to commuting "
                   "transitions; the iteration converges when ||I - Q_t|| < 1 and ||Lambda_t|| < 1 "
                   "(Movahedi et al. 2025, Thm 3.1)")
        return out
    if not r.bounded:
        out.append("the declared constraints do not bound the eigenvalues: the state may grow without bound "
                   "unless the layer keeps A_t contractive")
    elif r.hi > 1 or r.lo < -1:
        out.append("eigenvalues can exceed 1 in modulus: the state can grow exponentially")
    if r.bounded and r.lo >= 0:
        out.append("all eigenvalues in [0, 1]: cannot solve parity (or count modulo m) at arbitrary lengths in "
                   "finite precision (Grazzi et al. 2025, Thm 1)")
    elif r.lo < 0:
        out.append("negative eigenvalues are reachable: parity and modular counting become representable "
                   "(Grazzi et al. 2025)")
    if family in ("scalar", "diagonal", "signed_diagonal"):
        out.append("diagonal transitions commute: one layer tracks only abelian structure, never a non-abelian "
                   "group word problem such as S3 or A5 (Merrill et al. 2024)")
    if family == "householder_product" and n_h:
        if r.lo < 0:
            out.append(f"{n_h} reflection{'s' if n_h > 1 else ''} per token: one layer can represent every "
                       f"permutation of {n_h + 1} elements (S_{n_h + 1}) as a product of {n_h} transpositions, "
                       f"as beta approaches 2 (Siems et al. 2025)")
            if n_h >= 2 and S[0] >= 3:
                out.append("two reflections make a rotation: with K >= 3, S4 and A5 through their 3D rotation "
                           "groups (Siems et al. 2025)")
        else:
            out.append("beta in (0, 1]: reflections never flip a sign, so no permutation beyond the identity is "
                       "reached exactly; use beta in (0, 2)")
    if family == "dplr":
        out.append("diagonal plus low rank: generalised delta rule (non-commuting, like a Householder "
                   "product when the rank-one part is -beta k k^T)")
    return out
