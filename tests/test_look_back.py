"""The decoupled look-back (backends/triton/look_back.py) on its own. The interpreter runs programs one
after another, so inside a scan every predecessor has already published its inclusive value; here the
chain is laid out by hand with predecessors that have published only their aggregates, the case a GPU
meets when tiles run at once."""
import pytest
import torch

from recdsl.backends.triton.look_back import FILL_STALE, MARKS

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tier runs the look-back in the scans")

KERNEL = '''

@triton.jit
def carry_into(words, agg_a, agg_b, out, i_t, stale, mark, BD: tl.constexpr):
    cols = tl.arange(0, BD)[None, :]
    slot = i_t * BD + cols
    m = cols < BD
    carry = _chain_link(words, slot, tl.load(agg_a + cols), tl.load(agg_b + cols), BD, i_t, m, stale, mark)
    tl.store(out + cols, carry)


@triton.jit
def agg_words(a, b, out, BD: tl.constexpr):
    cols = tl.arange(0, BD)
    tl.store(out + cols, _agg_word(tl.load(a + cols), tl.load(b + cols)))
'''


def module():
    from recdsl.backends.triton.cache import load_module
    from recdsl.backends.triton.look_back import LOOK_BACK
    src = "import triton\nimport triton.language as tl\n" + LOOK_BACK + KERNEL
    return load_module("test_look_back_" + str(abs(hash(src)) % 10**12), src)


def as_int(x):
    return x.float().view(torch.int32).to(torch.int64)


def words(hi, lo):
    """fp32 pairs as the look-back's 64-bit words (hi in the upper half)."""
    return (as_int(hi) << 32) | (as_int(lo) & 0xFFFFFFFF)


def marked(mark, lo):
    return (torch.full_like(as_int(lo), mark) << 32) | (as_int(lo) & 0xFFFFFFFF)


@pytest.mark.parametrize("seed, stale, mark", [(0, FILL_STALE, MARKS[0]), (1, MARKS[0], MARKS[1]),
                                               (2, MARKS[1], MARKS[0])])
def test_carry_composes_aggregates_back_to_an_inclusive_value(seed, stale, mark):
    """Words left stale by a fill or by the launch before (its inclusive values under the other mark)."""
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
    ws = marked(stale, torch.randn((n + 1) * BD, generator=g))   # this tile's slot last, stale
    ws[:n * BD] = torch.where(inclusive, marked(mark, incl), words(A, B)).flatten()
    agg_a, agg_b, out = torch.rand(BD, generator=g), torch.randn(BD, generator=g), torch.empty(BD)
    module().carry_into[(1,)](ws, agg_a, agg_b, out, n, stale, mark, BD=BD)
    assert torch.allclose(out, incl[-1], atol=1e-5, rtol=1e-5)
    # this tile published its aggregate before looking back, and no inclusive value yet
    assert torch.equal(ws[n * BD:], words(agg_a, agg_b))


def test_no_aggregate_reads_as_stale_or_inclusive():
    """An aggregate's A is published canonical: a NaN with a mark's bits, or the fill's, would read as an
    inclusive value or leave the successors waiting for ever."""
    bits = [FILL_STALE, MARKS[0], MARKS[1], 0x3F800000]   # NaN, NaN, NaN, 1.0
    a = torch.tensor(bits, dtype=torch.int32).view(torch.float32)
    b = torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = torch.zeros(4, dtype=torch.int64)
    module().agg_words[(1,)](a, b, out, BD=4)
    hi = (out >> 32).to(torch.int32)
    assert not any(int(h) in (FILL_STALE, *MARKS) for h in hi[:3]) and torch.isnan(hi[:3].view(torch.float32)).all()
    assert int(hi[3]) == 0x3F800000 and torch.equal(out.to(torch.int32).view(torch.float32), b)


def test_words_flip_marks_and_make_an_older_launchs_elements_stale():
    """Words.take: each launch gets the last one's mark as `stale`; elements a shorter launch left with an
    older mark are made stale before a longer launch reads them."""
    from recdsl.backends.triton.look_back import Words
    ws, cpu = Words(), torch.device("cpu")
    w, stale, mark = ws.take(10, cpu)
    assert (w.numel(), stale, mark) == (10, MARKS[0], MARKS[1]) and (w == MARKS[0] << 32).all()
    w[:] = marked(mark, torch.zeros(10))            # the launch publishes every element's inclusive value
    w, stale, mark = ws.take(4, cpu)
    assert (stale, mark) == (MARKS[1], MARKS[0])
    w[:4] = marked(mark, torch.zeros(4))             # elements 4..9 keep MARKS[1], the new `mark`'s other
    w, stale, mark = ws.take(10, cpu)
    assert (stale, mark) == (MARKS[0], MARKS[1]) and ((w >> 32) == MARKS[0]).all()
    big, _, _ = ws.take(20, cpu)                  # a larger launch: new words, all stale
    assert big.numel() == 20 and ((big >> 32).to(torch.int32) == MARKS[1]).sum() == 0
    ws.discard(cpu)                                 # after a launch that raised: new words, all stale
    w, stale, mark = ws.take(20, cpu)
    assert (stale, mark) == (MARKS[0], MARKS[1]) and (w == MARKS[0] << 32).all()


def test_words_kept_are_bounded_in_bytes_and_streams():
    """A launch larger than max_bytes takes filled words of its own (stale = the fill) and leaves the kept
    ones alone; a new stream beyond max_streams drops the oldest stream's words."""
    from recdsl.backends.triton.look_back import Words
    ws, cpu = Words(max_bytes=8 * 16, max_streams=1), torch.device("cpu")
    w, stale, mark = ws.take(16, cpu)
    assert (stale, mark) == (MARKS[0], MARKS[1])
    own, stale, mark = ws.take(17, cpu)
    assert own is not w and (stale, mark) == (FILL_STALE, MARKS[0]) and (own == -1).all()
    assert ws.take(16, cpu)[0] is w                 # the kept words, marks flipped once more
    ws._kept[("cuda", 0, 123)] = ws._kept[ws._key(cpu)]     # pretend another stream holds the one place
    ws._kept.pop(ws._key(cpu))
    w2, stale, _ = ws.take(4, cpu)
    assert w2 is not w and stale == MARKS[0] and list(ws._kept) == [ws._key(cpu)]


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


def test_look_back_scans_of_changing_sizes_share_the_words(monkeypatch):
    """Scans one after another on one stream keep the look-back's words without a fill: shorter, longer,
    packed and repeated calls each match the reference (forward and backward launches both flip marks)."""
    import recdsl
    from conftest import check_against_reference, example, random_args
    monkeypatch.setenv("RECDSL_SCAN_SCHEDULE", "look_back")
    monkeypatch.setenv("RECDSL_SCAN_BLOCKS", "16,8,2")
    spec = recdsl.load(example("hgrn"), D=8)
    for i, (B, T, cu) in enumerate([(2, 130, None), (1, 20, None), (1, 130, [0, 5, 5, 64, 130]),
                                    (2, 130, None), (3, 47, None)]):
        args = {k: v.float().requires_grad_(True) for k, v in random_args(spec, B=B, T=T, seed=i).items()}
        cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
        h0 = torch.randn(B if cu is None else len(cu) - 1, 8, requires_grad=True)
        check_against_reference(spec, args, h0, cu_t, label=(B, T, cu))
