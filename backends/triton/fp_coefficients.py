"""The coefficients of a product of Householder reflections (fp_fused.py): Q v = v - sum_i (W d)_i u_i with
d = U v, for Q = H_(r-1) ... H_0, H_i = I - s_i u_i u_i^T. W [..., r, r] follows from the strengths s and the
Gram products u_i . u_j by a short recursion, with autograd (coefficients) or from Gram products a kernel
gave (coefficients_from_gram, fp_shifted.py)."""
from __future__ import annotations

import torch


def coefficients(u: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """W [..., r, r] with Q v = v - sum_i (W d)_i u_i, d = U v, for Q = H_(r-1) ... H_0, H_i = I - s_i u_i u_i^T
    (reflection 0 acts first): c_i = s_i (d_i - sum_(j<i) (u_i . u_j) c_j). One autograd node with its
    own backward: composed from torch ops it put about a dozen nodes (selects, products, a stack) into
    every training call's backward, each a launch or more of host time (H100 profile, B*T = 16384)."""
    return _Coefficients.apply(u, s)


class _Coefficients(torch.autograd.Function):
    """W_i = s_i p_i with p_i = e_i - sum_(j<i) G_ij W_j, G_ij = u_i . u_j (only the strict lower triangle
    of the Gram matrix, pair by pair: a batched [r, D] @ [D, r] product through cuBLAS and its backward
    took 0.72 ms of a training call's 4.6 ms of kernels on an H100 at B*T = 16384, r = 2)."""

    @staticmethod
    def forward(ctx, u, s):
        r = u.shape[-2]
        vectors = u.unbind(-2)
        gram = {(i, j): torch.linalg.vecdot(vectors[i], vectors[j]) for i in range(r) for j in range(i)}
        pre, rows = _recursion(gram, s)
        ctx.save_for_backward(u, s, torch.stack(pre, -2), torch.stack(rows, -2),
                              *(gram[i, j] for i in range(r) for j in range(i)))
        return torch.stack(rows, -2)

    @staticmethod
    def backward(ctx, dw):
        u, s, pre, rows, *pairs = ctx.saved_tensors
        r = u.shape[-2]
        gram = dict(zip([(i, j) for i in range(r) for j in range(i)], pairs))
        d_rows = list(dw.unbind(-2))
        ds, d_gram = [None] * r, {}
        for i in reversed(range(r)):         # the recursion backwards: row i feeds the rows after it
            ds[i] = (d_rows[i] * pre[..., i, :]).sum(-1)
            d_pre = s[..., i, None] * d_rows[i]
            for j in range(i):
                d_gram[i, j] = -(d_pre * rows[..., j, :]).sum(-1)
                d_rows[j] = d_rows[j] - gram[i, j][..., None] * d_pre
        vectors = u.unbind(-2)
        du = []
        for i in range(r):                   # d(u_i . u_j) / du_i = u_j, and the other way round
            terms = [d_gram[max(i, j), min(i, j)][..., None] * vectors[j] for j in range(r) if j != i]
            du.append(sum(terms[1:], terms[0]) if terms else torch.zeros_like(vectors[i]))
        return torch.stack(du, -2), torch.stack(ds, -1)


def _recursion(gram: dict, s: torch.Tensor) -> tuple[list, list]:
    """The rows p_i and W_i = s_i p_i of coefficients() from the Gram products gram[i, j] = u_i . u_j (j < i)
    and the strengths s [..., r]."""
    r = s.shape[-1]
    eye = torch.eye(r, dtype=s.dtype, device=s.device)
    pre, rows = [], []
    for i in range(r):
        p = eye[i].expand(s.shape[:-1] + (r,))
        for j in range(i):
            p = p - gram[i, j][..., None] * rows[j]
        pre.append(p)
        rows.append(s[..., i, None] * p)
    return pre, rows


def coefficients_from_gram(gram: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """coefficients() without autograd from the Gram products gram [..., RP, RP] (fp_fused_dots's) and s."""
    r = s.shape[-1]
    return torch.stack(_recursion({(i, j): gram[..., i, j] for i in range(r) for j in range(i)}, s)[1], -2)
