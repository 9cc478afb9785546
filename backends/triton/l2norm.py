"""Row-wise l2 normalisation, y = x / max(||x||, eps) over the last axis (torch.nn.functional.normalize),
as one Triton pass each way in the input's dtype, for inputs a spec declares `l2norm`.

The kernels of the matrix-state families take q and k in the input dtype; normalising them with torch
costs an fp32 copy, a norm, a division and a cast each way (at B=4, T=4096, H=16, K=128 on an H100
several times the delta rule's own kernels). Here each row is read once and written once; the
backward recomputes y from x in fp32 and reads the saved 1 / max(||x||, eps).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from .ints import cdiv, next_power_of_2

EPS = 1e-12   # torch.nn.functional.normalize's default, as the reference uses


@triton.jit
def l2norm_fwd(x, y, r, R, D: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr, EPS: tl.constexpr):
    """Program: BR rows of x [R, D]; y = x * r with r = 1 / max(||x||, EPS) kept per row (fp32)."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = tl.arange(0, BD)
    m = (rows < R)[:, None] & (cols < D)[None, :]
    off = rows.to(tl.int64)[:, None] * D + cols[None, :]
    b_x = tl.load(x + off, mask=m, other=0.0).to(tl.float32)
    b_r = 1.0 / tl.maximum(tl.sqrt(tl.sum(b_x * b_x, axis=1)), EPS)
    tl.store(y + off, (b_x * b_r[:, None]).to(y.dtype.element_ty), mask=m)
    tl.store(r + rows, b_r, mask=rows < R)


@triton.jit
def l2norm_bwd(x, r, dy, dx, R, D: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr, EPS: tl.constexpr):
    """dx = r (dy - y (y . dy)) where the norm exceeds EPS, else r dy (x / EPS is linear)."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = tl.arange(0, BD)
    m = (rows < R)[:, None] & (cols < D)[None, :]
    off = rows.to(tl.int64)[:, None] * D + cols[None, :]
    b_r = tl.load(r + rows, mask=rows < R, other=0.0)
    b_y = tl.load(x + off, mask=m, other=0.0).to(tl.float32) * b_r[:, None]
    b_dy = tl.load(dy + off, mask=m, other=0.0).to(tl.float32)
    b_proj = tl.where(b_r < 1.0 / EPS, tl.sum(b_y * b_dy, axis=1), 0.0)
    tl.store(dx + off, (b_r[:, None] * (b_dy - b_y * b_proj[:, None])).to(dx.dtype.element_ty), mask=m)


def _grid(R: int, D: int):
    BD = max(16, next_power_of_2(D))
    BR = max(1, min(64, 4096 // BD))
    return BR, BD, (cdiv(R, BR),)


class L2Norm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        D = x.shape[-1]
        xf = x.contiguous().view(-1, D)
        R = xf.shape[0]
        y = torch.empty_like(xf)
        r = torch.empty(R, dtype=torch.float32, device=x.device)
        BR, BD, grid = _grid(R, D)
        if R:
            l2norm_fwd[grid](xf, y, r, R, D=D, BR=BR, BD=BD, EPS=EPS)
        ctx.save_for_backward(xf, r)
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        xf, r = ctx.saved_tensors
        R, D = xf.shape
        dyf = dy.contiguous().view(-1, D)
        dx = torch.empty_like(xf)
        BR, BD, grid = _grid(R, D)
        if R:
            l2norm_bwd[grid](xf, r, dyf, dx, R, D=D, BR=BR, BD=BD, EPS=EPS)
        return dx.view(dy.shape)


def l2norm(x: torch.Tensor) -> torch.Tensor:
    """x / max(||x||, 1e-12) over the last axis, in x's dtype (fp32 arithmetic), differentiable. Under
    torch.compile the torch expression is traced instead (Inductor fuses it)."""
    if torch.compiler.is_compiling():
        return torch.nn.functional.normalize(x.float(), dim=-1, eps=EPS).to(x.dtype)
    return L2Norm.apply(x)
