"""Errors that point at the spec: `file:line:col`, the line itself, a caret and a hint."""
from __future__ import annotations


class RecError(Exception):
    """Base of every error about a `.rec` spec. Carries `.line` and `.column` (1-based)."""

    def __init__(self, message: str, *, source: str = "", filename: str = "<spec>",
                 line: int = 1, column: int = 1, hint: str = ""):
        self.message, self.filename, self.hint = message, filename, hint
        self.line, self.column = max(1, line), max(1, column)
        self.source_line = _line_of(source, self.line)
        super().__init__(self._render())

    def _render(self) -> str:
        out = [f"{self.filename}:{self.line}:{self.column}: {self.message}"]
        if self.source_line is not None:
            shown, col = _clip(self.source_line, self.column)
            out += ["    " + shown, "    " + " " * (col - 1) + "^"]
        if self.hint:
            out.append(f"hint: {self.hint}")
        return "\n".join(out)


class RecSyntaxError(RecError):
    """The text is not a well-formed `.rec` file."""


class RecSemanticError(RecError):
    """The text parses, but means nothing recdsl can build (unknown name, wrong shape, ...)."""


class RecNotConverged(UserWarning):
    """A fixed-point iteration stopped at max_iter above its tolerance."""


def _line_of(source: str, line: int) -> str | None:
    if not source:
        return None
    lines = source.split("\n")
    return lines[line - 1].rstrip("\r") if 0 < line <= len(lines) else None


def _clip(text: str, col: int, width: int = 100) -> tuple[str, int]:
    """Show at most `width` characters of a long line around the column."""
    text = text.replace("\t", " ")
    if len(text) <= width:
        return text, col
    start = max(0, min(col - width // 2, len(text) - width))
    return ("..." if start else "") + text[start:start + width] + "...", col - start + (3 if start else 0)
