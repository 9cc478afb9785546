"""fp32 matrix products on tensor cores for the differentiable tail of a fixed-point training call
(fixed_point.varying_steps), where the fused operands evaluate a weight product of the iterate, such as
u_in + Wu @ prev(h, shift = 1), again under autograd.

torch multiplies fp32 there on FMA units unless TF32 is allowed (cuBLAS's fp32 GEMM and its weight gradient
took 0.71 ms of an 8.5 ms training call at issue 5's shape, H100 profile 2026-11-28l, in fp32 and in bf16
alike: the evaluator takes half weights as fp32). At that shape the forward here takes 0.189 ms against
cuBLAS's 0.365 (benchmarks/tail_weight_products.py, 2026-11-29e), and an fp32 training call 8.34 ms against
8.63 (RECDSL_FP_WEIGHT_PRODUCTS=torch; profile 29d). They take the solve's reflection products' precision
(fp_reflections.precision): TF32 where torch allows it, else 3xTF32 (each operand split into a TF32 part
and a remainder, the remainders' product dropped: about fp32's accuracy). A weight of a half dtype is
exact in TF32, so its products drop its remainder's pass: two passes.

The weight gradient stays on torch (WeightProduct.backward says why).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .ints import cdiv

WIDE = 64    # output columns from which a weight product takes a launch of its own (Wa @ h, 2 columns, does not)


@triton.jit
def tf32_split(x):
    """fp32 x as (its TF32 part: the low 13 mantissa bits cut off, the remainder); fp_reflections' generated
    product kernel splits the iterate with it too."""
    high = (x.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)
    return high, x - high


@triton.jit
def gemm_fp32(a, b, b_rest, c, M, N, K, s_am, s_ak, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
              PASSES: tl.constexpr, GROUP: tl.constexpr, STAGES: tl.constexpr):
    """c [M, N] = a [M, K] @ b^T with b [N, K] row-major (K-major tiles, as tensor cores take fp32 operands);
    PASSES 1: TF32; 2: a split (b exact in TF32); 3: a split and b given as its TF32 part b and remainder
    b_rest. Row blocks go in groups of GROUP that share b's column blocks (read from L2)."""
    pid = tl.program_id(0)
    width = GROUP * tl.cdiv(N, BN)
    first = (pid // width) * GROUP
    size = min(tl.cdiv(M, BM) - first, GROUP)
    pm, pn = first + (pid % width) % size, (pid % width) // size
    om = pm * BM + tl.arange(0, BM)
    on = pn * BN + tl.arange(0, BN)
    row = om.to(tl.int64)[:, None] * s_am
    col = on.to(tl.int64)[None, :] * K
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in tl.range(0, K, BK, num_stages=STAGES):
        ok = k0 + tl.arange(0, BK)
        x = tl.load(a + row + ok[None, :] * s_ak, mask=(om < M)[:, None] & (ok < K)[None, :], other=0.0)
        w_mask = (ok < K)[:, None] & (on < N)[None, :]
        w = tl.load(b + col + ok[:, None], mask=w_mask, other=0.0)
        if PASSES == 1:
            acc = tl.dot(x, w, acc, input_precision="tf32")
        else:
            x_high, x_rest = tf32_split(x)
            if PASSES == 3:
                acc = tl.dot(x_high, tl.load(b_rest + col + ok[:, None], mask=w_mask, other=0.0), acc,
                             input_precision="tf32")
            acc = tl.dot(x_rest, w, acc, input_precision="tf32")     # the small terms first
            acc = tl.dot(x_high, w, acc, input_precision="tf32")
    tl.store(c + om.to(tl.int64)[:, None] * N + on[None, :], acc, mask=(om < M)[:, None] & (on < N)[None, :])


def passes(b_exact: bool) -> int:
    """Tensor-core passes of an fp32 product whose right operand is (b_exact) or is not exact in TF32."""
    if torch.backends.cuda.matmul.allow_tf32:
        return 1
    return 2 if b_exact else 3


def blocks() -> tuple[int, int, int, int, int]:
    """(BM, BN, BK, warps, stages) at every pass count. At the forward's shape (16384 x 1024 x 512) they take
    0.186 ms at 3xTF32, 0.132 at two passes and 0.088 at TF32 (benchmarks/tail_weight_products.py, H100
    2026-11-29g); 128 x 256 x 32 tiles, as fast, spill at three passes in Triton 3.9's sm_90 build, and
    64 x 64 tiles took 0.221 ms at 3xTF32."""
    return 128, 128, 16, 8, 4


def mm(a: torch.Tensor, b: torch.Tensor, b_exact: bool = False) -> torch.Tensor:
    """a [M, K] (any strides) @ b [K, N] in fp32 on tensor cores at passes(b_exact); fp32 [M, N]. b is a
    weight: it is laid out K-major and, for three passes, split into its TF32 part and remainder here."""
    if a.dtype != torch.float32 or b.dtype != torch.float32 or a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"gemm.mm: expected fp32 a [M, K] and b [K, N], got {a.dtype} {tuple(a.shape)} and "
                         f"{b.dtype} {tuple(b.shape)}")
    (M, K), N = a.shape, b.shape[1]
    n_passes = passes(b_exact)
    b_high = b.t().contiguous()
    b_rest = b_high
    if n_passes == 3:
        from .fp_reflections import tf32_parts
        b_high, b_rest = tf32_parts(b_high)
    BM, BN, BK, warps, stages = blocks()
    c = torch.empty((M, N), device=a.device, dtype=torch.float32)
    if c.numel() == 0:      # no program to launch
        return c
    gemm_fp32[(cdiv(M, BM) * cdiv(N, BN),)](a, b_high, b_rest, c, M, N, K, a.stride(0), a.stride(1), BM=BM, BN=BN,
                                            BK=BK, PASSES=n_passes, GROUP=8, STAGES=stages, num_warps=warps)
    return c


class WeightProduct(torch.autograd.Function):
    """y [M, N] = x [M, K] @ w [N, K]^T and its gradients: y and x's as mm(), w's on cuBLAS; `w_exact`: w holds
    values of a half dtype (exact in TF32); `half`: the inputs' half dtype, or None."""

    @staticmethod
    def forward(ctx, x, w, w_exact: bool, half):
        ctx.save_for_backward(x, w)
        ctx.w_exact, ctx.half = w_exact, half
        return mm(x, w.t(), b_exact=w_exact)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        gx = mm(g, w, b_exact=ctx.w_exact) if ctx.needs_input_grad[0] else None
        gw = None
        if ctx.needs_input_grad[1]:
            # the weight gradient contracts over every token with both operands token-strided (not K-major): a
            # Triton product took 0.49 ms, 0.44 with copies to K-major, cuBLAS's fp32 one 0.35
            # (H100, benchmarks/results/2026-11-29b_h100_weight_gradient_variants.jsonl). In fp16x3 with both
            # operands split in the kernel's tiles, the parts over the tokens added up after, it took 0.25 to
            # 0.34 ms by tiles, 0.09 of them for the columns' peaks that scale the parts (2026-12-03i), and a
            # training call (that and u's product in fp16x3 too) 6.79-6.80 against 6.84-6.85 ms (03h): not kept.
            # Half inputs: its operands in their dtype, as torch.autocast takes a linear layer's (0.10 ms with the
            # casts, relative error 2.9e-3; benchmarks/tail_weight_products.py, 29g)
            gw = g.t() @ x if ctx.half is None else (g.to(ctx.half).t() @ x.to(ctx.half)).float()
        return gx, gw, None, None


def weight_product(a, b, ra: int, rb: int, w_exact: bool, half=None):
    """recdsl.evaluate.matmul(a, b, ra, rb) where a is a weight (its batch axes broadcast) of per-token shape
    [..., K] wider than WIDE and b fp32 vectors [*batch, K]: one WeightProduct over every token. None where
    the operands are not of that kind (evaluate.matmul takes them). `w_exact`, `half`: as WeightProduct's."""
    from recdsl.evaluate import _unexpanded
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and rb == 1 and ra >= 2
            and a.dtype == torch.float32 and b.dtype == torch.float32):
        return None
    w = _unexpanded(a, ra)
    batch = w.dim() - ra
    if batch != b.dim() - 1 or any(s != 1 for s in w.shape[:batch]) or w.shape[-1] != b.shape[-1]:
        return None
    out_shape = tuple(w.shape[batch:-1])
    width = 1
    for s in out_shape:
        width *= s
    if width < WIDE:
        return None
    x = b.reshape(-1, b.shape[-1])
    y = WeightProduct.apply(x, w.reshape(width, w.shape[-1]), w_exact, half)
    return y.reshape(tuple(b.shape[:-1]) + out_shape)


def aot_jobs():
    """Ahead-of-time jobs (as chunk_launch.aot_jobs) of gemm_fp32 at each pass count."""
    from .aot import aligned_pointers
    sig = {a: "*fp32" for a in gemm_fp32.arg_names}
    sig.update({a: "i32" for a in ("M", "N", "K", "s_am", "s_ak")})
    jobs = []
    for n_passes in (1, 2, 3):
        BM, BN, BK, warps, stages = blocks()
        const = dict(BM=BM, BN=BN, BK=BK, PASSES=n_passes, GROUP=8, STAGES=stages)
        s = {**sig, **{k: "constexpr" for k in const}}
        attrs = aligned_pointers(gemm_fp32, s)
        jobs.append((f"gemm_fp32 passes={n_passes}", gemm_fp32, s, const, attrs, dict(num_warps=warps)))
    return jobs
