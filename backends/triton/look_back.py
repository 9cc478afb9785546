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
guaranteed order). Status flags are per element, written after the values with release semantics and
polled with acquire semantics; values are read past L1 (".cg"), which is not coherent across SMs.

Workspace, per launch: `flags` int32 [n_tiles_in_chains * state + 1] zeroed (the last element is the
counter), `chain_a`, `chain_b`, `chain_h` fp32 of the same slots. Flags: 0 nothing yet, 1 aggregate,
2 inclusive value.
"""

LOOK_BACK = '''
@triton.jit
def _tile_index(flags, counter_at):
    # the order in which tiles start, not the order of program ids
    return tl.atomic_add(flags + counter_at, 1)


@triton.jit
def _any(mask):
    return tl.max(tl.where(mask, 1, 0)) > 0


@triton.jit
def _chain_link(flags, chain_a, chain_b, chain_h, slot, agg_a, agg_b, step, n_back, m):
    """Publish this tile's aggregate, then return the carry into it: the inclusive value of the nearest
    predecessor that has one, mapped through the aggregates of the tiles in between. `step` is the
    slot offset from one tile of the chain to the next, `n_back` how many tiles precede this one."""
    tl.store(chain_a + slot, agg_a, mask=m)
    tl.store(chain_b + slot, agg_b, mask=m)
    tl.debug_barrier()
    tl.atomic_xchg(flags + slot, tl.full(slot.shape, 1, tl.int32), mask=m, sem="release", scope="gpu")
    acc_a = tl.full(agg_a.shape, 1.0, tl.float32)   # tiles between the found predecessor and this one
    acc_b = tl.zeros(agg_a.shape, dtype=tl.float32)
    carry = tl.zeros(agg_a.shape, dtype=tl.float32)
    pending = m
    k = 1
    while _any(pending) & (k <= n_back):
        src = slot - k * step
        status = tl.zeros(slot.shape, dtype=tl.int32)
        waiting = pending
        while _any(waiting):
            seen = tl.atomic_add(flags + src, tl.zeros(slot.shape, dtype=tl.int32), mask=waiting,
                                 sem="acquire", scope="gpu")
            status = tl.where(waiting, seen, status)
            waiting = waiting & (status == 0)
        done = pending & (status == 2)
        partial = pending & (status == 1)
        h = tl.load(chain_h + src, mask=done, other=0.0, cache_modifier=".cg")
        a = tl.load(chain_a + src, mask=partial, other=1.0, cache_modifier=".cg")
        b = tl.load(chain_b + src, mask=partial, other=0.0, cache_modifier=".cg")
        carry = tl.where(done, acc_a * h + acc_b, carry)
        acc_b = tl.where(partial, acc_a * b + acc_b, acc_b)
        acc_a = tl.where(partial, acc_a * a, acc_a)
        pending = partial
        k += 1
    return carry


@triton.jit
def _chain_close(flags, chain_h, slot, value, m):
    """Publish this tile's inclusive value (the carry after it)."""
    tl.store(chain_h + slot, value, mask=m)
    tl.debug_barrier()
    tl.atomic_xchg(flags + slot, tl.full(slot.shape, 2, tl.int32), mask=m, sem="release", scope="gpu")
'''
