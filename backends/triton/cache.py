"""Generated Triton modules on disk: one file per content hash, written atomically, verified on load.

Triton compiles a @triton.jit function only from a real source file, so generated code is written to
`$RECDSL_CACHE` (default ~/.cache/recdsl/kernels) under the hash of everything that affects codegen,
then imported from there. Several processes may write the same file at once: each writes a private
temporary file and renames it into place, and a rename is atomic.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

HEADER = "# recdsl generated kernel; sha256 of the body: "


def cache_dir() -> Path:
    d = Path(os.environ.get("RECDSL_CACHE", Path.home() / ".cache" / "recdsl" / "kernels"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _digest(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


def write_module(key: str, body: str) -> Path:
    """Write `body` as <key>.py unless an intact copy is already there; returns the path."""
    path = cache_dir() / f"{key}.py"
    text = f"{HEADER}{_digest(body)}\n{body}"
    if path.exists() and _intact(path):
        return path
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _intact(path: Path) -> bool:
    text = path.read_text()
    first, _, body = text.partition("\n")
    return first.startswith(HEADER) and first[len(HEADER):] == _digest(body)


def load_module(key: str, body: str):
    """Import the generated module for `key` (writing it first if needed); one import per process."""
    name = f"recdsl_gen_{key}"
    if name in sys.modules:
        return sys.modules[name]
    path = write_module(key, body)
    if not _intact(path):  # damaged after writing (disk trouble, a foreign writer): write it again
        path.unlink(missing_ok=True)
        path = write_module(key, body)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
