"""The weight products of the iterate in a shifted fixed-point spec, each one addmm per launch with its
iterate-free addend folded in (fp_shifted.py evaluates the varying operands before each launch).

The authors' dependence (benchmarks/specs/fp_rnn_mixer_hdep.rec)

    u = l2norm(u_in + Wu @ h_last),   alpha = sigmoid(alpha_in + Wa @ h_last),   h_last = prev(h, shift = 1)

evaluated node by node is a GEMM per weight and an add per addend, each over every token: the add of u_in
took about 1.8 ms of a 17-iteration solve at issue 5's shape (H100 profile 2026-11-27o). Here the weight
[*out, D] becomes one [D, out] matrix and the addend one [NTOK, out] bias, both once per solve, and each
launch takes torch.addmm. (A first version took all products of one iterate value in one GEMM; its
results were column slices of one matrix, which torch's element-wise kernels read on their slower strided
path.)

Half-precision weights multiply the fp32 iterate split into three parts of their dtype, with fp32
accumulation and an fp32 result (tensor cores; _addmm); fp32 inputs follow torch's float32 matmul precision
(torch.backends.cuda.matmul.allow_tf32).

A narrow product of prev(h, shift = 1) itself (fewer than NARROW outputs: alpha's, r of them) is one Triton
launch, `narrow_product`: it reads the iterate one token back in place (a sequence's first token reads h0)
and the fp32 iterate in fp32. As an addmm into a buffer one row longer, with each sequence's first token
gathered and written after, it was a 32 x 32 cuBLAS tile kernel of 25 us and three small launches per
iteration at issue 5's shape (H100 profile 2026-11-27zl).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from recdsl.ir import IR

from .fp_fused import token_sequences
from .ints import cdiv, env_ints, next_power_of_2

HALF = (torch.float16, torch.bfloat16)
NARROW = 64    # products with fewer outputs multiply in fp32 whatever the inputs' dtype


@dataclass(frozen=True)
class Product:
    """W @ v for a weight node and a value v that reads the iterate; its result is the value of node
    `result`: the product itself, or the add that took the iterate-free `addend` in."""
    matmul: int
    weight: int
    vector: int
    addend: int | None
    result: int
    width: int


def products(ir: IR, value, B: int, T: int) -> tuple[Product, ...]:
    """The weight products of values [D] that read the iterate. An add whose other operand is iterate-free,
    has the sum's shape and is a value per token ([B, T, 1, *shape] by `value(node)`, an Evaluator; None:
    no addend is taken) is folded in."""
    roots = {i for _, i in ir.roots}
    found = []
    for m in ir.order():
        if ir.node(m).op != "matmul":
            continue
        w, v = ir.operands(m)
        if ir.node(w).op != "weight" or not ir.reads(v, "prev") or len(ir.node(v).shape) != 1:
            continue
        addend, result = None, m
        users = list(ir.graph.successors(m))
        if len(users) == 1 and m not in roots and ir.node(users[0]).op == "add":
            other = [o for o in ir.operands(users[0]) if o != m]
            if (len(other) == 1 and not ir.reads(other[0], "prev")
                    and ir.node(other[0]).shape == ir.node(m).shape == ir.node(users[0]).shape
                    and value is not None and isinstance(value(other[0]), torch.Tensor)
                    and tuple(value(other[0]).shape) == (B, T, 1) + ir.node(m).shape):
                addend, result = other[0], users[0]
        found.append(Product(m, w, v, addend, result, math.prod(ir.node(m).shape)))
    return tuple(found)


@triton.jit
def token_boundaries(seq, p, m_t):
    """For tokens p (m_t: real ones) of seq [NTOK] int32, each token's sequence: (that sequence, whether the
    previous token belongs to it, whether the token is its sequence's first)."""
    s_t = tl.load(seq + p, mask=m_t, other=-1)
    s_b = tl.load(seq + p - 1, mask=m_t & (p > 0), other=-1)
    return s_t, m_t & (s_t == s_b), m_t & (s_t != s_b)


@triton.jit
def shifted_rows(it, h0, s_t, inner, first, p, o_k, m_k, D: tl.constexpr, USE_H0: tl.constexpr):
    """prev(it, shift = 1) at tokens p and columns o_k (token_boundaries' s_t, inner, first), read in place: row
    p - 1 of it [NTOK, D] where the previous token is in the same sequence, else the sequence's row of h0 [N, D]
    (zeros without)."""
    a = tl.load(it + (p - 1).to(tl.int64)[:, None] * D + o_k[None, :], mask=inner[:, None] & m_k[None, :],
                other=0.0)
    if USE_H0:
        a += tl.load(h0 + s_t.to(tl.int64)[:, None] * D + o_k[None, :], mask=first[:, None] & m_k[None, :],
                     other=0.0)
    return a


@triton.jit
def narrow_product(it, h0, seq, bias, w, y, NTOK, D: tl.constexpr, OUT: tl.constexpr, OP: tl.constexpr,
                   BT: tl.constexpr, BD: tl.constexpr, USE_H0: tl.constexpr, HAS_BIAS: tl.constexpr):
    """y [NTOK, OUT] = bias + prev(it, shift = 1) @ w for BT tokens: it [NTOK, D] fp32 read one row back (a
    sequence's first token reads h0 [N, D], or zeros; seq [NTOK] int32 is each token's sequence), w [D, OUT]
    fp32, bias [NTOK, OUT] fp32; products in fp32 (FMA)."""
    p = tl.program_id(0) * BT + tl.arange(0, BT)
    m_t = p < NTOK
    s_t, inner, first = token_boundaries(seq, p, m_t)
    o_o = tl.arange(0, OP)
    m_o = o_o < OUT
    acc = tl.zeros([BT, OP], dtype=tl.float32)
    for k0 in range(0, D, BD):
        o_k = k0 + tl.arange(0, BD)
        m_k = o_k < D
        a = shifted_rows(it, h0, s_t, inner, first, p, o_k, m_k, D, USE_H0)
        b = tl.load(w + o_k[:, None] * OUT + o_o[None, :], mask=m_k[:, None] & m_o[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision="ieee")
    off = p.to(tl.int64)[:, None] * OUT + o_o[None, :]
    m = m_t[:, None] & m_o[None, :]
    if HAS_BIAS:
        acc += tl.load(bias + off, mask=m, other=0.0)
    tl.store(y + off, acc, mask=m)


def narrow_blocks(D: int) -> tuple[int, int, int]:
    """(BT, BD, num_warps) of narrow_product: 64 tokens, 64 channels at a time, 4 warps (19.5 us a launch at issue
    5's shape on an H100, 2026-11-27zn); RECDSL_FP_NARROW_BLOCKS="BT,BD,warps" overrides it for a sweep."""
    return env_ints("RECDSL_FP_NARROW_BLOCKS", "BT,BD,warps") or (64, min(64, max(16, next_power_of_2(D))), 4)


class IterateProducts:
    """The weights [D, out] and biases [NTOK, out] of a spec's products for one solve; fill(ev) puts their
    sums into the evaluator's memo. `value(node)` evaluates the weights and the addends (an Evaluator);
    `dtype` is the inputs' dtype; h0 [N, D] (or None) and cu (or None) are the solve's; `found` the spec's
    products where the caller has them (products()); `taken` the indices of those a kernel computes
    (fp_reflections.py): fill leaves them out, and their shifted biases are not made."""

    def __init__(self, ir: IR, value, B: int, T: int, dtype: torch.dtype, h0=None, cu=None, found=None,
                 taken=()):
        self.ir, self.B, self.T, self.taken = ir, B, T, tuple(taken)
        self.products = products(ir, value, B, T) if found is None else found
        self.mats, self.biases, self.later, self.narrow = [], [], [], []
        for k, p in enumerate(self.products):
            W = value(p.weight).reshape(p.width, ir.node(p.vector).shape[0])
            # a narrow product (alpha's, r outputs) reads the fp32 iterate as it is: it is bound by that read,
            # and a half copy of the iterate for it cost 0.56 ms of a bf16 solve at issue 5's shape
            half = dtype in HALF and p.width >= NARROW
            # no addend: a zero broadcast (addmm's epilogue then reads nothing)
            bias = (W.new_zeros(()).expand(B * T, p.width) if p.addend is None
                    else value(p.addend).reshape(B * T, p.width))
            last = _reads_last_token(ir, p) and k not in self.taken
            # of prev(h, shift = 1) itself: narrow ones in narrow_product, the others through addmm, for which
            # row n of `later` holds the bias of token n + 1 (_of_last_token)
            self.narrow.append(last and p.width < NARROW)
            if self.narrow[-1]:
                self.mats.append(W.t().float().contiguous())
                bias = bias if p.addend is None else bias.float().contiguous()
            else:
                self.mats.append(W.t().to(dtype if half else torch.float32))
            self.biases.append(bias)
            self.later.append(torch.cat([bias[1:], bias[:1]]) if last and not self.narrow[-1] else None)
        self.firsts = self.h0_first = self.seq = None
        self.h0 = None if h0 is None else h0.float().contiguous()
        if any(b is not None for b in self.later):   # each sequence's first token (non-empty ones) and state
            if cu is None:
                self.firsts, self.h0_first = torch.arange(B, device=W.device) * T, h0
            else:
                real = cu[1:] > cu[:-1]
                self.firsts, self.h0_first = cu[:-1][real].long(), None if h0 is None else h0[real]
        if any(self.narrow):     # each token's sequence, for narrow_product
            self.seq = token_sequences(B, T, cu, W.device)

    def fill(self, ev, iterate=None, zero_iterate: bool = False) -> None:
        """The sums from the iterate ev reads (`iterate` [B, T, 1, D]: the same, unshifted); with
        `zero_iterate` (the solve's start, h^0 = 0 and no initial state) the products are zero and the sums
        are the biases, with no product taken. The products a kernel takes are left out, except at the
        solve's start."""
        for k, (p, W, bias, later) in enumerate(zip(self.products, self.mats, self.biases, self.later)):
            if k in self.taken and not zero_iterate:
                continue
            if zero_iterate:
                out = bias
            elif self.narrow[k] and iterate is not None:
                out = self._narrow(iterate, W, bias, p.addend is not None)
            elif later is not None and iterate is not None:
                out = self._of_last_token(iterate, W, bias, later)
            else:
                out = _addmm(bias, ev(p.vector).reshape(self.B * self.T, -1), W)
            ev.memo[p.result] = out.view((self.B, self.T, 1) + self.ir.node(p.result).shape)

    def _narrow(self, iterate, W, bias, has_bias: bool):
        """bias + W @ prev(h, shift = 1) for a narrow W [D, out] (fp32) in one narrow_product launch."""
        N, (D, out) = self.B * self.T, W.shape
        y = iterate.new_empty(N, out, dtype=torch.float32)
        if N:
            BT, BD, warps = narrow_blocks(D)
            narrow_product[(cdiv(N, BT),)](iterate.reshape(N, D).contiguous(), self.h0, self.seq,
                                           bias if has_bias else y, W, y, N, D=D, OUT=out,
                                           OP=max(16, next_power_of_2(out)), BT=BT, BD=BD,
                                           USE_H0=self.h0 is not None, HAS_BIAS=has_bias, num_warps=warps)
        return y

    def _of_last_token(self, iterate, W, bias, later):
        """bias + W @ prev(h, shift = 1) without shifting the iterate (a copy of it per launch, 0.98 ms of
        a 17-iteration solve at issue 5's shape): token n's product lands in row n + 1 of a buffer one row
        longer, whose first NTOK rows are then the shifted sums, except at each sequence's first token,
        which reads h0 (or zeros) and is written after."""
        N = self.B * self.T
        if N == 0:
            return bias
        buf = bias.new_empty(N + 1, bias.shape[1])
        _addmm(later, iterate.reshape(N, -1), W, out=buf[1:])
        out = buf[:N]
        start = bias[self.firsts]
        if self.h0_first is not None:
            start = _addmm(start, self.h0_first, W)
        out[self.firsts] = start
        return out


def _reads_last_token(ir: IR, p: Product) -> bool:
    """Whether p multiplies prev(h, shift = 1) itself, the previous token's iterate."""
    n = ir.node(p.vector)
    return n.op == "prev" and len(n.args) > 1


def _addmm(bias: torch.Tensor, a: torch.Tensor, w: torch.Tensor, out=None) -> torch.Tensor:
    """bias + a @ w in fp32 (bias fp32, a the fp32 iterate, w fp32 or a half weight), into `out` when given.
    The iterate is never rounded: on CUDA a half weight multiplies three half parts of it on tensor cores, which
    hold all of its bits, as fp_reflections.parts does (rounded once, the map from the iterate to its products
    was a step function, on which a bf16 solve stalled short of tol, H100 2026-11-27zk); elsewhere w is taken
    to fp32."""
    a = a.float()
    if w.dtype not in HALF:
        return torch.addmm(bias, a, w, out=out)
    if not _mixed_addmm(a.device.type, w.dtype):
        return torch.addmm(bias, a, w.float(), out=out)
    high = a.to(w.dtype)
    rest = a - high.float()
    mid = rest.to(w.dtype)
    low = (rest - mid.float()).to(w.dtype)
    total = torch.addmm(bias, low, w, out_dtype=torch.float32)      # the small parts first
    total = torch.addmm(total, mid, w, out_dtype=torch.float32)
    return torch.addmm(total, high, w, out_dtype=torch.float32, out=out)


@functools.lru_cache(maxsize=None)
def _mixed_addmm(device: str, dtype: torch.dtype) -> bool:
    """Whether torch.addmm takes half operands with out_dtype=float32 (and out=) here (CUDA, torch >= 2.8).
    Probed on the first launch, which runs eagerly before any graph capture (fp_graph.py)."""
    if device != "cuda":
        return False
    try:
        x = torch.ones(16, 16, device=device, dtype=dtype)
        out = torch.empty(17, 16, device=device)
        torch.addmm(torch.zeros(16, 16, device=device), x, x, out_dtype=torch.float32, out=out[1:])
        return bool((out[1:] == 16).all())
    except (TypeError, RuntimeError):
        return False


def aot_jobs(D: int = 512, out: int = 2):
    """Ahead-of-time jobs (as chunk_launch.aot_jobs) of narrow_product at width D with `out` outputs, with and
    without an initial state and an addend."""
    from .aot import aligned_pointers
    BT, BD, warps = narrow_blocks(D)
    sig = {a: "*fp32" for a in narrow_product.arg_names}
    sig.update(seq="*i32", NTOK="i32")
    jobs = []
    for use_h0, has_bias in ((True, True), (False, False)):
        const = dict(D=D, OUT=out, OP=max(16, next_power_of_2(out)), BT=BT, BD=BD, USE_H0=use_h0, HAS_BIAS=has_bias)
        s = {**sig, **{k: "constexpr" for k in const}}
        attrs = aligned_pointers(narrow_product, s)
        jobs.append((f"narrow_product h0={use_h0} bias={has_bias}", narrow_product, s, const, attrs,
                     dict(num_warps=warps)))
    return jobs
