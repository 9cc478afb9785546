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


def test_device_idle_timeline_splits_a_call():
    """benchmarks/fp_device_idle.timeline on a made-up profile: kernels on two streams overlap (counted once),
    a record_function range drawn on the device's row is no kernel, and the idle rest splits into the lead
    (with the host stages in it), the gap between kernels (with the host stage at its middle) and the tail."""
    import sys
    from pathlib import Path
    from types import SimpleNamespace as Event

    from torch.autograd import DeviceType
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from fp_device_idle import timeline

    def ev(name, dev, t0, t1, **kw):
        return Event(name=name, device_type=dev, time_range=Event(start=t0, end=t1), **kw)
    cpu, gpu = DeviceType.CPU, DeviceType.CUDA
    events = [ev("call 0", cpu, 0, 1000), ev("recdsl:plan", cpu, 10, 90), ev("recdsl:fixed_point", cpu, 300, 700),
              ev("call 0", gpu, 100, 900, is_user_annotation=True),
              ev("k1", gpu, 100, 300), ev("k2", gpu, 200, 400), ev("k3", gpu, 600, 900)]
    row = timeline(events, "call 0")
    assert (row["span_ms"], row["busy_ms"], row["lead_ms"], row["gaps_ms"], row["tail_ms"]) == (1.0, 0.6, 0.1, 0.2, 0.1)
    assert row["kernels"] == 3 and row["first_kernel"] == "k1" and row["lead_stages_ms"] == {"recdsl:plan": 0.08}
    (gap,) = row["gaps"]
    assert gap["after_kernel"] == "k2" and gap["before_kernel"] == "k3" and gap["host_stage"] == "recdsl:fixed_point"
