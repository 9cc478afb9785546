"""Decoupled look-back (Merrill and Garland 2016, "Single-pass Parallel Prefix Scan with Decoupled
Look-back"), as device-function text that generated modules include.

A scan over tokens is split into tiles of BT tokens that run in parallel. Each tile's effect on the
carried value is an affine map h -> A h + B (its aggregate). A tile publishes its aggregate, then walks
back along its chain of predecessors: a predecessor that has published its inclusive value (the carry
after it) ends the walk, one that has published only its aggregate is composed in and the walk goes on.
The tile then publishes its own inclusive value. Inputs are read once and every tile is independent
except for this short exchange of [BD] values, so the whole machine streams even when there are few
sequences and channels.

Tiles take their index from an atomic counter, in the order they start: a tile's predecessors have
all started, so waiting on them cannot deadlock (programs of one launch are not started in a
guaranteed order).

Each published value carries its own status: a 64-bit word holds an aggregate's two fp32 halves (A, B)
or an inclusive value (h, 0), and the all-ones word means "not yet" (two NaN halves of a pattern
arithmetic does not produce; a GPU's NaNs are 0x7fffffff). Publishing is one store and polling one
volatile load, with no fence between a value and its flag: on an H100 this took the hgrn forward from
0.142 to 0.119 ms at B=4, T=4096, C=2048 (benchmarks/results/2026-11-26zc_h100_proto_scan_look_back.jsonl).

Workspace, per launch: `aggs` and `incs` int64 [n_tiles_in_chains * state] and `counter` int64 [1], all
filled with -1 (EMPTY) in one allocation and one fill (the counter counts from -1): a zeroed counter
apart cost one more allocation and launch, about 15 us of host time per scan launch.
"""

EMPTY = -1

LOOK_BACK = '''
@triton.jit
def _tile_index(counter):
    # the order in which tiles start, not the order of program ids (the counter starts at EMPTY, -1)
    return (tl.atomic_add(counter, 1) + 1).to(tl.int32)


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
def _chain_link(aggs, incs, slot, agg_a, agg_b, step, n_back, m):
    """Publish this tile's aggregate, then return the carry into it: the inclusive value of the nearest
    predecessor that has one, mapped through the aggregates of the tiles in between. `step` is the
    slot offset from one tile of the chain to the next, `n_back` how many tiles precede this one."""
    tl.store(aggs + slot, _word(agg_a, agg_b), mask=m)
    acc_a = tl.full(agg_a.shape, 1.0, tl.float32)   # tiles between the found predecessor and this one
    acc_b = tl.zeros(agg_a.shape, dtype=tl.float32)
    carry = tl.zeros(agg_a.shape, dtype=tl.float32)
    pending = m
    k = 1
    while _any(pending) & (k <= n_back):
        src = slot - k * step
        inc = tl.full(slot.shape, -1, tl.int64)   # -1: EMPTY, nothing published yet
        agg = tl.full(slot.shape, -1, tl.int64)
        waiting = pending
        while _any(waiting):
            inc = tl.where(waiting, tl.load(incs + src, mask=waiting, other=-1, volatile=True), inc)
            look = waiting & (inc == -1)
            agg = tl.where(look, tl.load(aggs + src, mask=look, other=-1, volatile=True), agg)
            waiting = look & (agg == -1)
        done = pending & (inc != -1)
        partial = pending & (inc == -1)
        carry = tl.where(done, acc_a * _word_hi(inc) + acc_b, carry)
        acc_b = tl.where(partial, acc_a * _word_lo(agg) + acc_b, acc_b)
        acc_a = tl.where(partial, acc_a * _word_hi(agg), acc_a)
        pending = partial
        k += 1
    return carry


@triton.jit
def _chain_close(incs, slot, value, m):
    """Publish this tile's inclusive value (the carry after it)."""
    tl.store(incs + slot, _word(value, tl.zeros(value.shape, dtype=tl.float32)), mask=m)
'''
