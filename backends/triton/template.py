"""Variant templates for generated Triton modules: `#if EXPR` / `#elif EXPR` / `#else` / `#endif` lines
select text per variant (EXPR is a Python expression over the names none, scalar, perkey, decay and
signed, and any extra flags a caller passes, such as delta), `@DECAY@` and `@SIGNED@` name it; rendered
modules are imported through the kernel cache.
Used by the chunked kernels (chunk.py) and the recurrent ones (recurrent.py, delta.py, blockdiag.py).
"""
from __future__ import annotations

import hashlib
import re

import triton

from .cache import load_module

DECAYS = ("none", "scalar", "perkey")


def _preprocess(text: str, env: dict) -> str:
    """Keep the lines whose enclosing #if/#elif/#else branches hold for `env`; drop the directives."""
    out, stack = [], []   # stack of [this branch active, some branch already taken, parent active]
    for line in text.splitlines():
        s = line.strip()
        word = s.split(" ", 1)[0]
        if word in ("#if", "#elif", "#else", "#endif"):
            if word == "#if":
                parent = all(f[0] for f in stack)
                cond = bool(eval(s[3:], {}, env))
                stack.append([cond, cond, parent])
            elif word == "#elif":
                f = stack[-1]
                cond = (not f[1]) and bool(eval(s[5:], {}, env))
                f[0], f[1] = cond, f[1] or cond
            elif word == "#else":
                f = stack[-1]
                f[0], f[1] = not f[1], True
            else:
                stack.pop()
            continue
        if all(f[0] for f in stack):
            out.append(line)
    assert not stack, "unbalanced #if in a template"
    return "\n".join(out).lstrip("\n") + "\n"


def render(template: str, decay: str, signed: bool, **flags: bool) -> str:
    """A template's Triton module text for one variant: decay in {"none", "scalar", "perkey"}, signed,
    and extra boolean flags (each a name the template's #if lines may read)."""
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
    if signed and decay == "none":
        raise ValueError("signed decays need a decay (g)")
    env = dict(none=decay == "none", scalar=decay == "scalar", perkey=decay == "perkey",
               decay=decay != "none", signed=bool(signed), **{k: bool(v) for k, v in flags.items()})
    text = template.replace("@DECAY@", decay).replace("@SIGNED@", str(bool(signed)))
    return re.sub(r"\n{4,}", "\n\n\n", _preprocess(text, env))


def module_key(src: str) -> str:
    return hashlib.sha256(f"{src}\n{triton.__version__}".encode()).hexdigest()[:32]


_MODULES: dict = {}     # source -> imported module (a str caches its hash: cheap per launch)
_RENDERED: dict = {}    # (template, variant) -> source


def load_source(src: str):
    """The imported module of a rendered source (one import per process)."""
    if src not in _MODULES:
        _MODULES[src] = load_module(module_key(src), src)
    return _MODULES[src]


def load_variant(template: str, decay: str, signed: bool, **flags: bool):
    """The imported module of a template's variant."""
    k = (hash(template), decay, bool(signed), tuple(sorted(flags.items())))
    if k not in _RENDERED:
        _RENDERED[k] = render(template, decay, signed, **flags)
    return load_source(_RENDERED[k])
