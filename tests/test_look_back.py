"""The decoupled look-back (backends/triton/look_back.py) on its own. The interpreter runs programs one
after another, so inside a scan every predecessor has already published its inclusive value; here the
chain is laid out by hand with predecessors that have published only their aggregates, the case a GPU
meets when tiles run at once."""
import pytest
import torch

from recdsl.backends.triton.look_back import EMPTY

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tier runs the look-back in the scans")

KERNEL = '''

@triton.jit
def carry_into(aggs, incs, agg_a, agg_b, out, i_t, BD: tl.constexpr):
    cols = tl.arange(0, BD)[None, :]
    slot = i_t * BD + cols
    m = cols < BD
    carry = _chain_link(aggs, incs, slot, tl.load(agg_a + cols), tl.load(agg_b + cols), BD, i_t, m)
    tl.store(out + cols, carry)


@triton.jit
def inc_words(x, out, BD: tl.constexpr):
    cols = tl.arange(0, BD)
    tl.store(out + cols, _inc_word(tl.load(x + cols)))
'''


def module():
    from recdsl.backends.triton.cache import load_module
    from recdsl.backends.triton.look_back import LOOK_BACK
    src = "import triton\nimport triton.language as tl\n" + LOOK_BACK + KERNEL
    return load_module("test_look_back_" + str(abs(hash(src)) % 10**12), src)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_carry_composes_aggregates_back_to_an_inclusive_value(seed):
    g = torch.Generator().manual_seed(seed)
    n, BD = 6, 8                                   # tile 5 looks back over tiles 4..0
    A, B = torch.rand(n, BD, generator=g) * 2 - 1, torch.randn(n, BD, generator=g)
    h0 = torch.randn(BD, generator=g)
    incl, h = [], h0
    for t in range(n):
        h = A[t] * h + B[t]
        incl.append(h)
    incl = torch.stack(incl)
    # per element, how far back the nearest inclusive value is: tile 0 always has one
    inclusive = torch.rand(n, BD, generator=g) < 0.4
    inclusive[0] = True
    aggs = torch.full(((n + 1) * BD,), EMPTY, dtype=torch.int64)    # this tile's slot last
    incs = torch.full(((n + 1) * BD,), EMPTY, dtype=torch.int32)
    aggs[:n * BD] = words(A, B).flatten()
    incs[:n * BD] = torch.where(inclusive, incl.float().view(torch.int32), EMPTY).flatten()
    agg_a, agg_b, out = torch.rand(BD, generator=g), torch.randn(BD, generator=g), torch.empty(BD)
    module().carry_into[(1,)](aggs, incs, agg_a, agg_b, out, n, BD=BD)
    assert torch.allclose(out, incl[-1], atol=1e-5, rtol=1e-5)
    # this tile published its aggregate before looking back, and no inclusive value yet
    assert torch.equal(aggs[n * BD:], words(agg_a, agg_b))
    assert (incs[n * BD:] == EMPTY).all()


def words(hi, lo):
    """fp32 pairs as the look-back's 64-bit words (hi in the upper half)."""
    as_int = lambda x: x.float().view(torch.int32).to(torch.int64)
    return (as_int(hi) << 32) | (as_int(lo) & 0xFFFFFFFF)

def test_walk_and_look_back_schedules_agree(monkeypatch):
    """The same spec under both schedules: many tiles per sequence, varlen with an empty sequence."""
    import recdsl
    from conftest import example, random_args
    spec = recdsl.load(example("lru"), D=8)
    cu = torch.tensor([0, 3, 3, 70, 130], dtype=torch.int32)
    args = random_args(spec, B=1, T=130, dtype=torch.float32, seed=3)
    h0 = torch.randn(4, 8)
    res = []
    for schedule in ("walk", "look_back"):
        monkeypatch.setenv("RECDSL_SCAN_SCHEDULE", schedule)
        monkeypatch.setenv("RECDSL_SCAN_BLOCKS", "16,8,4")
        spec = recdsl.load(example("lru"), D=8)
        assert spec.plan("triton", tokens=130).scan_schedule == schedule
        a = {k: v.clone().requires_grad_(True) for k, v in args.items()}
        h = h0.clone().requires_grad_(True)
        o, S = spec.op(**a, initial_state=h, cu_seqlens=cu, output_final_state=True, backend="triton")
        (o.square().sum() + S.sum()).backward()
        res.append([o, S, h.grad] + [a[k].grad for k in sorted(a)])
    for x, y in zip(*res):
        assert torch.allclose(x, y, atol=1e-5, rtol=1e-5)


def test_scan_blocks_override_sets_each_kernels_warps(monkeypatch):
    """RECDSL_SCAN_BLOCKS takes the backward's warps as an optional fourth number; the plan prints both."""
    import recdsl
    from conftest import example
    monkeypatch.setenv("RECDSL_SCAN_SCHEDULE", "look_back")
    monkeypatch.setenv("RECDSL_SCAN_BLOCKS", "16,8,1,2")
    p = recdsl.load(example("hgrn"), D=8).plan("triton", tokens=130)
    assert (p.block_t, p.block_d, p.num_warps, p.bwd_warps) == (16, 8, 1, 2)
    assert "num_warps=1 (backward 2)" in p.text()
    monkeypatch.setenv("RECDSL_SCAN_BLOCKS", "16,8,4")      # three numbers: the backward as the forward
    assert recdsl.load(example("hgrn"), D=8).plan("triton", tokens=130).bwd_warps == 0
    monkeypatch.setenv("RECDSL_SCAN_BLOCKS", "16,8")
    with pytest.raises(ValueError, match="RECDSL_SCAN_BLOCKS='16,8'"):
        recdsl.load(example("hgrn"), D=8).plan("triton", tokens=130)


def test_no_inclusive_value_publishes_as_empty():
    """An inclusive value is published as its fp32 bits; a NaN whose bits are all ones would read as EMPTY
    and leave its successors waiting for ever, so NaNs are published canonical."""
    x = torch.tensor([-1, 0x7FC00000, 0x3F800000, -4194303], dtype=torch.int32).view(torch.float32)   # NaN, NaN, 1, NaN
    out = torch.zeros(4, dtype=torch.int32)
    module().inc_words[(1,)](x, out, BD=4)
    assert (out != EMPTY).all() and torch.isnan(out.view(torch.float32)[[0, 1, 3]]).all()
    assert out[2] == 0x3F800000                      # other values keep their bits
