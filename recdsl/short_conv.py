"""Short causal convolutions over tokens in a spec's layer (`shortconv(e, size = 4)`): each channel of a
per-token value mixed with its own last `size` values, as Mamba's conv1d and flash-linear-attention's
ShortConvolution do before the recurrence. The layer's state then carries each convolution's last
`size - 1` inputs, so that a call continuing a sequence (decoding with `step`) sees the tokens before it."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class LayerState(NamedTuple):
    """The state of a layer with short convolutions: the core's state ([N, *state], fp32) and, per
    convolution in the layer's order, its last size - 1 inputs ([N, size - 1, channels])."""
    core: torch.Tensor
    convs: tuple


def short_conv(x: torch.Tensor, weight: torch.Tensor, tail: torch.Tensor | None = None,
               cu_seqlens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """y_t = sum_i weight[c, 0, i] x_(t - size + 1 + i) per channel c, with the inputs before a sequence
    taken from `tail` (zeros without one). x [B, T, C] (B = 1 with cu_seqlens, whose N sequences are
    packed along T); weight [C, 1, size] as nn.Conv1d(C, C, size, groups=C) holds it; tail [N, size - 1, C].
    Returns y [B, T, C] and the new tail: each sequence's last size - 1 inputs, the tail before it
    included where the sequence is shorter."""
    B, T, C = x.shape
    k = weight.shape[-1]
    w = weight.to(x.dtype)
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    if tail is not None and tuple(tail.shape) != (N, k - 1, C):
        raise ValueError(f"initial_state: a convolution's last inputs must have shape [N={N}, size - 1={k - 1}, "
                         f"channels={C}], got {list(tail.shape)}")
    if cu_seqlens is None:
        before = x.new_zeros(B, k - 1, C) if tail is None else tail.to(x.dtype)
        padded = torch.cat([before, x], dim=1)
        y = F.conv1d(padded.transpose(1, 2), w, groups=C).transpose(1, 2)
        return y, padded[:, T:]
    # packed sequences: gather each token's window from [tails of all sequences; tokens]
    before = x.new_zeros(N, k - 1, C) if tail is None else tail.to(x.dtype)
    rows = torch.cat([before.reshape(N * (k - 1), C), x[0]], dim=0)
    cu = cu_seqlens.to(device=x.device, dtype=torch.long)
    t = torch.arange(T, device=x.device)
    seq = torch.searchsorted(cu[1:], t, right=True)
    windows = _window_rows(cu[seq], t - cu[seq], seq, k, N)              # [T, k]
    y = (rows[windows] * w[:, 0].t()).sum(dim=1)
    # the new tail: the first k - 1 entries of the window of a token one past each sequence's end
    n = torch.arange(N, device=x.device)
    ends = _window_rows(cu[:-1], cu[1:] - cu[:-1], n, k, N)[:, :-1]     # [N, k - 1]
    return y.unsqueeze(0), rows[ends]


def _window_rows(start: torch.Tensor, pos: torch.Tensor, seq: torch.Tensor, k: int, N: int) -> torch.Tensor:
    """Row indices into [tails (N * (k - 1) rows); tokens] of the k inputs a token at position `pos` of
    sequence `seq` (starting at token `start`) sees, oldest first: tokens of its sequence, else its tail."""
    back = torch.arange(k - 1, -1, -1, device=pos.device)                # window entry i looks back k - 1 - i
    pos, start, seq = pos[:, None], start[:, None], seq[:, None]
    in_seq = N * (k - 1) + start + pos - back
    in_tail = seq * (k - 1) + (k - 1) - (back - pos)
    return torch.where(pos >= back, in_seq, in_tail)
