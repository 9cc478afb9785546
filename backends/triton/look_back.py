"""Decoupled look-back (Merrill and Garland 2016, "Single-pass Parallel Prefix Scan with Decoupled
Look-back"), as device-function text that generated modules include.

A scan over tokens is split into tiles of BT tokens that run in parallel. Each tile's effect on the
carried value is an affine map h -> A h + B (its aggregate). A tile publishes its aggregate, then walks
back along its chain of predecessors: a predecessor that has published its inclusive value (the carry
after it) ends the walk, one that has published only its aggregate is composed in and the walk goes on.
The tile then publishes its own inclusive value. Inputs are read once and every tile is independent
except for this short exchange of [BD] values, so the whole machine streams even when there are few
sequences and channels.

A tile's place is its program id, chunk-major: its predecessors have lower ids. Blocks of a launch are
dispatched in increasing order, so a tile only waits on tiles already resident or done; CUB's
single-pass scan (behind torch.cumsum on CUDA) relies on the same order. An atomic counter of tiles
as they start, taken before, cost 0.011-0.016 ms of hgrn's 0.13 ms forward at B=4, T=4096, C=2048
(benchmarks/results/2026-11-26zza_h100_proto_scan_tile_order.jsonl).

Each published value carries its own status: a 64-bit word holds an aggregate's two fp32 halves (A, B),
a 32-bit word an inclusive value's bits, and the all-ones word means "not yet" (NaN halves of a pattern
arithmetic does not produce: a GPU's NaNs are 0x7fffffff, and an inclusive value's NaNs are made
canonical before it is published). Publishing is one store and polling one volatile load, with no fence
between a value and its flag: on an H100 this took the hgrn forward from 0.142 to 0.119 ms at B=4,
T=4096, C=2048 (benchmarks/results/2026-11-26zc_h100_proto_scan_look_back.jsonl).

Workspace, per launch: `aggs` int64 and `incs` int32 [n_tiles_in_chains * state], filled with -1 (EMPTY)
in one allocation and one fill.
"""

EMPTY = -1

LOOK_BACK = '''
@triton.jit
def _any(mask):
    return tl.max(tl.where(mask, 1, 0)) > 0


@triton.jit
def _word(hi, lo):
    # two fp32 values as one 64-bit word, published (and read) at once
    return (hi.to(tl.int32, bitcast=True).to(tl.int64) << 32) | (lo.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF)


@triton.jit
def _word_hi(w):
    return (w >> 32).to(tl.int32).to(tl.float32, bitcast=True)


@triton.jit
def _word_lo(w):
    return w.to(tl.int32).to(tl.float32, bitcast=True)


@triton.jit
def _inc_word(value):
    # an inclusive value as its fp32 bits; NaNs canonical, so that no value is the EMPTY pattern (all ones)
    return tl.where(value == value, value, float("nan")).to(tl.int32, bitcast=True)


@triton.jit
def _poll(words, mask):
    return tl.load(words, mask=mask, other=-1, volatile=True)


@triton.jit
def _read(words, mask):
    # An atomic read (adds 0): where a layout gives one element to threads of several warps, one thread
    # reads it and shares the word with the others, so all of them act on the same value.
    return tl.where(mask, tl.atomic_add(words, 0, mask=mask, sem="relaxed"), -1)


@triton.jit
def _chain_link(aggs, incs, slot, agg_a, agg_b, step, n_back, m):
    """Publish this tile's aggregate, then return the carry into it (_chain_carry)."""
    tl.store(aggs + slot, _word(agg_a, agg_b), mask=m)
    return _chain_carry(aggs, incs, slot, step, n_back, m)


@triton.jit
def _chain_carry(aggs, incs, slot, step, n_back, m):
    """The carry into this tile, its aggregate published: the inclusive value of the nearest
    predecessor that has one, mapped through the aggregates of the tiles in between. `step` is the
    slot offset from one tile of the chain to the next, `n_back` how many tiles precede this one."""
    acc_a = tl.full(slot.shape, 1.0, tl.float32)   # tiles between the found predecessor and this one
    acc_b = tl.zeros(slot.shape, dtype=tl.float32)
    carry = tl.zeros(slot.shape, dtype=tl.float32)
    pending = m
    k = 1
    while _any(pending) & (k <= n_back):
        src = slot - k * step
        inc = tl.full(slot.shape, -1, tl.int32)   # -1: EMPTY, nothing published yet
        agg = tl.full(slot.shape, -1, tl.int64)
        waiting = pending
        while _any(waiting):   # spin on plain volatile loads
            inc = tl.where(waiting, _poll(incs + src, waiting), inc)
            look = waiting & (inc == -1)
            agg = tl.where(look, _poll(aggs + src, look), agg)
            waiting = look & (agg == -1)
        # Warps holding copies of one element may have polled it at different moments (one saw the inclusive
        # value, another only the aggregate): the loop ends once one copy saw a word, so read both words
        # again atomically, one read shared by all copies, before acting on them. Without this, hgrn at
        # BT=64, BD=32 with 2 warps on an H100 lost carries (benchmarks/results/2026-11-26zzb_*). With one
        # warp the polled words would do, but skipping this read made the hgrn forward slower, 0.1041 against
        # 0.1030 ms (benchmarks/results/2026-11-26zzp_h100_overhead_hgrn_{prev,exp}.jsonl).
        inc = _read(incs + src, pending)
        agg = tl.where(pending & (inc == -1), _read(aggs + src, pending & (inc == -1)), agg)
        done = pending & (inc != -1)
        partial = pending & (inc == -1)
        carry = tl.where(done, acc_a * inc.to(tl.float32, bitcast=True) + acc_b, carry)
        acc_b = tl.where(partial, acc_a * _word_lo(agg) + acc_b, acc_b)
        acc_a = tl.where(partial, acc_a * _word_hi(agg), acc_a)
        pending = partial
        k += 1
    return carry


@triton.jit
def _chain_close(incs, slot, value, m):
    """Publish this tile's inclusive value (the carry after it)."""
    tl.store(incs + slot, _inc_word(value), mask=m)
'''
