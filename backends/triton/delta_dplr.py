"""Householder products whose gate the chunked WY kernels do not take (a per-key gate, or a scalar one not
written exp(g)), trained through the diagonal-plus-low-rank recurrence of dplr.py (forward and backward).

A gate a applied before a reflection is one DPLR step: with S [K, V] and the delta write,

    S <- (I - beta k k^T) diag(a) S + beta k v^T  =  (diag(a) + (-beta k) (a * k)^T) S + (beta k) v^T,

so dplr.py's S <- (diag(d) + b a'^T) S + k' v^T runs it with d = a, b = -beta k, a' = a * k, k' = beta k.
DeltaProduct's n_h reflections per token are n_h such steps (the gate on the first, d = 1 on the others),
laid out as a sequence n_h times as long; the query reads the last step. The factors are formed with torch,
so autograd carries dplr.py's gradients back to q, k, v, beta and the gate.
"""
from __future__ import annotations

from typing import Optional

import torch

from .dplr import dplr_recurrence


def _steps(x: torch.Tensor) -> torch.Tensor:
    """[B, T, H, n_h, ..] -> [B, T * n_h, H, ..]: step t * n_h + j is token t's reflection j."""
    B, T, H, NH = x.shape[:4]
    return x.transpose(2, 3).reshape(B, T * NH, H, *x.shape[4:])


def delta_as_dplr(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, gate: torch.Tensor,
                  log_gate: bool, scale: float, h0: Optional[torch.Tensor], output_final_state: bool,
                  cu_seqlens: Optional[torch.Tensor]):
    """q [B,T,H,K]; k [B,T,H,NH,K], v [B,T,H,NH,V], beta [B,T,H,NH]; gate [B,T,H,K] (fp32, a scalar gate
    broadcast over the keys): the log of the factors when log_gate, else the factors. Returns (o [B,T,H,V],
    final state fp32 [N,H,K,V] or None), differentiable."""
    B, T, H, NH, K = k.shape
    dt = k.dtype
    d = gate.exp() if log_gate else gate
    kf, bf = k.float(), beta.float().unsqueeze(-1)
    # the gate and its factor on the first step of each token, 1 (log: 0) on the others
    first = torch.zeros(NH, device=k.device, dtype=torch.bool)
    first[0] = True
    first = first[:, None]
    w = torch.where(first, gate.unsqueeze(3), 0.0 if log_gate else 1.0)
    a = torch.where(first, d.unsqueeze(3), 1.0) * kf
    r = torch.where(first.flip(0), q.unsqueeze(3).float(), 0.0)    # the query on each token's last step
    steps = [_steps(x) for x in (r, w, bf * kf, v, a, -bf * kf)]
    r, w, kw, vv, a, b = (x if i == 1 else x.to(dt) for i, x in enumerate(steps))
    cu = None if cu_seqlens is None else cu_seqlens * NH
    o, final = dplr_recurrence(r, w, kw, vv, a, b, scale, h0, output_final_state, cu,
                               "exp" if log_gate else "plain")
    return o.view(B, T, NH, H, -1)[:, :, -1], final
