"""Row-wise l2 normalisation, y = x / max(||x||, eps) over the last axis (torch.nn.functional.normalize),
as one Triton pass each way in the input's dtype, for inputs a spec declares `l2norm` (q and k together:
two tensors of one width share a launch).

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
def _fwd_rows(x, y, r, R, i_b, D: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr, EPS: tl.constexpr):
    """BR rows (block i_b) of x [R, D]: y = x * r with r = 1 / max(||x||, EPS) kept per row (fp32)."""
    rows = i_b * BR + tl.arange(0, BR)
    cols = tl.arange(0, BD)
    m = (rows < R)[:, None] & (cols < D)[None, :]
    off = rows.to(tl.int64)[:, None] * D + cols[None, :]
    b_x = tl.load(x + off, mask=m, other=0.0).to(tl.float32)
    b_r = 1.0 / tl.maximum(tl.sqrt(tl.sum(b_x * b_x, axis=1)), EPS)
    tl.store(y + off, (b_x * b_r[:, None]).to(y.dtype.element_ty), mask=m)
    tl.store(r + rows, b_r, mask=rows < R)


@triton.jit
def l2norm_fwd(x, y, r, R, x2, y2, r2, R2, D: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr,
               EPS: tl.constexpr):
    """Program: BR rows of x [R, D], or, past x's cdiv(R, BR) programs, of x2 [R2, D] (two tensors of one
    width in one launch; a single tensor passes R2 = 0)."""
    i_b = tl.program_id(0)
    n1 = tl.cdiv(R, BR)
    if i_b < n1:
        _fwd_rows(x, y, r, R, i_b, D, BR, BD, EPS)
    else:
        _fwd_rows(x2, y2, r2, R2, i_b - n1, D, BR, BD, EPS)


@triton.jit
def _bwd_rows(x, r, dy, dx, R, i_b, D: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr, EPS: tl.constexpr):
    """dx = r (dy - y (y . dy)) where the norm exceeds EPS, else r dy (x / EPS is linear)."""
    rows = i_b * BR + tl.arange(0, BR)
    cols = tl.arange(0, BD)
    m = (rows < R)[:, None] & (cols < D)[None, :]
    off = rows.to(tl.int64)[:, None] * D + cols[None, :]
    b_r = tl.load(r + rows, mask=rows < R, other=0.0)
    b_y = tl.load(x + off, mask=m, other=0.0).to(tl.float32) * b_r[:, None]
    b_dy = tl.load(dy + off, mask=m, other=0.0).to(tl.float32)
    b_proj = tl.where(b_r < 1.0 / EPS, tl.sum(b_y * b_dy, axis=1), 0.0)
    tl.store(dx + off, (b_r[:, None] * (b_dy - b_y * b_proj[:, None])).to(dx.dtype.element_ty), mask=m)


@triton.jit
def l2norm_bwd(x, r, dy, dx, R, x2, r2, dy2, dx2, R2, D: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr,
               EPS: tl.constexpr):
    """Program: BR rows of x's gradient, or past x's programs of x2's (as l2norm_fwd)."""
    i_b = tl.program_id(0)
    n1 = tl.cdiv(R, BR)
    if i_b < n1:
        _bwd_rows(x, r, dy, dx, R, i_b, D, BR, BD, EPS)
    else:
        _bwd_rows(x2, r2, dy2, dx2, R2, i_b - n1, D, BR, BD, EPS)


def _blocks(D: int):
    BD = max(16, next_power_of_2(D))
    return max(1, min(64, 4096 // BD)), BD


class L2Norm(torch.autograd.Function):
    """One or two tensors of one width and dtype, normalised in one launch each way."""

    @staticmethod
    def forward(ctx, *xs):
        D = xs[0].shape[-1]
        flat = [x.contiguous().view(-1, D) for x in xs]
        ys = [torch.empty_like(x) for x in flat]
        rs = [torch.empty(x.shape[0], dtype=torch.float32, device=x.device) for x in flat]
        BR, BD = _blocks(D)
        grid = sum(cdiv(x.shape[0], BR) for x in flat)
        if grid:
            pair = list(zip(flat, ys, rs, (x.shape[0] for x in flat)))
            second = pair[1] if len(pair) > 1 else (*pair[0][:3], 0)
            l2norm_fwd[(grid,)](*pair[0], *second, D=D, BR=BR, BD=BD, EPS=EPS)
        ctx.save_for_backward(*flat, *rs)
        ctx.shapes = [x.shape for x in xs]
        return tuple(y.view(x.shape) for y, x in zip(ys, xs))

    @staticmethod
    def backward(ctx, *dys):
        n = len(ctx.shapes)
        flat, rs = ctx.saved_tensors[:n], ctx.saved_tensors[n:]
        D = flat[0].shape[1]
        dyf = [dy.contiguous().view(-1, D) for dy in dys]
        dxs = [torch.empty_like(x) for x in flat]
        BR, BD = _blocks(D)
        grid = sum(cdiv(x.shape[0], BR) for x in flat)
        if grid:
            pair = list(zip(flat, rs, dyf, dxs, (x.shape[0] for x in flat)))
            second = pair[1] if len(pair) > 1 else (*pair[0][:4], 0)
            l2norm_bwd[(grid,)](*pair[0], *second, D=D, BR=BR, BD=BD, EPS=EPS)
        return tuple(dx.view(s) for dx, s in zip(dxs, ctx.shapes))


def l2norm(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """x / max(||x||, 1e-12) over the last axis for one or two tensors of one width and dtype (both in one
    launch), each in its dtype (fp32 arithmetic), differentiable. Under torch.compile the torch expression
    is traced instead (Inductor fuses it)."""
    if not 1 <= len(xs) <= 2 or any(x.shape[-1] != xs[0].shape[-1] or x.dtype != xs[0].dtype for x in xs):
        raise ValueError(f"l2norm takes one or two tensors of one width and dtype, got "
                         f"{[(tuple(x.shape), x.dtype) for x in xs]}")
    if torch.compiler.is_compiling():
        return tuple(torch.nn.functional.normalize(x.float(), dim=-1, eps=EPS).to(x.dtype) for x in xs)
    return L2Norm.apply(*xs)
