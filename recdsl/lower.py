"""AST -> IR: bind parameters, resolve names, infer and check shapes, fold constants.

Shapes are per token and per head, and concrete: parameters are bound before lowering.
Element-wise broadcasting is left-aligned: a shape broadcasts against any shape it is a prefix of
(a per-key gate g[K] against a state S[K, V]; a scalar against anything).
"""
from __future__ import annotations

import difflib
import math
import operator

import networkx as nx

from .ast import BinOp, Call, Decl, Expr, Name, Neg, Num, Pos, Recurrence, Stmt
from .errors import RecSemanticError
from .ir import ELEMENTWISE_UNARY, IR, Builder

MAX_DIM = 1 << 16
VALUE_FUNCS = ELEMENTWISE_UNARY | {"l2norm", "outer", "mix", "prev"}
LAYER_FUNCS = {"linear", "mlp", "rmsnorm", "layernorm", "colnorm", "shortconv"}
INIT_FUNCS = {"uniform", "normal"}
LINMAP_FUNCS = {"diag", "householder", "outer", "blockdiag", "kron"}
# fixed-point settings (recdsl/solve.py): damping is the first step size, quantile the fraction of the
# batch that must converge in a call that records a backward (every sequence otherwise), backward_steps
# the differentiable iterations at the fixed point (1: the paper's one-step gradient; k: k Neumann terms)
SOLVE_DEFAULTS = {"tol": 1e-6, "max_iter": 1000.0, "damping": 1.0, "quantile": 1.0, "backward_steps": 1.0}
_BINOPS = {"+": "add", "-": "sub", "*": "mul", "/": "div", "^": "pow", "@": "matmul"}
_FOLD = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv,
         "pow": operator.pow, "neg": operator.neg, "exp": math.exp, "log": math.log, "sqrt": math.sqrt,
         "abs": abs, "tanh": math.tanh}


class _Lowerer:
    def __init__(self, rec: Recurrence, overrides: dict, source: str, filename: str):
        self.rec, self.source, self.filename = rec, source, filename
        self.b = Builder()
        self.roots: list[tuple[str, int]] = []
        self.out_shapes: dict[str, tuple] = {}
        self.prev_used = False
        self.consts: dict[str, float] = {}
        self.env: dict[str, int] = {}           # name -> value node, core domain
        self.heads: int | None = None
        self.state_name, self.state_shape = "", ()
        self._bind_params(overrides)

    # ---- errors -------------------------------------------------------------------------
    def err(self, pos: Pos | None, message: str, hint: str = "") -> RecSemanticError:
        p = pos or Pos(1, 1)
        return RecSemanticError(message, source=self.source, filename=self.filename,
                                line=p.line, column=p.column, hint=hint)

    def _unknown(self, name: str, pos: Pos, known) -> RecSemanticError:
        close = difflib.get_close_matches(name, list(known), n=3)
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else \
            "names are parameters, inputs, weights, options, `let` values and the state"
        return self.err(pos, f"unknown name {name!r}", hint)

    # ---- parameters and constants ---------------------------------------------------------
    def _bind_params(self, overrides: dict):
        declared = {p.name for p in self.rec.params}
        for name in overrides:
            if name not in declared:
                raise self.err(self.rec.pos, f"unknown parameter {name!r} passed to compile",
                               f"this spec's parameters are {sorted(declared) or 'none'}")
        for p in self.rec.params:
            if p.name in self.consts:
                raise self.err(p.pos, f"parameter {p.name!r} declared twice")
            if p.name in overrides:
                v = overrides[p.name]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise self.err(p.pos, f"parameter {p.name!r} must be a finite number, got {v!r}")
                self.consts[p.name] = float(v)
            else:
                self.consts[p.name] = self.const(p.value)

    def const(self, e: Expr) -> float:
        """Evaluate a compile-time constant expression (numbers and parameters only)."""
        if isinstance(e, Num):
            return e.value
        if isinstance(e, Name):
            if e.id in self.consts:
                return self.consts[e.id]
            raise self.err(e.pos, f"{e.id!r} is not a compile-time constant",
                           "shapes, heads and intervals may use numbers and parameters only")
        if isinstance(e, Neg):
            return -self.const(e.operand)
        if isinstance(e, BinOp) and e.op != "@":
            return self._fold(_BINOPS[e.op], (self.const(e.left), self.const(e.right)), e.pos)
        if isinstance(e, Call) and e.fn in _FOLD and len(e.args) == 1 and not e.kwargs:
            return self._fold(e.fn, (self.const(e.args[0]),), e.pos)
        raise self.err(e.pos, "expected a constant expression",
                       "shapes, heads and intervals may use numbers and parameters only")

    def _fold(self, op: str, vals: tuple, pos: Pos) -> float:
        try:
            v = float(_FOLD[op](*vals))
        except (ZeroDivisionError, ValueError, OverflowError):
            raise self.err(pos, f"constant {op} of {', '.join(map(str, vals))} is undefined") from None
        if not math.isfinite(v) or isinstance(v, complex):
            raise self.err(pos, f"constant {op} of {', '.join(map(str, vals))} is not finite")
        return v

    def dim(self, e: Expr) -> int:
        v = self.const(e)
        if not float(v).is_integer() or not 1 <= v <= MAX_DIM:
            raise self.err(e.pos, f"a dimension must be an integer in [1, {MAX_DIM}], got {v:g}")
        return int(v)

    # ---- broadcasting ------------------------------------------------------------------------
    def broadcast(self, a: tuple, b: tuple, pos: Pos, what: str) -> tuple:
        if a[:len(b)] == b:
            return a
        if b[:len(a)] == a:
            return b
        raise self.err(pos, f"shapes {list(a)} and {list(b)} do not match in {what}",
                       "recdsl broadcasts left-aligned: a shape combines with any shape it is a prefix of")

    # ---- value expressions -------------------------------------------------------------------
    def value(self, e: Expr, domain: str = "core", target: tuple | None = None) -> int:
        """Lower an expression whose result is a tensor. `domain` is core, layer or init."""
        if isinstance(e, Num):
            return self.b.add("const", args=(e.value,), pos=e.pos)
        if isinstance(e, Name):
            return self.name(e, domain)
        if isinstance(e, Neg):
            x = self.value(e.operand, domain, target)
            return self._unary("neg", x, e.pos)
        if isinstance(e, BinOp):
            op = _BINOPS[e.op]
            x, y = self.value(e.left, domain, target), self.value(e.right, domain, target)
            if op == "matmul":
                return self._matmul(x, y, e.pos)
            sx, sy = self.b.node(x).shape, self.b.node(y).shape
            if op == "pow" and sy != ():
                raise self.err(e.pos, "the exponent of `^` must be a scalar")
            shape = self.broadcast(sx, sy, e.pos, f"`{e.op}`")
            if self.b.node(x).op == "const" and self.b.node(y).op == "const":
                v = self._fold(op, (self.b.node(x).args[0], self.b.node(y).args[0]), e.pos)
                return self.b.add("const", args=(v,), pos=e.pos)
            return self.b.add(op, (x, y), shape=shape, pos=e.pos)
        if isinstance(e, Call):
            return self.call(e, domain, target)
        raise self.err(getattr(e, "pos", None), "unsupported expression")

    def _unary(self, op: str, x: int, pos: Pos) -> int:
        n = self.b.node(x)
        if n.op == "const" and op in _FOLD:
            return self.b.add("const", args=(self._fold(op, (n.args[0],), pos),), pos=pos)
        return self.b.add(op, (x,), shape=n.shape, pos=pos)

    def _matmul(self, x: int, y: int, pos: Pos) -> int:
        sx, sy = self.b.node(x).shape, self.b.node(y).shape
        if not (1 <= len(sx) <= 3 and 1 <= len(sy) <= 2):
            raise self.err(pos, f"`@` takes a tensor of rank 1 to 3 on the left and a vector or matrix on the right, "
                                f"got shapes {list(sx)} and {list(sy)}",
                           "W[r, D, D] @ h[D] maps one vector to r of them")
        if sx[-1] != sy[0]:
            raise self.err(pos, f"`@` contracts the last axis of {list(sx)} with the first of {list(sy)}: "
                                f"{sx[-1]} != {sy[0]}")
        return self.b.add("matmul", (x, y), shape=sx[:-1] + sy[1:], pos=pos)

    def name(self, e: Name, domain: str) -> int:
        if e.id in self.consts:
            return self.b.add("const", args=(self.consts[e.id],), pos=e.pos)
        table = self.layer_env if domain == "layer" else self.init_env if domain == "init" else self.env
        if e.id in table:
            return table[e.id]
        if domain == "core" and e.id == self.state_name:
            return self.b.add("state", args=(e.id,), shape=self.state_shape, pos=e.pos)
        raise self._unknown(e.id, e.pos, list(table) + list(self.consts))

    def call(self, e: Call, domain: str, target: tuple | None) -> int:
        fn, args, kw = e.fn, e.args, dict(e.kwargs)
        allowed = VALUE_FUNCS | (LAYER_FUNCS if domain == "layer" else set()) | \
            (INIT_FUNCS if domain == "init" else set()) | ({"delta"} if domain == "write" else set())
        if fn not in allowed:
            where = {"core": "a value expression", "write": "a write", "layer": "the layer", "init": "a weight initialiser"}
            hint = "transition factors (diag, householder, blockdiag, kron) belong in `transition`" \
                if fn in LINMAP_FUNCS else f"functions here: {', '.join(sorted(allowed))}"
            raise self.err(e.pos, f"unknown function {fn!r} in {where.get(domain, domain)}", hint)
        sub = "core" if domain == "write" else domain
        if fn in ELEMENTWISE_UNARY or fn in ("l2norm", "rmsnorm", "layernorm"):
            self._arity(e, 1, kw, ())
            x = self.value(args[0], sub, target)
            if fn == "l2norm" or fn in ("rmsnorm", "layernorm"):
                if not self.b.node(x).shape:
                    raise self.err(e.pos, f"{fn} needs a vector (it normalises the last axis)")
                return self.b.add(fn, (x,), shape=self.b.node(x).shape, pos=e.pos)
            return self._unary(fn, x, e.pos)
        if fn == "outer":
            self._arity(e, 2, kw, ())
            a, b = (self.value(x, sub) for x in args)
            sa, sb = self.b.node(a).shape, self.b.node(b).shape
            if len(sa) != 1 or len(sb) != 1:
                raise self.err(e.pos, f"outer takes two vectors, got shapes {list(sa)} and {list(sb)}")
            return self.b.add("outer", (a, b), shape=sa + sb, pos=e.pos)
        if fn == "prev":
            if domain not in ("core", "write") or len(args) != 1 or not isinstance(args[0], Name) or \
                    set(kw) - {"shift"}:
                raise self.err(e.pos, "prev takes one name: the state or the output, e.g. prev(h) "
                                      "(or prev(h, shift = 1): the previous token's)")
            name = args[0].id
            shapes = {self.state_name: self.state_shape, **self.out_shapes}
            if name not in shapes:
                raise self.err(args[0].pos, f"prev({name}) needs the state or the output",
                               f"this recurrence iterates one of {sorted(shapes)}")
            self.prev_used = True
            if "shift" in kw:   # x^(l-1)_(t-1): the previous iterate one token back (at t = 0 the initial
                # state for a vector state, zeros for an output, which has no initial value)
                c = self.b.node(self.value(kw["shift"], sub))
                if c.op != "const" or c.args[0] not in (0, 1):
                    raise self.err(e.pos, "prev(..., shift = ...) takes 0 or 1")
                if c.args[0] == 1:
                    if name == self.state_name and len(self.state_shape) != 1:
                        raise self.err(e.pos, "prev(..., shift = 1) reads the previous token's iterate of a "
                                              "vector state or of the output",
                                       f"for the matrix state {name}, shift its readout: "
                                       f"prev({next(iter(self.out_shapes), 'y')}, shift = 1)")
                    return self.b.add("prev", args=(name, 1), shape=shapes[name], pos=e.pos)
            return self.b.add("prev", args=(name,), shape=shapes[name], pos=e.pos)
        if fn == "mix":
            self._arity(e, 2, kw, ("contractive",))
            x = self.value(args[1], sub)
            sx = self.b.node(x).shape
            m = self.linmap(args[0], sx)
            if "contractive" not in kw:
                return self.b.add("mix", (m, x), shape=sx, pos=e.pos)
            # mix(Q, x, contractive = g) applies Q' = I - s (I - Q) with s = g / (1 + a bound on ||Q||), so that
            # ||I - Q'|| <= g < 1: the depth iteration of a fixed point contracts (Movahedi et al. 2025, Thm 3.1)
            c = self.b.node(self.value(kw["contractive"], sub))
            if c.op != "const" or not 0 < c.args[0] < 1:
                raise self.err(e.pos, "mix(..., contractive = g) takes a constant g in (0, 1)")
            from .analysis import norm_bound
            bound = norm_bound(self.b, m)
            if not math.isfinite(bound):
                raise self.err(e.pos, "mix(..., contractive = g) needs a mixer whose norm the constraints bound",
                               "declare keys l2norm and beta in [0, 2], gates in intervals, "
                               "or kron(..., normalized = 1)")
            return self.b.add("mix", (m, x), args=(c.args[0] / (1.0 + bound),), shape=sx, pos=e.pos)
        if fn == "delta":
            self._arity(e, 3, kw, ())
            k, v, beta = (self.value(x, "core") for x in args)
            sk, sv, sb = (self.b.node(i).shape for i in (k, v, beta))
            if len(sk) not in (1, 2) or sv[:-1] != sk[:-1] or sb != sk[:-1]:
                raise self.err(e.pos, f"delta(k, v, beta) needs k [n, K], v [n, V], beta [n] (or no n): "
                                      f"got {list(sk)}, {list(sv)}, {list(sb)}")
            return self.b.add("delta", (k, v, beta), shape=(sk[-1], sv[-1]), pos=e.pos)
        if fn in ("linear", "mlp"):
            key = "rank" if fn == "linear" else "width"
            self._arity(e, 1, kw, (key,))
            if target is None:
                raise self.err(e.pos, f"{fn} needs a target shape", "assign it to a name declared with a shape")
            x = self.value(args[0], "layer")
            width = self.dim(kw[key]) if key in kw else 0
            if fn == "mlp" and not width:
                raise self.err(e.pos, "mlp needs width = N")
            # each projection owns its weights: a unique label keeps equal-looking ones apart
            self.n_proj += 1
            label = f"{self.stmt_name}_{self.n_proj}"
            return self.b.add(fn, (x,), args=(label, width), shape=target, pos=e.pos)
        if fn == "colnorm":
            self._arity(e, 1, kw, ("p",))
            x = self.value(args[0], "layer", target)
            p = self.const(kw["p"]) if "p" in kw else 1.0
            if len(self.b.node(x).shape) < 2 or p < 1:
                raise self.err(e.pos, "colnorm needs blocks [..., b, b] and p >= 1")
            return self.b.add("colnorm", (x,), args=(p,), shape=self.b.node(x).shape, pos=e.pos)
        if fn == "shortconv":
            self._arity(e, 1, kw, ("size",))
            x = self.value(args[0], "layer", target)
            size = self.const(kw["size"]) if "size" in kw else 4
            if not self.b.node(x).shape:
                raise self.err(e.pos, "shortconv needs a per-token vector (it mixes each channel over tokens)")
            if not float(size).is_integer() or not 2 <= size <= 64:
                raise self.err(e.pos, f"shortconv(e, size = k) takes an integer k in [2, 64], got {size:g}")
            self.n_proj += 1       # its own weights, labelled like a projection's
            label = f"{self.stmt_name}_{self.n_proj}"
            return self.b.add("shortconv", (x,), args=(label, int(size)), shape=self.b.node(x).shape, pos=e.pos)
        if fn in INIT_FUNCS:
            names = ("lo", "hi") if fn == "uniform" else ("std",)
            if len(args) != len(names) or kw:
                raise self.err(e.pos, f"{fn} takes ({', '.join(names)})")
            return self.b.add(fn, tuple(self.value(a, "init") for a in args), shape=(), pos=e.pos)
        raise self.err(e.pos, f"unknown function {fn!r}")

    def _arity(self, e: Call, n: int, kw: dict, allowed_kw: tuple):
        if len(e.args) != n:
            raise self.err(e.pos, f"{e.fn} takes {n} argument{'s' if n > 1 else ''}, got {len(e.args)}")
        for k in kw:
            if k not in allowed_kw:
                raise self.err(e.pos, f"{e.fn} has no argument {k!r}",
                               f"its keyword arguments are {list(allowed_kw) or 'none'}")

    # ---- transition (linear maps on the state) -------------------------------------------------
    def linmap(self, e: Expr, S: tuple | None = None) -> int:
        """Lower a product (`*`, rightmost applied first) or sum of factors acting on shape S."""
        S = self.state_shape if S is None else S
        if not S:
            raise self.err(e.pos, "a linear map needs a vector or a matrix to act on")
        if isinstance(e, Name) and e.id == "I":
            return self.b.add("identity", shape=S, pos=e.pos)
        if isinstance(e, BinOp) and e.op in "*+":
            x, y = self.linmap(e.left, S), self.linmap(e.right, S)
            return self.b.add("compose" if e.op == "*" else "lsum", (x, y), shape=S, pos=e.pos)
        if isinstance(e, BinOp) and e.op == "-":     # A - B as A + diag(-1) B
            x, y = self.linmap(e.left, S), self.linmap(e.right, S)
            minus = self.b.add("diag", (self.b.add("const", args=(-1.0,), pos=e.pos),), shape=S, pos=e.pos)
            return self.b.add("lsum", (x, self.b.add("compose", (minus, y), shape=S, pos=e.pos)), shape=S, pos=e.pos)
        if isinstance(e, Call) and e.fn in LINMAP_FUNCS:
            return self._linmap_call(e, S)
        # any other value expression is a gate: a scalar or a per-channel vector, i.e. diag(e)
        x = self.value(e)
        return self._diag(x, e.pos, S)

    def _diag(self, x: int, pos: Pos, S: tuple) -> int:
        sx = self.b.node(x).shape
        if S[:len(sx)] != sx:
            raise self.err(pos, f"a gate of shape {list(sx)} cannot scale a state of shape {list(S)}",
                           "a diagonal gate's shape must be a prefix of the state's shape")
        return self.b.add("diag", (x,), shape=S, pos=pos)

    def _linmap_call(self, e: Call, S: tuple) -> int:
        fn, kw = e.fn, dict(e.kwargs)
        if fn == "diag":
            self._arity(e, 1, kw, ())
            return self._diag(self.value(e.args[0]), e.pos, S)
        if fn == "householder":
            self._arity(e, 2, kw, ())
            k, beta = (self.value(a) for a in e.args)
            sk, sb = self.b.node(k).shape, self.b.node(beta).shape
            if len(sk) not in (1, 2) or sk[-1] != S[0] or sb != sk[:-1]:
                raise self.err(e.pos, f"householder(k, beta) needs k [n, {S[0]}] and beta [n] (or k [{S[0]}] "
                                      f"and a scalar beta), got {list(sk)} and {list(sb)}",
                               "k lives on the state's first axis")
            return self.b.add("householder", (k, beta), shape=S, pos=e.pos)
        if fn == "outer":
            self._arity(e, 2, kw, ())
            a, b = (self.value(x) for x in e.args)
            if self.b.node(a).shape != S[:1] or self.b.node(b).shape != S[:1]:
                raise self.err(e.pos, f"a rank-one factor outer(a, b) needs a and b of shape [{S[0]}]")
            return self.b.add("rank1", (a, b), shape=S, pos=e.pos)
        if fn == "blockdiag":
            self._arity(e, 1, kw, ())
            m = self.value(e.args[0])
            sm = self.b.node(m).shape
            if len(sm) != 3 or sm[1] != sm[2] or S[:2] != sm[:2]:
                raise self.err(e.pos, f"blockdiag(M) needs M [n, b, b] matching a state [n, b, ...], "
                                      f"got {list(sm)} for state {list(S)}")
            return self.b.add("blockdiag", (m,), shape=S, pos=e.pos)
        if fn == "kron":
            self._arity(e, 2, kw, ("normalized",))
            a, b = (self.value(x) for x in e.args)
            sa, sb = self.b.node(a).shape, self.b.node(b).shape
            if len(sa) != 2 or sa[0] != sa[1] or len(sb) != 2 or sb[0] != sb[1] or sa[0] * sb[0] != S[0]:
                raise self.err(e.pos, f"kron(A, B) needs square A [n1, n1] and B [n2, n2] with n1 * n2 = {S[0]} "
                                      f"(the state's first axis), got {list(sa)} and {list(sb)}")
            flag = False
            if "normalized" in kw:
                c = self.b.node(self.value(kw["normalized"]))
                if c.op != "const":
                    raise self.err(e.pos, "kron(..., normalized = ...) takes a constant (0 or 1)")
                flag = bool(c.args[0])
            return self.b.add("kron", (a, b), args=(flag,), shape=S, pos=e.pos)
        raise self.err(e.pos, f"unknown transition factor {fn!r}")

    # ---- statements ------------------------------------------------------------------------------
    def run(self) -> IR:
        rec = self.rec
        by_kind: dict[str, list[Stmt]] = {}
        for s in rec.stmts:
            by_kind.setdefault(s.kind, []).append(s)
        for kind in ("heads", "state", "transition", "write"):
            if len(by_kind.get(kind, [])) > 1:
                raise self.err(by_kind[kind][1].pos, f"`{kind}` declared twice")
        for kind in ("state", "transition", "write", "output"):
            if not by_kind.get(kind):
                raise self.err(rec.pos, f"recurrence {rec.name!r} has no `{kind}` statement",
                               "a recurrence needs state, transition, write and output")
        if by_kind.get("heads"):
            self.heads = self.dim(by_kind["heads"][0].expr)
        st = by_kind["state"][0]
        self.state_name, self.state_shape = st.name, tuple(self.dim(d) for d in st.shape)
        if not 1 <= len(self.state_shape) <= 3:
            raise self.err(st.pos, "a state has 1 to 3 axes")
        self.layer_env, self.init_env = {}, {}
        self._decls()
        for s in rec.stmts:
            if s.kind == "option":
                self._fresh(s.name, s.pos)
                self.consts_check(s)
                self.env[s.name] = self.b.add("option", args=(s.name, self.const(s.expr)), pos=s.pos)
        outs = by_kind["output"]
        if len(outs) > 1:
            raise self.err(outs[1].pos, "only one `output` per recurrence")
        o = outs[0]
        if o.shape:   # `output y[D] = ...`: prev(y) takes the declared shape, so the output may read `let` values
            self.out_shapes = {o.name: tuple(self.dim(d) for d in o.shape)}
        else:   # the output reads the state only; lowering it first gives prev(output) its shape
            lets = {s.name for s in rec.stmts if s.kind == "let"}
            declare = f"declare the output's shape to read them: output {o.name}[...] = ..."
            for n in _names(o.expr):
                if n.id in lets:
                    raise self.err(n.pos, f"the output reads the `let` value {n.id!r}", declare)
            out = self.value(o.expr)
            if any(self.b.node(i).op == "prev" for i in nx.ancestors(self.b.graph, out)):
                raise self.err(o.pos, "the output cannot read prev(...)", f"use prev in `let` or `write`, or {declare}")
            self.out_shapes = {o.name: self.b.node(out).shape}
        for s in rec.stmts:
            if s.kind == "let":
                self._fresh(s.name, s.pos)
                self.env[s.name] = self.value(s.expr)
        if o.shape:
            out = self.value(o.expr)
            if self.b.node(out).shape != self.out_shapes[o.name]:
                raise self.err(o.expr.pos, f"the output has shape {list(self.b.node(out).shape)}, declared "
                                           f"{list(self.out_shapes[o.name])}")
        trans = self.linmap(by_kind["transition"][0].expr)
        w = by_kind["write"][0]
        write = self.value(w.expr, "write")
        if self.b.node(write).shape != self.state_shape:
            raise self.err(w.expr.pos, f"the write has shape {list(self.b.node(write).shape)}, the state "
                                  f"{list(self.state_shape)}")
        self.roots += [("transition", trans), ("write", write), (f"output:{outs[0].name}", out)]
        solve = self._solve(by_kind.get("solve", []))
        self._layer(outs[0].name, self.b.node(out).shape)
        graph = nx.freeze(self.b.graph)
        return IR(rec.name, graph, tuple(self.roots), tuple(sorted(self.consts.items())), self.heads,
                  (self.state_name, self.state_shape), solve, self.filename, self.source)

    def _solve(self, stmts: list[Stmt]) -> tuple:
        if stmts and not self.prev_used:
            raise self.err(stmts[0].pos, "`solve` without prev(...): nothing to iterate")
        if not self.prev_used:
            return ()
        got = dict(SOLVE_DEFAULTS)
        for s in stmts:
            if s.name not in SOLVE_DEFAULTS:
                raise self.err(s.pos, f"unknown solve setting {s.name!r}", f"settings: {sorted(SOLVE_DEFAULTS)}")
            got[s.name] = self.const(s.expr)
        if not 0 < got["tol"] < 1:
            raise self.err(stmts[0].pos, "solve tol must lie in (0, 1)")
        if not float(got["max_iter"]).is_integer() or not 1 <= got["max_iter"] <= 100000:
            raise self.err(stmts[0].pos, "solve max_iter must be an integer in [1, 100000]")
        for key in ("damping", "quantile"):
            if not 0 < got[key] <= 1:
                raise self.err(stmts[0].pos, f"solve {key} must lie in (0, 1]")
        if not float(got["backward_steps"]).is_integer() or not 1 <= got["backward_steps"] <= 1000:
            raise self.err(stmts[0].pos, "solve backward_steps must be an integer in [1, 1000]")
        return tuple(sorted(got.items()))

    def consts_check(self, s: Stmt):
        self.const(s.expr)

    def _fresh(self, name: str, pos: Pos):
        if name in self.env or name in self.consts or name == self.state_name:
            raise self.err(pos, f"name {name!r} is already defined")

    def _decls(self):
        for d in self.rec.decls:
            self._fresh(d.name, d.pos)
            shape = tuple(self.dim(x) for x in d.shape)
            cons = []
            for c in d.constraints:
                if c.kind == "interval":
                    lo, hi = self.const(c.lo), self.const(c.hi)
                    if not lo < hi:
                        raise self.err(c.pos, f"empty interval: {lo:g} is not below {hi:g}")
                    cons.append(("interval", lo, hi, c.lo_closed, c.hi_closed))
                else:
                    cons.append((c.kind,))
                if c.kind == "l2norm" and not shape:
                    raise self.err(c.pos, "l2norm needs a vector", "declare a shape, e.g. k[K] l2norm")
            if len({c[0] for c in cons}) != len(cons):
                raise self.err(d.pos, f"{d.name!r} repeats a constraint")
            if d.kind == "input":
                default = None
                if d.default is not None:
                    default = self.const(d.default)
                node = self.b.add("input", args=(d.name, tuple(cons), default), shape=shape, pos=d.pos)
            else:
                node = self.b.add("weight", args=(d.name, tuple(cons)), shape=shape, pos=d.pos)
                if d.default is not None:
                    self.roots.append((f"init:{d.name}", self._init(d, shape)))
            self.env[d.name] = node

    def _init(self, d: Decl, shape: tuple) -> int:
        """A weight's initialiser: an expression over `head`, `channel` and random draws."""
        self.init_env = {
            "head": self.b.add("index", args=("head",), pos=d.pos),
            "channel": self.b.add("index", args=("channel",), pos=d.pos),
        }
        x = self.value(d.default, "init")
        if self.b.node(x).shape not in ((), shape):
            raise self.err(d.default.pos, f"initialiser shape {list(self.b.node(x).shape)} does not fit {list(shape)}")
        return x

    # ---- the layer around the core ---------------------------------------------------------------
    def _layer(self, out_name: str, out_shape: tuple):
        if not self.rec.layer:
            return
        H = self.heads
        per_head = (lambda s: (H,) + s) if H else (lambda s: s)
        if "d_model" not in self.consts:
            raise self.err(self.rec.layer[0].pos, "a layer needs the parameter d_model",
                           "add d_model = ... to the recurrence's parameters")
        d_model = int(self.consts["d_model"])
        inputs = {n.args[0]: (i, n) for i, n in ((i, self.b.node(i)) for i in self.b.graph.nodes)
                  if n.op == "input"}
        self.layer_env = {"hidden": self.b.add("hidden", shape=(d_model,))}
        core_called = False
        assigned = set()
        for s in self.rec.layer:
            uses_out = _mentions(s.expr, out_name)
            if uses_out and not core_called:
                missing = [n for n, (_, node) in inputs.items() if n not in assigned and node.args[2] is None]
                if missing:
                    raise self.err(s.pos, f"the core output {out_name!r} is used before inputs "
                                          f"{missing} are assigned")
                self.layer_env[out_name] = self.b.add("core_output", args=(out_name,), shape=per_head(out_shape))
                core_called = True
            if s.name in inputs:
                target = per_head(inputs[s.name][1].shape)
                if s.shape and tuple(self.dim(x) for x in s.shape) != target:
                    raise self.err(s.pos, f"input {s.name!r} has shape {list(target)} in the layer")
            elif s.name == "out":
                target = (d_model,)
            elif s.shape:
                target = tuple(self.dim(x) for x in s.shape)
            elif s.name in self.layer_env:
                target = self.b.node(self.layer_env[s.name]).shape
            else:
                raise self.err(s.pos, f"layer value {s.name!r} needs a shape, e.g. {s.name}[H, V] = ...",
                               "core inputs and `out` take their shapes from the spec")
            if s.name in self.env and s.name not in inputs:
                raise self.err(s.pos, f"{s.name!r} is a weight or option of the core; the layer cannot assign it")
            self.stmt_name, self.n_proj = s.name, 0
            x = self.value(s.expr, "layer", target)
            shape = self.b.node(x).shape
            if shape != target:
                if shape == ():
                    raise self.err(s.pos, f"{s.name!r} must have shape {list(target)}, the expression is a scalar")
                raise self.err(s.pos, f"{s.name!r} must have shape {list(target)}, the expression has {list(shape)}")
            self.layer_env[s.name] = x
            assigned.add(s.name)
            self.roots.append((f"layer:{s.name}", x))
        if "out" not in assigned:
            raise self.err(self.rec.layer[-1].pos, "the layer never assigns `out`",
                           "end with out = linear(...) back to d_model")
        if not core_called:
            raise self.err(self.rec.layer[-1].pos, f"the layer never uses the core output {out_name!r}")


def _mentions(e: Expr, name: str) -> bool:
    return any(n.id == name for n in _names(e))


def _names(e: Expr):
    """The Name nodes of an expression, left to right."""
    if isinstance(e, Name):
        yield e
    elif isinstance(e, Neg):
        yield from _names(e.operand)
    elif isinstance(e, BinOp):
        yield from _names(e.left)
        yield from _names(e.right)
    elif isinstance(e, Call):
        for a in (*e.args, *(v for _, v in e.kwargs)):
            yield from _names(a)


def lower(rec: Recurrence, params: dict | None = None, source: str = "", filename: str = "<spec>") -> IR:
    """Lower an AST to IR with the given parameter overrides."""
    return _Lowerer(rec, dict(params or {}), source, filename).run()
