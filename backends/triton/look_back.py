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

Each element of a tile has one 64-bit word, which goes through three states in a launch: stale (left
by an earlier launch, or by a fill), the tile's aggregate (A, B) as its two fp32 halves, and the
inclusive value (the carry after the tile) as the low half under a high half equal to the launch's
`mark`. Stale words have the high half `stale`. Marks and the fill's all-ones pattern are NaN bit
patterns no canonical A takes (A is made canonical before it is published), so one volatile load
tells the three states apart and a word never needs a fence beside it: publishing is one store,
polling one load (values with their own status against separate flags and fences: 0.119 against 0.142 ms
for the hgrn forward at B=4, T=4096, C=2048 on an H100, benchmarks/results/2026-11-26zc_h100_proto_scan_
look_back.jsonl).

Every tile ends its launch by publishing its inclusive value, so all words of a launch end under its
mark. The next launch on the same stream takes that mark as `stale` and publishes under the other one:
the words need no fill between launches (`Words`). A launch captured into a CUDA graph cannot flip marks
on its replays, so it takes freshly filled words instead (stale = the all-ones fill). Against the
previous form (a 64-bit aggregate and a 32-bit inclusive value per element, 12 bytes filled before every
launch) the hgrn forward kernel at that shape took 0.098 against 0.100 ms plus the fill's 0.004 ms
(benchmarks/results/2026-11-26zzx_h100_overhead_hgrn_ab.jsonl, two rounds each).
"""
from __future__ import annotations

import threading

import torch

MARKS = (0x7FF00001, 0x7FF00003)   # the high halves of inclusive words, launch after launch in turn (< 2**31)
FILL_STALE = -1                    # the high half of the all-ones fill


class Words:
    """The look-back's words per device and stream, kept between launches so that they need no fill.
    `take(n, device)` returns (words, stale, mark) for one launch over n elements (words: at least n) and
    must be called with the launch inside `lock`: launches on one stream take marks in the order they run.

    Kept words cost 8 bytes per element of a tile's state (1/BT of a token's), held until the process
    ends: a stream keeps at most `max_bytes` of them (larger launches take filled words of their own, as
    captured ones do), and at most `max_streams` streams keep words (the oldest is dropped first; a stream
    that launches again takes new, filled words)."""

    def __init__(self, max_bytes: int = 256 << 20, max_streams: int = 8):
        self.lock = threading.RLock()
        self.max_bytes, self.max_streams = max_bytes, max_streams
        self._kept: dict = {}   # (device, stream) -> [words, mark of their last launch, elements it wrote]

    def take(self, n: int, device: torch.device) -> tuple[torch.Tensor, int, int]:
        if 8 * n > self.max_bytes or (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
            return torch.full((max(n, 1),), -1, dtype=torch.int64, device=device), FILL_STALE, MARKS[0]
        key = self._key(device)
        kept = self._kept.get(key)
        if kept is None or kept[0].numel() < n:   # words grow to the largest launch and stay
            self._kept.pop(key, None)
            while len(self._kept) >= self.max_streams:
                self._kept.pop(next(iter(self._kept)))
            words = torch.empty(max(n, 1), dtype=torch.int64, device=device)
            kept = self._kept[key] = [words.fill_(MARKS[0] << 32), MARKS[0], words.numel()]
        words, last, valid = kept
        if valid < n:   # elements beyond the last launch's carry an older mark: make them stale
            words[valid:n].fill_(last << 32)
        mark = MARKS[1 - MARKS.index(last)]
        kept[1], kept[2] = mark, n   # after this launch, words [0, n) carry `mark`
        return words, last, mark     # the whole buffer: a slice would cost the host a view per launch

    def discard(self, device: torch.device) -> None:
        """Forget the stream's words after a launch that raised: it may not have run, so their marks are
        unknown (the next launch takes new, filled words)."""
        self._kept.pop(self._key(device), None)

    @staticmethod
    def _key(device: torch.device) -> tuple:
        if device.type != "cuda":
            return device.type, device.index, 0
        index = device.index if device.index is not None else torch.cuda.current_device()
        return "cuda", index, torch._C._cuda_getCurrentRawStream(index)   # as Triton's launcher reads it


LOOK_BACK = '''
@triton.jit
def _any(mask):
    return tl.max(tl.where(mask, 1, 0)) > 0


@triton.jit
def _hi(w):
    return (w >> 32).to(tl.int32)


@triton.jit
def _lo_value(w):
    return w.to(tl.int32).to(tl.float32, bitcast=True)


@triton.jit
def _agg_word(a, b):
    # (A, B) as one word, A canonical so that its bits are never a mark or the fill's
    a = tl.where(a == a, a, float("nan"))
    return (a.to(tl.int32, bitcast=True).to(tl.int64) << 32) | (b.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF)


@triton.jit
def _inc_word(value, mark):
    return (mark.to(tl.int64) << 32) | (value.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF)


@triton.jit
def _read(words, mask):
    # An atomic read (adds 0): where a layout gives one element to threads of several warps, one thread
    # reads it and shares the word with the others, so all of them act on the same value.
    return tl.atomic_add(words, 0, mask=mask, sem="relaxed")


@triton.jit
def _chain_link(words, slot, agg_a, agg_b, step, n_back, m, stale, mark):
    """Publish this tile's aggregate, then return the carry into it (_chain_carry)."""
    tl.store(words + slot, _agg_word(agg_a, agg_b), mask=m)
    return _chain_carry(words, slot, step, n_back, m, stale, mark)


@triton.jit
def _chain_carry(words, slot, step, n_back, m, stale, mark):
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
        w = tl.zeros(slot.shape, dtype=tl.int64)
        waiting = pending
        while _any(waiting):   # spin on plain volatile loads until a word is no longer stale
            w = tl.where(waiting, tl.load(words + src, mask=waiting, volatile=True), w)
            waiting = waiting & (_hi(w) == stale)
        # Warps holding copies of one element may have polled it at different moments (one saw the inclusive
        # value, another only the aggregate): the loop ends once one copy saw a word, so read it again
        # atomically, one read shared by all copies, before acting on it (a word never goes back to stale
        # within a launch). Without this, hgrn at BT=64, BD=32 with 2 warps on an H100 lost carries
        # (benchmarks/results/2026-11-26zzb_*). With one warp the polled words would do, but skipping this
        # read made the hgrn forward slower, 0.1041 against 0.1030 ms
        # (benchmarks/results/2026-11-26zzp_h100_overhead_hgrn_{prev,exp}.jsonl).
        w = _read(words + src, pending)
        done = pending & (_hi(w) == mark)
        partial = pending & (_hi(w) != mark)
        carry = tl.where(done, acc_a * _lo_value(w) + acc_b, carry)
        acc_b = tl.where(partial, acc_a * _lo_value(w) + acc_b, acc_b)
        acc_a = tl.where(partial, acc_a * _hi(w).to(tl.float32, bitcast=True), acc_a)
        pending = partial
        k += 1
    return carry


@triton.jit
def _chain_close(words, slot, value, m, mark):
    """Publish this tile's inclusive value (the carry after it)."""
    tl.store(words + slot, _inc_word(value, mark), mask=m)
'''
