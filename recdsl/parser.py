"""Text -> AST. LALR parsing with lark, friendly positioned errors, hard limits on hostile input."""
from __future__ import annotations

import math
from functools import lru_cache
from importlib import resources

import lark
from lark import Lark, Token, Transformer, v_args

from .ast import (BinOp, Call, Constraint, Decl, Name, Neg, Num, Param, Pos, Recurrence, Stmt)
from .errors import RecSyntaxError

MAX_BYTES = 1 << 20          # a spec is a few dozen lines; a megabyte is already absurd
MAX_LINE = 4000              # longer lines are rejected before the parser sees them
MAX_NESTING = 64             # brackets deeper than this are rejected before parsing (no recursion blow-up)
MAX_NUMBER = 1e15            # literals beyond this are never meaningful in a spec
MAX_OPERATORS = 100          # per line: bounds the depth of operator chains (a + a + ... + a) like brackets

_EXPECT_HINT = {
    "NAME": "a name", "NUMBER": "a number", "_NL": "the end of the line", "LPAR": "'('",
    "RPAR": "')'", "MINUS": "'-'", "PLUS": "'+'", "STAR": "'*'", "SLASH": "'/'", "AT": "'@'",
    "CIRCUMFLEX": "'^'", "LSQB": "'['", "RSQB": "']'", "COMMA": "','", "EQUAL": "'='", "COLON": "':'",
}


@lru_cache(maxsize=1)
def _parser() -> Lark:
    text = resources.files("recdsl.grammar").joinpath("rec.lark").read_text()
    return Lark(text, parser="lalr", lexer="contextual", propagate_positions=True, maybe_placeholders=False)


def _pos(meta_or_token) -> Pos:
    return Pos(getattr(meta_or_token, "line", 0) or 0, getattr(meta_or_token, "column", 0) or 0)


@v_args(meta=True)
class _ToAst(Transformer):
    """Parse tree -> frozen AST dataclasses, positions kept."""

    def number(self, meta, children):
        tok = children[0]
        value = float(tok)
        if not math.isfinite(value) or abs(value) > MAX_NUMBER:
            raise _Positioned(tok, f"number {str(tok)[:20]!r} is out of range",
                              f"numbers in a spec must lie within +-{MAX_NUMBER:g}")
        return Num(_pos(tok), value)

    def name(self, meta, children):
        return Name(_pos(children[0]), str(children[0]))

    def call(self, meta, children):
        fn, rest = children[0], children[1:]
        args = tuple(c for c in rest if not isinstance(c, tuple))
        kwargs = tuple(c for c in rest if isinstance(c, tuple))
        seen_kw = False
        for c in rest:
            if isinstance(c, tuple):
                seen_kw = True
            elif seen_kw:
                raise _Positioned(c.pos, "positional argument after a keyword argument",
                                  "put keyword arguments (name = value) last")
        return Call(_pos(fn), str(fn), args, kwargs)

    def kwarg(self, meta, children):
        return (str(children[0]), children[1])

    def _bin(op):
        def rule(self, meta, children):
            return BinOp(children[0].pos, op, children[0], children[1])
        return rule

    add, sub, mul, div, matmul, pow = _bin("+"), _bin("-"), _bin("*"), _bin("/"), _bin("@"), _bin("^")

    def neg(self, meta, children):
        return Neg(_pos(meta), children[0])

    def shape(self, meta, children):
        return ("shape", tuple(children))

    def default(self, meta, children):
        return ("default", children[0])

    def c_l2norm(self, meta, children):
        return Constraint(_pos(meta), "l2norm")

    def c_log(self, meta, children):
        return Constraint(_pos(meta), "log")

    def c_positive(self, meta, children):
        return Constraint(_pos(meta), "positive")

    def c_interval(self, meta, children):
        lo_b, lo, hi, hi_b = children
        return Constraint(_pos(meta), "interval", lo, hi, lo_b, hi_b)

    def open_bound(self, meta, children):
        return False

    def closed_bound(self, meta, children):
        return True

    def decl(self, meta, children):
        name, rest = children[0], children[1:]
        shape = next((c[1] for c in rest if isinstance(c, tuple) and c[0] == "shape"), ())
        default = next((c[1] for c in rest if isinstance(c, tuple) and c[0] == "default"), None)
        cons = tuple(c for c in rest if isinstance(c, Constraint))
        return Decl(_pos(name), "", str(name), shape, cons, default)

    def _decls(kind):
        def rule(self, meta, children):
            return [Decl(d.pos, kind, d.name, d.shape, d.constraints, d.default) for d in children]
        return rule

    input_stmt, weight_stmt = _decls("input"), _decls("weight")

    def heads_stmt(self, meta, children):
        return Stmt(_pos(meta), "heads", expr=children[0])

    def state_stmt(self, meta, children):
        return Stmt(_pos(meta), "state", str(children[0]), shape=children[1][1])

    def _named(kind):
        def rule(self, meta, children):
            return Stmt(_pos(meta), kind, str(children[0]), children[1])
        return rule

    option_stmt, let_stmt = _named("option"), _named("let")

    def output_stmt(self, meta, children):
        shape = children[1][1] if len(children) == 3 else ()
        return Stmt(_pos(meta), "output", str(children[0]), children[-1], shape)

    def solve_stmt(self, meta, children):
        return [Stmt(p.pos, "solve", p.name, p.value) for p in children]

    def transition_stmt(self, meta, children):
        return Stmt(_pos(meta), "transition", expr=children[0])

    def write_stmt(self, meta, children):
        return Stmt(_pos(meta), "write", expr=children[0])

    def layer_stmt(self, meta, children):
        shape = children[1][1] if len(children) == 3 else ()
        return Stmt(_pos(children[0]), "layer", str(children[0]), children[-1], shape)

    def layer_block(self, meta, children):
        return ("layer", tuple(children))

    def param(self, meta, children):
        return Param(_pos(children[0]), str(children[0]), children[1])

    def params(self, meta, children):
        return ("params", tuple(children))

    def recurrence(self, meta, children):
        name, rest = children[0], children[1:]
        params, decls, stmts, layer = (), [], [], ()
        for c in rest:
            if isinstance(c, tuple) and c[0] == "params":
                params = c[1]
            elif isinstance(c, tuple) and c[0] == "layer":
                layer = c[1]
            elif isinstance(c, list) and c and isinstance(c[0], Stmt):
                stmts += c
            elif isinstance(c, list):
                decls += c
            else:
                stmts.append(c)
        return Recurrence(_pos(name), str(name), params, tuple(decls), tuple(stmts), layer)

    def start(self, meta, children):
        return children[0]


class _Positioned(Exception):
    def __init__(self, where, message, hint=""):
        self.where, self.message, self.hint = where, message, hint


def parse(text: str | bytes, filename: str = "<spec>") -> Recurrence:
    """Parse the text of a `.rec` file into its AST, or raise a positioned RecSyntaxError."""
    text = _check_text(text, filename)

    def fail(line, col, message, hint=""):
        raise RecSyntaxError(message, source=text, filename=filename, line=line, column=col, hint=hint)

    try:
        tree = _parser().parse(text + "\n")
        return _ToAst().transform(tree)
    except lark.exceptions.VisitError as e:  # raised inside a transformer rule
        inner = e.orig_exc
        if isinstance(inner, _Positioned):
            p = inner.where if isinstance(inner.where, Pos) else _pos(inner.where)
            fail(p.line, p.column, inner.message, inner.hint)
        raise
    except lark.exceptions.UnexpectedCharacters as e:
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else "?"
        fail(e.line, e.column, f"unexpected character {ch!r}",
             "names are letters, digits and '_'; comments start with '#'")
    except lark.exceptions.UnexpectedToken as e:
        tok = e.token
        if tok.type == "$END":
            lines = text.split("\n")
            fail(len(lines), len(lines[-1]) + 1, "unexpected end of file",
                 "is a bracket left open, or is the `recurrence NAME(...):` header missing?")
        expected = sorted(_EXPECT_HINT.get(t, repr(t.lower()) if t.isupper() else t) for t in e.expected)
        shown = "end of line" if tok.type == "_NL" else repr(str(tok))
        hint = "expected " + ", ".join(expected[:8]) + (" ..." if len(expected) > 8 else "")
        line, col = tok.line, tok.column
        if tok.type == "_NL":  # point at the end of the line, not at the next one
            line, col = _end_of_previous(text, tok)
        fail(line, col, f"unexpected {shown}", hint)
    except lark.exceptions.UnexpectedEOF:
        lines = text.split("\n")
        fail(len(lines), len(lines[-1]) + 1, "unexpected end of file", "is a bracket left open?")


def _end_of_previous(text: str, tok: Token) -> tuple[int, int]:
    start = tok.start_pos
    line = text.count("\n", 0, start) + 1
    col = start - (text.rfind("\n", 0, start) + 1) + 1
    return line, col


def _check_text(text: str | bytes, filename: str) -> str:
    """Reject what the parser should never see: binary data, NUL bytes, huge inputs, deep nesting."""
    def fail(line, col, message, hint="", source=""):
        raise RecSyntaxError(message, source=source, filename=filename, line=line, column=col, hint=hint)

    if isinstance(text, bytes):
        if len(text) > MAX_BYTES:
            fail(1, 1, f"spec is {len(text)} bytes; at most {MAX_BYTES} are accepted")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            before = text[:e.start]
            line = before.count(b"\n") + 1
            fail(line, e.start - (before.rfind(b"\n") + 1) + 1, "spec is not UTF-8 text (binary file?)")
    if len(text) > MAX_BYTES:
        fail(1, 1, f"spec is {len(text)} characters; at most {MAX_BYTES} are accepted")
    if not text.strip() or all(l.strip() == "" or l.lstrip().startswith("#") for l in text.split("\n")):
        fail(1, 1, "empty spec", "a spec starts with `recurrence NAME(params):`")
    depth = 0
    for lineno, line in enumerate(text.split("\n"), 1):
        if len(line) > MAX_LINE:
            fail(lineno, MAX_LINE, f"line is {len(line)} characters long; at most {MAX_LINE} are accepted",
                 source=text)
        operators = 0
        for col, ch in enumerate(line, 1):
            if ch == "#":
                break
            if ch in "+-*/@^":
                operators += 1
                if operators > MAX_OPERATORS:
                    fail(lineno, col, f"more than {MAX_OPERATORS} operators on one line", source=text,
                         hint="split the expression with `let` names")
            if ch in "([":
                depth += 1
                if depth > MAX_NESTING:
                    fail(lineno, col, f"brackets nested deeper than {MAX_NESTING}", source=text)
            elif ch in ")]":
                depth = max(0, depth - 1)
            elif (ord(ch) < 32 and ch not in "\t\r\f") or ch == "\x7f":
                fail(lineno, col, f"control character {ch!r} in spec (binary file?)", source=text)
    return text
