"""Reflection vectors that read the previous token's iterate, u = l2norm(u_in + Wu @ prev(h, shift = 1)) (the
authors' mixer_h_dep, benchmarks/specs/fp_rnn_mixer_hdep.rec), as two generated launches per iteration of a
shifted fixed point (fp_shifted.py) in place of an addmm, an l2norm pass, fp_fused_dots and the coefficients'
small torch ops:

- `fp_reflection_products`: a program owns BM tokens and BC channels of every reflection. It multiplies the
  iterate one token back (read shifted in place: a sequence's first token reads h0, or zeros) with the
  weight's columns on tensor cores, adds u_in, writes the raw vectors and leaves its channels' shares of
  |u_i|^2, u_i . (x - hp) and u_i . u_j.
- `fp_reflection_finish`: per token, the shares added up, the norms, the normalised dot products and the
  coefficients W (fp_coefficients' recursion over the normalised Gram products and the strengths), row i
  divided by |u_i|, so that the fused kernel, reading the raw vectors, applies the normalised ones.

What they replace, at issue 5's shape (H100, bf16, 17 iterations; profile 2026-11-27w):
- the iterate's cast to bf16 for cuBLAS, 0.56 ms;
- addmm's copy of its bias, 0.77 ms;
- l2norm, 0.89 ms;
- fp_fused_dots with Gram products, 1.04 ms;
- the GEMM itself, 1.29 ms.
In their place the two kernels took 1.92 ms (profile 2026-11-27ze).

The products take the inputs' precision (precision()): half weights multiply the fp32 iterate split into three
parts of their dtype (parts(): all its bits, so the map from the iterate to u has no steps that stall a solve),
with fp32 accumulation; fp32 ones multiply in TF32 where torch allows it (torch.backends.cuda.matmul.allow_tf32)
and otherwise as three fp16 products of scaled parts (fp16x3, about fp32's accuracy), the iterate split in the
product kernel by each row's peak, which the launch that wrote the iterate left (fp_fused.py's peaks). The raw
vectors are written in fp32.

alpha's narrow product of the same iterate (Wa @ h_last) stays a separate launch, fp_products.narrow_product
(0.35 ms of a 17-iteration solve, 2026-11-27zn). An extra program column of the product kernel was tried for it:
- in bf16, the bf16 solve's residual stalled near 1e-4 and a converging solve ran to max_iter (2026-11-27zf;
  the same stall came from u's product of the bf16-rounded iterate, 27zk);
- in fp32 on FMA units, it cost 0.046 ms a launch, more than the separate product (27zj).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

from recdsl.ir import IR

from .fp_fused import _padded
from .fp_products import HALF, IterateProducts, Product, _reads_last_token
from .ints import cdiv, env_ints, next_power_of_2
from .template import load_source

EPS = 1e-12   # l2norm's (torch.nn.functional.normalize's) floor on the norm


@dataclass(frozen=True)
class MovingReflections:
    """The reflection vectors of a fixed-point pattern as a weight product of prev(h, shift = 1): `product`
    indexes IterateProducts.products, `normalise` whether u is l2norm of it, r the reflections, labels the
    IR names for the generated comments."""
    product: int
    normalise: bool
    r: int
    labels: tuple[tuple[str, str], ...]


def match(ir: IR, pattern, found: tuple[Product, ...]) -> MovingReflections | None:
    """MovingReflections where the pattern's single reflection group has u = [l2norm](addend + W @ prev(h, 1))
    with W [r, D, D], one of the products `found` (fp_products.products), else None (fp_shifted then evaluates
    u in torch)."""
    if len(pattern.reflections) != 1:
        return None
    u = pattern.reflections[0][0]
    shape = ir.node(u).shape
    if len(shape) != 2:
        return None
    normalise = ir.node(u).op == "l2norm"
    inner = ir.operands(u)[0] if normalise else u
    for k, p in enumerate(found):
        if p.result == inner and _reads_last_token(ir, p) and p.width == shape[0] * shape[1]:
            num = {i: f"%{n}" for n, i in enumerate(ir.order())}
            labels = (("@NAME@", ir.name), ("@U@", num[u]), ("@SUM@", num[inner]), ("@PRODUCT@", num[p.matmul]),
                      ("@PREV@", num[p.vector]))
            return MovingReflections(k, normalise, shape[0], labels)
    return None


FP32_CHOICES = ("fp16x3", "tf32x3", "tf32x3-triton", "ieee")
F16_REST = 2048.0   # 2^11: fp16x3 keeps the remainders scaled up by fp16's significand, clear of its subnormals


def precision(dtype: torch.dtype) -> str:
    """How fp32 data multiplies (half data: in its own dtype, "ieee" here): in TF32 where torch allows it, else
    as three tensor-core products per fp32 one, each operand split into a high part and a remainder and the
    remainders' product dropped (about fp32's accuracy):
    - "fp16x3", the default: fp16 parts, which tensor cores take at twice TF32's rate (Ootomo and Yokota
      2022). Each weight row and each token's iterate is scaled by a power of two at or below its largest
      magnitude, so that its fp16 part keeps 11 bits and the remainder, scaled up by 2^11, 11 more. The
      weights are split once per solve, the iterate in the product kernel;
    - "tf32x3": TF32 parts, the weights split once per solve and the iterate in the product kernel;
    - "tf32x3-triton": tl.dot's own 3xTF32, which splits both operands on every tile;
    - "ieee": FMA products.
    RECDSL_FP_REFLECTION_FP32 picks one of FP32_CHOICES."""
    if dtype in HALF:
        return "ieee"
    if torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    choice = os.environ.get("RECDSL_FP_REFLECTION_FP32", "fp16x3")
    if choice not in FP32_CHOICES:
        raise ValueError(f"RECDSL_FP_REFLECTION_FP32={choice!r}: expected one of {', '.join(FP32_CHOICES)}")
    return choice


def _dot_precision(prec: str) -> tuple[str, bool]:
    """(tl.dot's input_precision, whether the weights come split into two parts) for precision()'s choice."""
    if prec == "tf32x3":
        return "tf32", True
    if prec == "fp16x3":
        return "ieee", True
    return ("tf32x3" if prec == "tf32x3-triton" else prec), False


def tf32_parts(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 w as (its TF32 part, the remainder): the low 13 mantissa bits cut off, then what they held."""
    high = (w.contiguous().view(torch.int32) & -8192).view(torch.float32)   # -8192 = 0xFFFFE000
    return high, w - high


def power_of_two_below(m: torch.Tensor) -> torch.Tensor:
    """The power of two at or below each fp32 magnitude m (the smallest normal one for zero and subnormals):
    its exponent bits alone. Scaling by it is exact."""
    return torch.clamp(m.float().contiguous().view(torch.int32) & 0x7F800000, min=0x00800000).view(torch.float32)


def fp16_parts(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp32 w [N, K] as fp16 (high, remainder * 2^11) of w / scale and the rows' scales [N] (fp16x3's split,
    power_of_two_below each row's largest magnitude): w = scale * (high + remainder / 2^11) to about 22 bits."""
    scale = power_of_two_below(w.abs().amax(1))
    ws = w / scale[:, None]
    high = ws.half()
    return high.contiguous(), ((ws - high.float()) * F16_REST).half().contiguous(), scale


def row_peaks(rows: torch.Tensor, out=None) -> torch.Tensor:
    """max_c |rows[t, c]| for each row of rows [NTOK, D] (fp16x3 scales the iterate's rows by them), one pass
    without a temporary: for an iterate whose launch left none (fp_fused.py's peaks)."""
    return torch.linalg.vector_norm(rows, float("inf"), dim=1, out=out)


def parts(dtype: torch.dtype) -> int:
    """How many parts of the weight's half dtype the fp32 iterate is split into for half inputs (1 for fp32).
    Three hold all of its bits, so the products are those of the iterate itself: rounded once to bf16, the
    map from the iterate to u was a step function, and a bf16 solve's residual stalled near 5e-5, never
    reaching tol 1e-6 (H100 2026-11-27zk). RECDSL_FP_REFLECTION_PARTS=1|2|3 sets it for a comparison."""
    if dtype not in HALF:
        return 1
    n = env_ints("RECDSL_FP_REFLECTION_PARTS", "parts")
    if n and n[0] not in (1, 2, 3):
        raise ValueError(f"RECDSL_FP_REFLECTION_PARTS={n[0]}: expected 1, 2 or 3")
    return n[0] if n else 3


_PRODUCTS = r'''
@triton.jit
def fp_reflection_products(it, h0, seq, bias, wk, wl, wscale, x, hp, u, part, peak, h0_peak, NTOK,
                           D: tl.constexpr, BM: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, USE_H0: tl.constexpr,
                           HAS_BIAS: tl.constexpr, PREC: tl.constexpr, K_MAJOR: tl.constexpr, PARTS: tl.constexpr,
                           SPLIT_W: tl.constexpr, FP16X3: tl.constexpr, WIDE: tl.constexpr):
    """Program (channel block, token block): u_i = bias_i + W_i @ it_(t-1) for its BM tokens and the BC channels
    of each reflection i (it, hp, x [NTOK, D] fp32; h0 [N, D]; seq [NTOK] int32, each token's sequence;
    bias [NTOK, R, D]; u [NTOK, R, D] fp32; wk the weight in the products' dtype, K_MAJOR: its rows [R * D, D],
    whose [BK, BC] tiles are K-major as TF32 tensor cores need them, else its transpose [D, R * D], which FMA
    products read faster; PARTS: half weights multiply the fp32 iterate as that many half parts; SPLIT_W: wk
    holds the fp32 weight's TF32 part and wl, like it, the remainder, for three TF32 products; FP16X3: wk and
    wl hold fp16_parts' parts, wscale [R * D] its rows' scales, and peak [NTOK], h0_peak [N] the largest
    magnitudes of the iterate's and h0's rows; WIDE: int64 element offsets, for tensors past offsets_fit's
    bound);
    part [D / BC, NTOK, NS]: this block's shares
    @SLOTS@."""
    i_c, i_m = tl.program_id(0), tl.program_id(1)
    p = i_m * BM + tl.arange(0, BM)
    m_t = p < NTOK
    if WIDE:   # element offsets past 2^31
        q, shares = p.to(tl.int64), i_c.to(tl.int64) * NTOK
    else:   # int32 offsets: fewer registers
        q, shares = p, i_c * NTOK
    o_c = i_c * BC + tl.arange(0, BC)
    m_c = o_c < D
    # IR @PREV@ = prev(h, shift = 1), read in place: row t is the iterate's row t - 1, a sequence's first
    # token reads h0 (or zeros)
    s_t, inner, first = token_boundaries(seq, p, m_t)
    if FP16X3:   # each token's power of two at or below its row's largest magnitude (peak [NTOK] of the
        # iterate's rows, h0_peak [N] of h0's, a sequence's first token reading the latter); its inverse exact
        # as well, -inf for a NaN or infinite peak, so that a non-finite iterate stays so
        row_peak = tl.load(peak + p - 1, mask=inner, other=0.0)
        if USE_H0:
            row_peak += tl.load(h0_peak + s_t, mask=first, other=0.0)
        bits = tl.maximum(row_peak.to(tl.int32, bitcast=True) & 0x7F800000, 0x00800000)
        row_scale = bits.to(tl.float32, bitcast=True)
        inv = (0x7F000000 - bits).to(tl.float32, bitcast=True)
    if K_MAJOR:   # from one reflection's weight to the next
        W_STEP: tl.constexpr = D * D
    else:
        W_STEP: tl.constexpr = D
@ZEROS@
    for k0 in range(0, D, BK):
        o_k = k0 + tl.arange(0, BK)
        m_k = o_k < D
        a = shifted_rows(it, h0, s_t, inner, first, p, o_k, m_k, D, USE_H0)
        if FP16X3:   # row / scale = a_main + a_rest / 2^11; a = a_main 2^11 (exact) meets the weight's high part
            a = a * inv[:, None]    # as a_main meets its scaled remainder
            a_main = a.to(tl.float16)
            a_rest = ((a - a_main.to(tl.float32)) * F16_REST).to(tl.float16)
            a = (a_main.to(tl.float32) * F16_REST).to(tl.float16)
        elif SPLIT_W:   # the iterate's TF32 part (low mantissa bits cut) and its remainder
            a, a_rest = tf32_split(a)
            a_main = a
        elif PARTS == 1:
            a = a.to(wk.dtype.element_ty)
        else:   # the iterate as a sum of parts in the weight's dtype (three: all of fp32's bits)
            a_hi = a.to(wk.dtype.element_ty)
            rest = a - a_hi.to(tl.float32)
            a_mid = rest.to(wk.dtype.element_ty)
            a_lo = (rest - a_mid.to(tl.float32)).to(wk.dtype.element_ty)
            a = a_hi
        m_kc = m_k[:, None] & m_c[None, :]
        if K_MAJOR:
            kc = o_c[None, :] * D + o_k[:, None]
        else:
            kc = o_k[:, None] * (R * D) + o_c[None, :]
        w_kc, l_kc = wk + kc, wl + kc
        # IR @PRODUCT@ = W @ prev(h, shift = 1), each reflection's columns
@DOTS@
    m_tc = m_t[:, None] & m_c[None, :]
    row = q[:, None] * (R * D) + o_c[None, :]
    if FP16X3:   # the scales undone (powers of two: exact), the token's, the weight row's and 2^11
        row_scale = row_scale / F16_REST
@UNSCALE@
    # IR @SUM@ = the addend + the product, the raw reflection vectors
@WRITE@
    # the shares over this block's channels, of the dot products with v = x - hp and of the Gram products
    off = q[:, None] * D + o_c[None, :]
    v = tl.load(x + off, mask=m_tc, other=0.0) - tl.load(hp + off, mask=m_tc, other=0.0)
    base = part + (shares + q) * NS
@SHARES@


@triton.jit
def fp_reflection_finish(part, s, w, dots, NTOK, NC, BT: tl.constexpr, NORMALISE: tl.constexpr):
    """Per token, from the NC channel blocks' shares: d_i = u_i . (x - hp) / |u_i| into dots [NTOK, RP] (padding
    zero) and w [NTOK, R, R] = W / |u_i| by rows, W the coefficients of fp_coefficients for the normalised
    vectors (IR @U@) and the strengths s [NTOK, R]."""
    p = tl.program_id(0) * BT + tl.arange(0, BT)
    m_t = p < NTOK
@SUMS@
    for c in range(NC):
        base = part + (c * NTOK + p.to(tl.int64)) * NS
@ADD@
    # IR @U@: the norms (l2norm: max(|u_i|, EPS); 1 where u is not normalised)
@NORMS@
    # the coefficients: W_i = s_i (e_i - sum_(j<i) G_ij W_j) over the normalised Gram products G
@COEFFICIENTS@
'''


def _slots(r: int) -> list[tuple[str, str, str]]:
    """(name, its share's expression in fp_reflection_products, what it is) for each share a program leaves:
    |u_i|^2, u_i . v, and u_i . u_j for j < i."""
    slots = [(f"sq{i}", f"acc{i} * acc{i}", f"|u_{i}|^2") for i in range(r)]
    slots += [(f"d{i}", f"acc{i} * v", f"u_{i} . v") for i in range(r)]
    slots += [(f"g{i}{j}", f"acc{i} * acc{j}", f"u_{i} . u_{j}") for i in range(r) for j in range(i)]
    return slots


def generate(m: MovingReflections) -> str:
    """The module text of the two kernels for r reflections (one accumulator, share and coefficient per
    reflection written out: readable, and no tensor indexing inside the kernels)."""
    r, RP = m.r, _padded(m.r)
    slots = _slots(r)
    ind4, ind8 = " " * 4, " " * 8
    zeros = [f"{ind4}acc{i} = tl.zeros([BM, BC], dtype=tl.float32)" for i in range(r)]
    dots = []
    for i in range(r):
        dots += [f"{ind8}w{i} = tl.load(w_kc + {i} * W_STEP, mask=m_kc, other=0.0)",
                 f"{ind8}if SPLIT_W:   # the small products first: a_rest W and a_main W_rest",
                 f"{ind8}    acc{i} = tl.dot(a_rest, w{i}, acc{i}, input_precision=PREC)",
                 f"{ind8}    acc{i} = tl.dot(a_main, tl.load(l_kc + {i} * W_STEP, mask=m_kc, other=0.0), acc{i}, "
                 f"input_precision=PREC)",
                 f"{ind8}if PARTS == 3:",
                 f"{ind8}    acc{i} = tl.dot(a_lo, w{i}, acc{i}, input_precision=PREC)",
                 f"{ind8}if PARTS >= 2:",
                 f"{ind8}    acc{i} = tl.dot(a_mid, w{i}, acc{i}, input_precision=PREC)",
                 f"{ind8}acc{i} = tl.dot(a, w{i}, acc{i}, input_precision=PREC)"]
    unscale = [f"{ind8}acc{i} *= row_scale[:, None] * tl.load(wscale + {i} * D + o_c, mask=m_c, other=0.0)[None, :]"
               for i in range(r)]
    write = []
    for i in range(r):
        write += [f"{ind4}if HAS_BIAS:",
                  f"{ind8}acc{i} += tl.load(bias + row + {i} * D, mask=m_tc, other=0.0).to(tl.float32)",
                  f"{ind4}tl.store(u + row + {i} * D, acc{i}, mask=m_tc)"]
    shares = [f"{ind4}tl.store(base + {k}, tl.sum({expr}, axis=1), mask=m_t)   # {what}"
              for k, (_, expr, what) in enumerate(slots)]
    sums = [f"{ind4}{name} = tl.zeros([BT], dtype=tl.float32)" for name, _, _ in slots]
    add = [f"{ind8}{name} += tl.load(base + {k}, mask=m_t, other=0.0)" for k, (name, _, _) in enumerate(slots)]
    norms = []
    for i in range(r):
        norms += [f"{ind4}if NORMALISE:",
                  f"{ind8}n{i} = tl.maximum(tl.sqrt(sq{i}), EPS)",
                  f"{ind4}else:",
                  f"{ind8}n{i} = tl.full([BT], 1.0, tl.float32)"]
    coeff = [f"{ind4}s{i} = tl.load(s + p.to(tl.int64) * R + {i}, mask=m_t, other=0.0)" for i in range(r)]
    for i in range(r):
        for k in range(r):
            terms = "".join(f" - g{i}{j} / (n{i} * n{j}) * w{j}_{k}" for j in range(i))
            coeff.append(f"{ind4}w{i}_{k} = s{i} * ({1.0 if i == k else 0.0}{terms})")
    for i in range(r):
        for k in range(r):
            coeff.append(f"{ind4}tl.store(w + (p.to(tl.int64) * R + {i}) * R + {k}, w{i}_{k} / n{i}, mask=m_t)")
    for i in range(RP):
        value = f"d{i} / n{i}" if i < r else "tl.zeros([BT], dtype=tl.float32)"
        coeff.append(f"{ind4}tl.store(dots + p.to(tl.int64) * RP + {i}, {value}, mask=m_t)")
    text = _PRODUCTS
    for key, lines in (("@ZEROS@", zeros), ("@DOTS@", dots), ("@UNSCALE@", unscale), ("@WRITE@", write),
                       ("@SHARES@", shares), ("@SUMS@", sums), ("@ADD@", add), ("@NORMS@", norms),
                       ("@COEFFICIENTS@", coeff)):
        text = text.replace(key, "\n".join(lines))
    text = text.replace("@SLOTS@", ", ".join(what for _, _, what in slots))
    for key, value in m.labels:
        text = text.replace(key, value)
    head = (f'"""Generated by recdsl: the moving reflection vectors of spec {dict(m.labels)["@NAME@"]} '
            f'(r = {r}). See recdsl backends/triton/fp_reflections.py."""\n')
    consts = (f"\nR = tl.constexpr({r})   # reflections\nRP = tl.constexpr({RP})   # padded to a power of 2\n"
              f"NS = tl.constexpr({len(slots)})   # shares a program leaves per token\nEPS = tl.constexpr({EPS})\n"
              f"F16_REST = tl.constexpr({F16_REST})   # fp16x3's scale of the remainders\n\n")
    imports = ("import triton\nimport triton.language as tl\n\n"
               "from recdsl.backends.triton.fp_products import shifted_rows, token_boundaries\n"
               "from recdsl.backends.triton.gemm import tf32_split\n")
    return head + imports + consts + text


@functools.lru_cache(maxsize=16)
def load(m: MovingReflections):
    return load_source(generate(m))


def blocks(D: int, prec: str = "ieee", half: bool = True) -> tuple[int, int, int, int, int]:
    """(BM, BC, BK, num_warps, num_stages) of fp_reflection_products for precision()'s `prec` (half: half data):
    tiles tl.dot takes (at least 16 wide) whose pipelined operands fit Hopper's shared memory, the fastest of
    sweeps at issue 5's shape on an H100 (benchmarks/sweep_fp_reflections.py; a launch with the finishing kernel):
    - half data, the iterate in three parts: 0.153 ms with 128 channels of each reflection (2026-11-28i, twice;
      0.164 with 64 channels there, 0.176 with 128 tokens in 27zl); Triton 3.9's sm_90 build spills 240 bytes;
    - fp16x3: 0.219 ms with the iterate's parts from a kernel of their own (2026-11-30b; 0.027 ms of it for
      the parts), against 0.232 for 3xTF32 in the same process; 64 x 64 x 32 tiles with 3 or 4 stages alike,
      128 tokens slower (0.244 with 8 warps), 128 channels far slower (0.548 with 8 warps; 4 warps spill). The
      product kernel alone, capped at 168 registers (registers()): 0.164 ms, where 64 x 64 tiles with 8 warps
      took 0.47 and 128 x 64 with 8 warps capped at 128, 0.187 (2026-12-01b). Split in the product kernel:
      0.163 ms, against 0.167 and 0.027 for the parts' kernel in the same process; with 2 or 4 stages 0.192
      and 0.178, 128 x 64 tiles with 8 warps 0.199 (2026-12-03a, benchmarks/reflection_kernel_times.py);
    - 3xTF32 with split weights: 0.229 ms (28c, 28i; 0.282 with 128 channels), against 0.300 for tl.dot's own
      3xTF32 at its best tiles (27zm);
    - TF32: 0.145 ms (27zd);
    - FMA: 0.454 ms (27zd; 128 x 128 tiles took 19 ms there, their accumulators spilled wholesale).
    The TF32 tiles spill a few registers in sm_90 builds (336 bytes) and are still faster than the 8-warp
    tiles that spill none.
    RECDSL_FP_REFLECTION_BLOCKS="BM,BC,BK,warps,stages" overrides it for a sweep."""
    DP = max(16, next_power_of_2(D))
    if half:
        tiles = (64, min(128, DP), min(32, DP), 4, 3)
    elif prec in ("fp16x3", "tf32x3"):
        tiles = (64, min(64, DP), min(32, DP), 4, 3)
    elif prec == "tf32":
        tiles = (128, min(64, DP), min(32, DP), 4, 3)
    elif prec == "tf32x3-triton":
        tiles = (128, min(64, DP), min(64, DP), 8 if DP >= 64 else 4, 3)
    else:
        tiles = (64, min(128, DP), min(32, DP), 8 if DP >= 128 else 4, 3)
    return env_ints("RECDSL_FP_REFLECTION_BLOCKS", "BM,BC,BK,warps,stages") or tiles


def registers(prec: str = "ieee", half: bool = True, hopper: bool = True) -> int:
    """The register cap of fp_reflection_products for precision()'s `prec` (0: the compiler's choice), on
    Hopper (sm_90; elsewhere, unmeasured, none: an A100's shared memory holds two of these programs anyway).
    fp16x3's tiles take 184 registers with int32 offsets (offsets_fit); capped at 168 they spill 80
    bytes, and three programs fit an SM instead of two: 0.164 against 0.172 ms a launch, a 17-iteration fp32
    solve 5.64-5.75 against 5.81-5.94 ms and a training call 7.52-7.61 against 7.72-7.81 in one process (H100,
    2026-12-01b; capped at 160, 0.174 ms); in another, 0.165 against 0.172 ms, training 7.56-7.67 against
    7.74-7.80 ms and solves within noise (01c). Half data's tiles slowed by a fifth under that cap (01b).
    Since the iterate is split in the kernel (its fp32 tiles take 80 KB of shared memory, so two programs fit an
    SM whatever the registers), the cap still gives 0.158 against 0.176 ms a launch (184: 0.169), solves
    5.07-5.11 against 5.35-5.37 ms and training calls 6.81-6.84 against 7.07-7.09 (2026-12-03e).
    RECDSL_FP_REFLECTION_MAXNREG overrides it for a sweep (0: none)."""
    forced = env_ints("RECDSL_FP_REFLECTION_MAXNREG", "maxnreg")
    if forced is not None:
        return forced[0]
    return 168 if prec == "fp16x3" and not half and hopper else 0


@functools.lru_cache(maxsize=None)
def _hopper(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9


INT32_ELEMENTS = 2 ** 31     # offsets_fit's bound: the first element index int32 cannot hold


def offsets_fit(*elements: int) -> bool:
    """Whether tensors of these element counts take int32 offsets in fp_reflection_products (a few registers
    fewer than int64: 184 against 194 in fp16x3's sm_90 build)."""
    return max(elements) < INT32_ELEMENTS


class ReflectionLaunches:
    """The two launches for one solve: the weight [R * D, D] and bias [NTOK, R * D] come from IterateProducts
    (its product `m.product`), the sequence map, x and h0 from the solve's FusedIteration `step`."""

    def __init__(self, m: MovingReflections, products: IterateProducts, step, dtype: torch.dtype):
        self.m, self.step, self.prec = m, step, precision(dtype)
        # K-major tiles for tensor cores (mats holds the transpose of the rows [R * D, D]), N-major for FMA
        self.k_major = dtype in HALF or self.prec != "ieee"
        wk = (products.mats[m.product].t() if self.k_major else products.mats[m.product]).contiguous()
        self.dot_prec, self.split = _dot_precision(self.prec)
        self.wscale = None
        if self.prec == "fp16x3":
            self.wk, self.wl, self.wscale = fp16_parts(wk)
        else:
            self.wk, self.wl = tf32_parts(wk) if self.split else (wk, wk)    # wl is read only when split
        self.half = dtype in HALF
        p = products.products[m.product]
        self.bias = products.biases[m.product] if p.addend is not None else None
        self.parts = parts(dtype)
        if self.bias is not None:
            # an addend that is a half input is read in its dtype (exactly its values: the layout made them
            # fp32 from that dtype)
            exact = dtype in HALF and products.ir.node(p.addend).op == "input"
            self.bias = (self.bias.to(dtype) if exact else self.bias).contiguous()
        self.module = load(m)
        # fp16x3 splits the iterate by its rows' peaks: h0's once per solve (inside the graphs' prologue)
        h0 = step.h0
        self.h0_peak = row_peaks(h0) if self.peaks and h0 is not None and h0.shape[1] else None

    @property
    def peaks(self) -> bool:
        """Whether products() reads the iterate's rows' peaks (fp16x3)."""
        return self.wscale is not None

    def __call__(self, prev: torch.Tensor, s: torch.Tensor, peak=None):
        """(raw u [NTOK, R, D] fp32, w [NTOK, R, R], dots [NTOK, RP]) for a launch from the iterate prev [B, T, 1, D]
        with the strengths s [NTOK, R]: products() then finish()."""
        u, part = self.products(prev, peak)
        return (u,) + self.finish(part, s)

    def products(self, prev: torch.Tensor, peak=None) -> tuple[torch.Tensor, torch.Tensor]:
        """fp_reflection_products from the iterate prev [B, T, 1, D] (fp16x3: and its rows' peaks [NTOK], taken
        here where not given): (raw u [NTOK, R, D] fp32, the shares [NC, NTOK, NS] for finish())."""
        step, r = self.step, self.m.r
        NTOK, D = step.x.shape
        hp = prev.reshape(NTOK, D)
        BM, BC, BK, warps, stages = blocks(D, self.prec, self.half)
        NC = cdiv(D, BC)
        u = hp.new_empty(NTOK, r, D)
        part = hp.new_empty(NC, NTOK, len(_slots(r)))
        if self.peaks and peak is None and NTOK and D:     # the launch that wrote prev left none
            peak = row_peaks(hp)
        if NTOK:
            h0 = step.h0
            regs = registers(self.prec, self.half, _hopper(hp.device))
            self.module.fp_reflection_products[(NC, cdiv(NTOK, BM))](
                hp, h0, step.seq, self.bias, self.wk, self.wl, self.wscale, step.x, hp, u, part, peak, self.h0_peak,
                NTOK,
                D=D, BM=BM, BC=BC, BK=BK, USE_H0=h0 is not None, HAS_BIAS=self.bias is not None, PREC=self.dot_prec,
                K_MAJOR=self.k_major, PARTS=self.parts, SPLIT_W=self.split, FP16X3=self.wscale is not None,
                WIDE=not offsets_fit(NTOK * r * D, NC * NTOK * len(_slots(r))), num_warps=warps,
                num_stages=stages, **({"maxnreg": regs} if regs else {}))
        return u, part

    def finish(self, part: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """fp_reflection_finish: (w [NTOK, R, R], dots [NTOK, RP]) from products()' shares and the strengths
        s [NTOK, R]."""
        NC, NTOK = part.shape[:2]
        r = self.m.r
        w = part.new_empty(NTOK, r, r)
        dots = part.new_empty(NTOK, _padded(r))
        if NTOK:
            BT = 256
            self.module.fp_reflection_finish[(cdiv(NTOK, BT),)](part, s.contiguous(), w, dots, NTOK, NC, BT=BT,
                                                               NORMALISE=self.m.normalise)
        return w, dots


def aot_jobs(D: int = 512, r: int = 2):
    """Ahead-of-time jobs (as chunk_launch.aot_jobs) for issue 5's shape: the products in each precision
    (bf16 weights; fp32 ones in TF32, both 3xTF32 forms, fp16x3 and on FMA units) with their tiles, register
    caps and int32 offsets, and the finishing kernel."""
    from .aot import aligned_pointers
    m = MovingReflections(0, True, r, (("@NAME@", "aot"), ("@U@", "u"), ("@SUM@", "sum"), ("@PRODUCT@", "Wu @ h"),
                                       ("@PREV@", "prev(h, shift = 1)")))
    module = load(m)
    jobs = []
    for wdtype, prec in (("bf16", "ieee"), ("fp32", "tf32"), ("fp32", "tf32x3"), ("fp16", "fp16x3"),
                         ("fp32", "tf32x3-triton"), ("fp32", "ieee")):
        half = wdtype == "bf16"
        fp16x3 = prec == "fp16x3"
        BM, BC, BK, warps, stages = blocks(D, prec, half)
        fn = module.fp_reflection_products
        sig = {a: "*fp32" for a in fn.arg_names}
        sig.update(seq="*i32", wk=f"*{wdtype}", wl=f"*{wdtype}", NTOK="i32")
        dot, split = _dot_precision(prec)
        const = dict(D=D, BM=BM, BC=BC, BK=BK, USE_H0=True, HAS_BIAS=True, PREC=dot, K_MAJOR=half or prec != "ieee",
                     PARTS=3 if half else 1, SPLIT_W=split, FP16X3=fp16x3, WIDE=False)
        sig.update({k: "constexpr" for k in const})
        attrs = aligned_pointers(fn, sig)
        label = "bf16" if half else prec
        regs = registers(prec, half)
        jobs.append((f"fp_reflection_products {label}", fn, sig, const, attrs,
                     dict(num_warps=warps, num_stages=stages, **({"maxnreg": regs} if regs else {}))))
    fn = module.fp_reflection_finish
    const = dict(BT=256, NORMALISE=True)
    sig = {a: "*fp32" for a in fn.arg_names}
    sig.update(NTOK="i32", NC="i32", **{k: "constexpr" for k in const})
    attrs = aligned_pointers(fn, sig)
    jobs.append(("fp_reflection_finish", fn, sig, const, attrs, dict(num_warps=4)))
    return jobs
