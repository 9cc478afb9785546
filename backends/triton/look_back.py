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

Each published value carries its own status: a 64-bit word holds one fp32 value in its upper half and
the launch's epoch in its lower half, and counts as published only when that epoch is the reader's. An
aggregate takes two words (A and B); an inclusive value one. Publishing is one store per word and polling
one volatile load, with no fence between a value and its status: on an H100 packing value and status in
one word took the hgrn forward from 0.142 to 0.119 ms at B=4, T=4096, C=2048
(benchmarks/results/2026-11-26zc_h100_proto_scan_look_back.jsonl).

Workspace: `words` int64 [3 * n] (n = tiles in chains * state): the inclusive values (`incs`), then the
aggregates' A and B halves (`aggs_a`, `aggs_b`). Because a word of an earlier launch carries an older epoch, the words are kept per stream
from launch to launch and never refilled (`Workspaces`); a launch captured into a CUDA graph, whose
replays repeat its epoch, takes fresh zeroed words instead. Epochs start at 1; zero-filled words and the
-1 of a masked poll are never current.
"""
from __future__ import annotations

import threading

import torch

LOOK_BACK = '''
@triton.jit
def _any(mask):
    return tl.max(tl.where(mask, 1, 0)) > 0


@triton.jit
def _word(value, epoch):
    # an fp32 value and the launch's epoch as one 64-bit word, published (and read) at once
    return (value.to(tl.int32, bitcast=True).to(tl.int64) << 32) | (epoch.to(tl.int64) & 0xFFFFFFFF)


@triton.jit
def _value(w):
    return (w >> 32).to(tl.int32).to(tl.float32, bitcast=True)


@triton.jit
def _current(w, epoch):
    return w.to(tl.int32) == epoch


@triton.jit
def _poll(words, mask):
    return tl.load(words, mask=mask, other=-1, volatile=True)


@triton.jit
def _read(words, mask):
    # An atomic read (adds 0): where a layout gives one element to threads of several warps, one thread
    # reads it and shares the word with the others, so all of them act on the same value.
    return tl.where(mask, tl.atomic_add(words, 0, mask=mask, sem="relaxed"), -1)


@triton.jit
def _chain_link(incs, aggs_a, aggs_b, epoch, slot, agg_a, agg_b, step, n_back, m):
    """Publish this tile's aggregate (its halves in aggs_a, aggs_b), then return the carry into it: the
    inclusive value of the nearest predecessor that has one (incs), mapped through the aggregates of the
    tiles in between. `step` is the slot offset from one tile of the chain to the next, `n_back` how many
    tiles precede this one."""
    tl.store(aggs_a + slot, _word(agg_a, epoch), mask=m)
    tl.store(aggs_b + slot, _word(agg_b, epoch), mask=m)
    acc_a = tl.full(agg_a.shape, 1.0, tl.float32)   # tiles between the found predecessor and this one
    acc_b = tl.zeros(agg_a.shape, dtype=tl.float32)
    carry = tl.zeros(agg_a.shape, dtype=tl.float32)
    pending = m
    k = 1
    while _any(pending) & (k <= n_back):
        src = slot - k * step
        inc = tl.zeros(slot.shape, dtype=tl.int64)   # epoch 0: nothing published yet
        wa = tl.zeros(slot.shape, dtype=tl.int64)
        wb = tl.zeros(slot.shape, dtype=tl.int64)
        waiting = pending
        while _any(waiting):   # spin on plain volatile loads
            inc = tl.where(waiting, _poll(incs + src, waiting), inc)
            look = waiting & ~_current(inc, epoch)
            wa = tl.where(look, _poll(aggs_a + src, look), wa)
            wb = tl.where(look, _poll(aggs_b + src, look), wb)
            waiting = look & ~(_current(wa, epoch) & _current(wb, epoch))
        # Warps holding copies of one element may have polled it at different moments (one saw the inclusive
        # value, another only the aggregate): the loop ends once one copy saw a word, so read the words
        # again atomically, one read shared by all copies, before acting on them. Without this, hgrn at
        # BT=64, BD=32 with 2 warps on an H100 lost carries (benchmarks/results/2026-11-26zzb_*).
        inc = _read(incs + src, pending)
        done = pending & _current(inc, epoch)
        partial = pending & ~done
        wa = tl.where(partial, _read(aggs_a + src, partial), wa)
        wb = tl.where(partial, _read(aggs_b + src, partial), wb)
        carry = tl.where(done, acc_a * _value(inc) + acc_b, carry)
        acc_b = tl.where(partial, acc_a * _value(wb) + acc_b, acc_b)
        acc_a = tl.where(partial, acc_a * _value(wa), acc_a)
        pending = partial
        k += 1
    return carry


@triton.jit
def _chain_close(incs, epoch, slot, value, m):
    """Publish this tile's inclusive value (the carry after it)."""
    tl.store(incs + slot, _word(value, epoch), mask=m)
'''


class Workspaces:
    """The look-back's words per (device, stream), kept from launch to launch with the epoch of the last
    one: a launch takes the next epoch and needs no fill. Launches on one stream run in order, so each
    finds only older epochs in the words; other streams get words of their own. Under CUDA graph capture
    a launch takes fresh zeroed words (its replays repeat its epoch). The words grow to the largest call
    (24 bytes per tile and state element) and are held until `release()`."""

    def __init__(self):
        self._kept: dict = {}
        self._lock = threading.Lock()

    def take(self, n: int, device: torch.device) -> tuple[torch.Tensor, int]:
        """(words, epoch) for one launch over n slots; words holds at least 3 n."""
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return torch.zeros(3 * n, dtype=torch.int64, device=device), 1
        stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else None
        key = (str(device), stream)
        with self._lock:
            words, epoch = self._kept.get(key, (None, 0))
            if words is None or words.numel() < 3 * n or epoch >= 2**31 - 1:
                words, epoch = torch.zeros(3 * n, dtype=torch.int64, device=device), 0
            self._kept[key] = (words, epoch + 1)
        return words, epoch + 1

    def release(self) -> None:
        with self._lock:
            self._kept.clear()
