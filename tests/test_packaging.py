"""The built wheel carries the grammar and works from a fresh venv outside the checkout."""
import subprocess
from pathlib import Path
import sys
import venv

import pytest

from conftest import ROOT, example


@pytest.mark.slow
def test_wheel_installs_and_compiles_outside_checkout(tmp_path):
    wheels = tmp_path / "wheels"
    # build from a pristine copy: setuptools would otherwise reuse an editable install's file list
    # (egg-info) or build/, and hide a package missing from pyproject.toml
    import shutil
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                                             ".hypothesis", ".recdsl_cache", ".whl"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        str(src), "-w", str(wheels)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    wheel = next(wheels.glob("recdsl-*.whl"))
    # every module of the checkout is in the wheel (an editable install elsewhere would hide a gap)
    import zipfile
    shipped = set(zipfile.ZipFile(wheel).namelist())
    root = Path(ROOT)
    want = {f"recdsl/{p.relative_to(root / 'recdsl')}" for p in (root / "recdsl").rglob("*.py")}
    want |= {f"recdsl/backends/{p.relative_to(root / 'backends')}" for p in (root / "backends").rglob("*.py")}
    want |= {f"recdsl/grammar/{p.name}" for p in (root / "grammar").glob("*.lark")}
    assert not want - shipped, sorted(want - shipped)
    env_dir = tmp_path / "venv"
    # system site packages give the venv torch and lark without a download
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
                        str(wheel)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    code = ("import recdsl, sys, torch; assert str(recdsl.__file__).startswith(sys.prefix), recdsl.__file__; "
            f"m = recdsl.compile({example('gla')!r}, H=2, K=4, V=4, d_model=8); "
            "y, _ = m(torch.randn(1, 3, 8)); print('ok', tuple(y.shape))")
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "ok (1, 3, 8)" in r.stdout
