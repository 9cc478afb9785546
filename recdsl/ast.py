"""AST of a `.rec` file: frozen dataclasses, each carrying the position it came from."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Pos:
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.line}:{self.column}"


NOPOS = Pos(0, 0)


@dataclass(frozen=True)
class Expr:
    pos: Pos = field(compare=False)


@dataclass(frozen=True)
class Num(Expr):
    value: float


@dataclass(frozen=True)
class Name(Expr):
    id: str


@dataclass(frozen=True)
class Call(Expr):
    fn: str
    args: tuple[Expr, ...]
    kwargs: tuple[tuple[str, Expr], ...] = ()


@dataclass(frozen=True)
class BinOp(Expr):
    op: str  # one of + - * / @ ^
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Neg(Expr):
    operand: Expr


@dataclass(frozen=True)
class Constraint:
    pos: Pos = field(compare=False)
    kind: str  # l2norm | log | positive | interval
    lo: Expr | None = None
    hi: Expr | None = None
    lo_closed: bool = False
    hi_closed: bool = False


@dataclass(frozen=True)
class Decl:
    pos: Pos = field(compare=False)
    kind: str  # input | weight
    name: str
    shape: tuple[Expr, ...]
    constraints: tuple[Constraint, ...]
    default: Expr | None = None


@dataclass(frozen=True)
class Stmt:
    pos: Pos = field(compare=False)
    kind: str      # heads | state | option | let | transition | write | output | layer
    name: str = ""
    expr: Expr | None = None
    shape: tuple[Expr, ...] = ()


@dataclass(frozen=True)
class Param:
    pos: Pos = field(compare=False)
    name: str
    value: Expr


@dataclass(frozen=True)
class Recurrence:
    pos: Pos = field(compare=False)
    name: str
    params: tuple[Param, ...]
    decls: tuple[Decl, ...]
    stmts: tuple[Stmt, ...]
    layer: tuple[Stmt, ...]


def show(node, indent: int = 0) -> str:
    """Indented, position-annotated text of an AST (what `recdsl explain` prints)."""
    pad = "  " * indent
    if isinstance(node, Recurrence):
        out = [f"{pad}Recurrence {node.name} @{node.pos}"]
        out += [f"{pad}  param {p.name} = {expr_text(p.value)} @{p.pos}" for p in node.params]
        for d in node.decls:
            cons = " ".join(constraint_text(c) for c in d.constraints)
            shape = "[" + ", ".join(expr_text(s) for s in d.shape) + "]" if d.shape else ""
            dflt = f" = {expr_text(d.default)}" if d.default is not None else ""
            out.append(f"{pad}  {d.kind} {d.name}{shape} {cons}{dflt} @{d.pos}".replace("  @", " @"))
        for s in node.stmts + node.layer:
            shape = "[" + ", ".join(expr_text(e) for e in s.shape) + "]" if s.shape else ""
            body = expr_text(s.expr) if s.expr is not None else ""
            label = f"{s.kind} {s.name}{shape}".rstrip()
            out.append(f"{pad}  {label}{' = ' if s.name and s.expr is not None else ' '}{body} @{s.pos}")
        return "\n".join(out)
    return pad + expr_text(node)


def constraint_text(c: Constraint) -> str:
    if c.kind != "interval":
        return c.kind
    return f"in {'[' if c.lo_closed else '('}{expr_text(c.lo)}, {expr_text(c.hi)}{']' if c.hi_closed else ')'}"


def expr_text(e: Expr) -> str:
    if isinstance(e, Num):
        return repr(int(e.value)) if float(e.value).is_integer() and abs(e.value) < 1e15 else repr(e.value)
    if isinstance(e, Name):
        return e.id
    if isinstance(e, Neg):
        return f"-{expr_text(e.operand)}"
    if isinstance(e, BinOp):
        return f"({expr_text(e.left)} {e.op} {expr_text(e.right)})"
    if isinstance(e, Call):
        parts = [expr_text(a) for a in e.args] + [f"{k}={expr_text(v)}" for k, v in e.kwargs]
        return f"{e.fn}({', '.join(parts)})"
    raise TypeError(e)
