"""`recdsl bench`'s recurrent and fixed-point case runs end to end on the CPU (timings are not checked:
the CPU tier only proves the harness the GPU session relies on)."""
import pytest
import torch

from recdsl.bench import dplr_shapes, recurrent_case

from conftest import example

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU runs the real benchmark")


@pytest.mark.parametrize("name,params,T,modes", [
    ("block_diagonal", {"NB": 2, "b": 4}, 5, {"fwd", "fwd+bwd"}),
    ("fp_rnn", {"D": 4, "max_iter": 4}, 5, {"fwd", "fwd+bwd"}),   # a fixed count, as the paper times
    ("deltaproduct", {"H": 1, "K": 4, "V": 4}, 5, {"fwd", "fwd+bwd"}),   # the chunked WY kernels
    # longer than a chunk: the chunkwise forward, the recurrent one beside it; fla's rows only where fla imports
    ("rwkv7", {"H": 1, "K": 4, "V": 4}, 70, {"fwd", "fwd+bwd"}),
])
def test_recurrent_case_rows(name, params, T, modes):
    rows = recurrent_case(example(name), 2, T, params, device="cpu")
    got = {(r["contestant"], r["mode"]) for r in rows}
    second = {"fp_rnn": ("recdsl unfused",), "rwkv7": ("recdsl recurrent forward",)}.get(name, ())
    contestants = ("recdsl", "reference (PyTorch loop)") + second
    assert got == {(c, m) for c in contestants for m in modes}
    if name == "fp_rnn":   # the planner's fused iteration and the unfused path
        assert {r["algorithm"] for r in rows if r["contestant"].startswith("recdsl")} == \
            {"fixed_point_fused", "fixed_point_scan"}
    if name == "rwkv7":
        assert {r.get("algorithm") for r in rows if r["contestant"] == "recdsl recurrent forward"} == {"dplr_recurrent"}
        assert {r["forward"] for r in rows if r["contestant"] == "recdsl"} == {"chunk"}
    assert all(r["ms"] > 0 and r["B"] == 2 and r["T"] == T for r in rows)


def test_dplr_runs_at_issue_4s_shapes():
    """`recdsl bench` on a DPLR spec (rwkv7) measures issue 4's (B, T, H, D) shapes: H heads of K = V = D."""
    assert dplr_shapes("4,4096,16,128;8,1024,8,64", ["d_model=64"]) == [
        (4, 4096, {"H": 16, "K": 128, "V": 128, "d_model": 64.0}),
        (8, 1024, {"H": 8, "K": 64, "V": 64, "d_model": 64.0})]
    B, T, params = dplr_shapes("2,5,1,4", [])[0]
    rows = recurrent_case(example("rwkv7"), B, T, params, dtype=torch.float16, device="cpu")
    assert {r["dtype"] for r in rows} == {"float16"} and {r["K"] for r in rows} == {4}
