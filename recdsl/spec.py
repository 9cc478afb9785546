"""A loaded spec: AST, IR and analysis, plus its core op with flash-linear-attention's layout."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import ast as A
from .analysis import Analysis, analyse
from .ir import IR
from .lower import lower
from .parser import parse
from .verify import verify

if TYPE_CHECKING:
    from .planner import Plan



@dataclass(frozen=True)
class Arg:
    """One tensor argument of the core op: its name, per-token shape and the symbols that name it."""
    name: str
    kind: str              # input | weight
    shape: tuple[int, ...]
    symbols: tuple[str, ...]
    default: float | None = None


@dataclass(frozen=True)
class Spec:
    ast: A.Recurrence
    ir: IR
    analysis: Analysis
    params: tuple[tuple[str, float], ...]
    args: tuple[Arg, ...] = field(default=())
    options: tuple[tuple[str, float], ...] = field(default=())
    # artifacts derived from this spec (eligibility, generated kernels), computed once per process
    memo: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def name(self) -> str:
        return self.ir.name

    @property
    def family(self) -> str:
        return self.analysis.family

    @property
    def heads(self) -> int | None:
        return self.ir.heads

    @property
    def output_name(self) -> str:
        return self.ir.roots_with("output:")[0][0]

    def plan(self, backend: str = "auto", **call) -> "Plan":
        from .planner import plan
        return plan(self, backend, **call)

    def state_shape(self, batch: int) -> tuple[int, ...]:
        return (batch,) + ((self.heads,) if self.heads else ()) + self.ir.state[1]

    def op(self, *args, initial_state=None, output_final_state: bool = False, cu_seqlens=None,
           backend: str = "auto", **kwargs):
        """Run the core recurrence. Tensors in flash-linear-attention's layout: [B, T, H, *shape]
        ([B, T, *shape] without heads); weights [H, *shape]; returns (o, final_state | None)."""
        from .opcall import call_op
        o, final, _ = call_op(self, args, kwargs, initial_state, output_final_state, cu_seqlens, backend)
        return o, final

    def explain(self) -> str:
        return "\n\n".join([
            "== AST ==\n" + A.show(self.ast),
            "== IR ==\n" + self.ir.text() + f"\nstructural hash: {self.ir.hash()}",
            "== analysis ==\n" + self.analysis.text(),
            "== op ==\n" + self.signature(),
            "== plan ==\n" + self._plans(),
        ])

    def _plans(self) -> str:
        """The plan for CPU tensors and, where it differs, for CUDA tensors: training calls, and calls
        without a gradient (inference, step()) where that changes the choice."""
        cpu = self.plan("auto", on_cuda=False).text()
        train = self.plan("auto", on_cuda=True).text()
        infer = self.plan("auto", on_cuda=True, tokens=1, needs_grad=False).text()
        out = [f"on CPU tensors: {cpu}"]
        if train != cpu:
            out.append(f"on CUDA tensors: {train}")
        if infer != train:
            out.append(f"on CUDA tensors, decoding (no gradient): {infer}")
        return "\n".join(out)

    def signature(self) -> str:
        lead = "B, T, H, " if self.heads else "B, T, "
        parts = []
        for a in self.args:
            dims = ", ".join(f"{s}={d}" if s != str(d) else str(d) for s, d in zip(a.symbols, a.shape))
            if a.kind == "weight":
                full = f"[{'H, ' if self.heads else ''}{dims}]".replace(", ]", "]")
            else:
                full = f"[{lead}{dims}]".replace(", ]", "]")
            dflt = f" = {a.default:g}" if a.default is not None else ""
            parts.append(f"{a.name}: {full}{dflt}")
        parts += [f"{n} = {v:g}" for n, v in self.options]
        return f"{self.name}.op({', '.join(parts)}, initial_state=None, output_final_state=False, cu_seqlens=None)"


def load(path_or_text: str | os.PathLike, **params) -> Spec:
    """Parse, lower, verify and analyse a spec given as a path or as its text."""
    text, filename = _read(path_or_text)
    rec = parse(text, filename)
    ir = lower(rec, params, text, filename)
    verify(ir)
    args = []
    for d in rec.decls:
        node = next(n for n in ir.leaves(d.kind) if n.args[0] == d.name)
        symbols = tuple(A.expr_text(x) for x in d.shape)
        default = node.args[2] if d.kind == "input" else None
        args.append(Arg(d.name, d.kind, node.shape, symbols, default))
    options = tuple((n.args[0], n.args[1]) for n in ir.leaves("option"))
    return Spec(rec, ir, analyse(ir), ir.params, tuple(args), options)


def _read(path_or_text) -> tuple[str, str]:
    if isinstance(path_or_text, os.PathLike) or (isinstance(path_or_text, str) and "\n" not in path_or_text
                                                  and path_or_text.endswith(".rec")):
        p = Path(path_or_text)
        try:
            return p.read_bytes().decode("utf-8", errors="strict"), str(p)
        except UnicodeDecodeError:
            from .parser import _check_text
            _check_text(p.read_bytes(), str(p))
        except OSError as e:
            raise FileNotFoundError(f"cannot read spec {str(p)!r}: {e.strerror}") from None
    if isinstance(path_or_text, bytes):
        from .parser import _check_text
        return _check_text(path_or_text, "<spec>"), "<spec>"
    return str(path_or_text), "<spec>"
