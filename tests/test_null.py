"""Null tier: parser, positions, verifier, analysis, canonical IR text and hash stability, CLI."""
import subprocess
import sys

import pytest

import recdsl
from recdsl.ast import show
from recdsl.parser import parse

from conftest import EXAMPLES, ROOT, example

EXPECTED_FAMILY = {
    "linear_attention": "scalar", "retnet": "scalar", "mamba2": "scalar", "gla": "diagonal",
    "hgrn": "diagonal", "lru": "diagonal", "mamba": "diagonal", "mamba_negeig": "signed_diagonal",
    "deltanet": "householder_product", "deltanet_negeig": "householder_product",
    "gated_deltanet": "householder_product", "deltaproduct": "householder_product", "rwkv7": "dplr",
    "block_diagonal": "block_diagonal", "fp_rnn": "dense_fixed_point", "fp_mamba": "dense_fixed_point",
}


def test_every_family_has_its_example():
    assert sorted(EXPECTED_FAMILY) == sorted(p.split("/")[-1][:-4] for p in EXAMPLES)


def test_examples_load_with_expected_family(example_name):
    spec = recdsl.load(example(example_name))
    assert spec.family == EXPECTED_FAMILY[example_name]
    with open(example(example_name)) as f:
        assert f.readline().startswith("# ")   # each opens with a comment naming the paper


def test_eigenvalue_ranges():
    rng = {n: str(recdsl.load(example(n)).analysis.eig_range) for n in
           ("deltaproduct", "deltanet", "deltanet_negeig", "mamba_negeig", "gla", "linear_attention")}
    assert rng == {"deltaproduct": "(-1, 1]", "deltanet": "(0, 1]", "deltanet_negeig": "(-1, 1]",
                   "mamba_negeig": "(-1, 1)", "gla": "(0, 1]", "linear_attention": "{1}"}
    text = recdsl.load(example("gla")).analysis.text()
    assert "cannot solve parity" in text and "commute" in text
    dp = recdsl.load(example("deltaproduct"), n_h=3).analysis
    assert dp.n_h == 3 and "S_4" in dp.text()


def test_ast_positions():
    src = "recurrence r(K = 4):\n    state h[K]\n    input x[K], g[K] log\n    transition diag(exp(g))\n" \
          "    write x\n    output y = h\n"
    rec = parse(src, "p.rec")
    assert (rec.pos.line, rec.pos.column) == (1, 12)
    g = [d for d in rec.decls if d.name == "g"][0]
    assert (g.pos.line, g.pos.column) == (3, 17)
    assert g.constraints[0].kind == "log" and (g.constraints[0].pos.line, g.constraints[0].pos.column) == (3, 22)
    trans = [s for s in rec.stmts if s.kind == "transition"][0]
    assert (trans.pos.line, trans.expr.pos.column) == (4, 16)
    assert "input g[K] log @3:17" in show(rec)


def test_params_override_and_shapes():
    spec = recdsl.load(example("deltaproduct"), n_h=3, K=8)
    k = next(a for a in spec.args if a.name == "k")
    assert k.shape == (3, 8) and k.symbols == ("n_h", "K")
    assert dict(spec.params)["n_h"] == 3
    assert dict(spec.options)["scale"] == pytest.approx(8 ** -0.5)


def test_canonical_text_is_stable_and_hash_changes_with_params():
    a, b = recdsl.load(example("gla")), recdsl.load(open(example("gla")).read())
    assert a.ir.text() == b.ir.text() and a.ir.hash() == b.ir.hash()
    assert recdsl.load(example("gla"), K=8).ir.hash() != a.ir.hash()
    # comments and whitespace do not change the IR
    src = open(example("gla")).read().replace("    heads H", "    heads   H    # the heads")
    assert recdsl.load(src).ir.hash() == a.ir.hash()


def test_hash_stable_across_processes():
    code = ("import recdsl, glob; print(' '.join(recdsl.load(p).ir.hash() for p in sorted(glob.glob("
            f"'{ROOT}/examples/*.rec'))))")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={"PYTHONHASHSEED": str(seed), "PATH": ""}).stdout for seed in (1, 2)}
    assert len(runs) == 1
    assert list(runs)[0].split() == [recdsl.load(p).ir.hash() for p in EXAMPLES]


def test_equal_projections_stay_distinct():
    # q, k and v are all silu(linear(hidden)): hash-consing must not merge their weights
    ir = recdsl.load(example("deltanet")).ir
    labels = [n.args[0] for n in ir.leaves("linear")]
    assert len(labels) == len(set(labels)) == 5


def test_verifier_names_node_and_position():
    src = ("recurrence r(K = 4, V = 2):\n    state S[K, V]\n    input k[K] l2norm, v[V], beta in (0, 1)\n"
           "    transition I\n    write delta(k, v, beta)\n    output o = k @ S\n")
    with pytest.raises(recdsl.RecSemanticError) as e:
        recdsl.load(src)
    assert (e.value.line, e.value.column) == (5, 11)
    assert "node delta[4, 2]" in str(e.value) and "householder(k, beta)" in str(e.value)


def test_plan_and_explain():
    text = recdsl.load(example("deltaproduct")).explain()
    for part in ("== AST ==", "== IR ==", "householder_product", "n_h = 2", "(-1, 1]", "== plan =="):
        assert part in text


def test_kept_plans_follow_the_call_and_the_settings(monkeypatch):
    """A spec keeps each call's plan, keyed by everything the planner reads: the same call gives the same
    object; another shape, or a setting changed in the environment, plans again."""
    spec = recdsl.load(example("hgrn"), D=64)
    first = spec.plan("triton", batch_channels=4 * 64, on_cuda=True, tokens=4096)
    assert spec.plan("triton", batch_channels=4 * 64, on_cuda=True, tokens=4096) is first
    assert spec.plan("triton", batch_channels=4 * 64, on_cuda=True, tokens=1).block_t != first.block_t
    monkeypatch.setenv("RECDSL_SCAN_BLOCKS", "16,8,4")
    assert spec.plan("triton", batch_channels=4 * 64, on_cuda=True, tokens=4096).block_t == 16


def test_every_setting_the_planner_reads_is_in_the_plan_key():
    """PLAN_ENV must name each environment variable recdsl/planner.py reads, or a kept plan would outlive
    a changed setting."""
    import re
    from recdsl import planner
    from recdsl.backends.triton.dplr import DPLR_FORWARD_ENV
    from pathlib import Path
    src = Path(planner.__file__).read_text()
    names = set(re.findall(r'os\.environ\.get\("(RECDSL_\w+)"', src))
    names |= {getattr(planner, c, None) or {"DPLR_FORWARD_ENV": DPLR_FORWARD_ENV}[c]
              for c in re.findall(r"os\.environ\.get\(([A-Z_]+)\b", src)}
    assert names and names <= set(planner.PLAN_ENV), names - set(planner.PLAN_ENV)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "recdsl.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_cli_check_all_examples():
    r = run_cli("check", *EXAMPLES)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("ok ") == 16


def test_cli_check_fails_on_error(tmp_path):
    bad = tmp_path / "bad.rec"
    bad.write_text("recurrence r():\n    state h[4]\n    transition diag(nope)\n    write 1\n    output y = h\n")
    r = run_cli("check", str(bad), *EXAMPLES[:1])
    assert r.returncode == 1
    assert f"{bad}:3:21: unknown name 'nope'" in r.stderr and "Traceback" not in r.stderr


def test_cli_run_reports_the_same_every_time():
    """recdsl run seeds before compiling, so the layer's weights, and the report, repeat (the timing aside)."""
    runs = [run_cli("run", example("lru")) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    report = [r.stdout.rsplit(";", 1)[0] for r in runs]
    assert "step() vs forward rel. error" in report[0] and report[0] == report[1]


def test_cli_explain_and_graph(tmp_path):
    r = run_cli("explain", example("deltaproduct"))
    assert r.returncode == 0 and "householder_product" in r.stdout and "(-1, 1]" in r.stdout
    dot = tmp_path / "g.dot"
    r = run_cli("graph", example("gla"), "-o", str(dot))
    assert r.returncode == 0 and dot.read_text().startswith('digraph "gla"')
    png = tmp_path / "g.png"
    pytest.importorskip("matplotlib")
    r = run_cli("graph", example("deltaproduct"), "-o", str(png))
    assert r.returncode == 0 and png.read_bytes()[:4] == b"\x89PNG"


def test_module_api():
    import torch
    layer = recdsl.compile(example("gla"), **{k: v for k, v in dict(H=2, K=4, V=4, d_model=8).items()},
                           dtype=torch.float64)
    assert "family=diagonal" in repr(layer) and "gla(" in repr(layer)
    assert layer.dtype == torch.float64 and layer.device.type == "cpu"
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    y, S = layer(x, output_final_state=True)
    assert y.shape == x.shape and S.shape == (2, 2, 4, 4) and S.dtype == torch.float64  # fp64 in, fp64 state
    before = [p.clone() for p in layer.parameters()]
    layer.reset_parameters()
    assert any(not torch.equal(a, b) for a, b in zip(before, layer.parameters()))
    with pytest.raises(ValueError, match=r"x: expected shape \[B, T, d_model=8\]"):
        layer(torch.randn(2, 5, 7, dtype=torch.float64))


def test_weight_initialisers():
    import math
    import torch
    layer = recdsl.compile(example("retnet"), H=3, K=4, V=4, d_model=8)
    g = layer.weights["g"].detach()
    assert torch.allclose(g, torch.tensor([math.log(1 - 2 ** (-5 - h)) for h in range(3)]))
    m = recdsl.compile(example("mamba"), D=2, N=3, d_model=4)
    assert torch.allclose(m.weights["A_log"].detach(), torch.log(torch.tensor([[1.0, 2, 3], [1, 2, 3]])))
