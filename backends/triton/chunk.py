"""Chunkwise Triton kernels for matrix-state linear recurrences with scalar or per-key diagonal decay.

Per head, with S in R^{K x V}:

    S_t = diag(a_t) S_{t-1} + k_t v_t^T,      o_t = scale * S_t^T q_t,

where a_t = sign_t * exp(g_t) is given in log space: g [B,T,H,K] ("perkey", like GLA), g [B,T,H]
("scalar", like Mamba-2 / simple GLA) or no g at all ("none", linear attention); `sign` (same shape
as g, values +1/-1) makes the decays signed. Cumulative decays are carried as a pair (log-magnitude,
sign): the log-magnitude is a cumulative sum of g, the sign is the parity of the number of negative
factors, so the chunk form stays exact for a_t in (-1, 1).

The sequence is cut into chunks of BT tokens. Inside chunk c, with G_i the inclusive cumulative sum
of g (fp32) and P_i the cumulative sign, Lam_i = P_i exp(G_i) (Lam_l at the chunk's last row):

    o_i   = scale * [ (q_i * Lam_i)^T S_c + sum_{j <= i} (q_i * Lam_i / Lam_j) . k_j  v_j ]
    S_c+1 = diag(Lam_l) S_c + sum_j (k_j * Lam_l / Lam_j) v_j^T

Forward: `chunk_fwd_h` walks the chunks of one sequence in order with the state in fp32 registers
and stores the state at each chunk start (h); `chunk_fwd_o` is parallel over chunks. Backward:
`chunk_bwd_dh` walks the chunks in reverse with dS (the gradient of the state at each chunk end);
`chunk_bwd_dv` and `chunk_bwd_dqkg` are parallel over chunks. The log-decay gradient uses

    dL/dG_m = q_m * dq_m - k_m * dk_m  (+ rowsum(S_c+1 * dS_c+1) at the chunk's last row),
    dg_t    = sum_{m >= t in the chunk} dL/dG_m.

Per-key decays inside a chunk: exp(G_i - G_j) must not be split as exp(G_i) * exp(-G_j) (overflow for
strong decays). When the chunk's log range is at most 2*SAFE_LOG the split is taken about the chunk's
midpoint (one tl.dot). Otherwise pairs (i, j) are split hierarchically: at level s the pairs with i in
the upper and j in the lower half of the same 2s-block use segmented sums of g that are both <= 0
(F_i over (mid, i], E_j over (j, mid]); once every s-block spans at most SAFE_LOG of log decay the
remaining within-block pairs take one dot with the reference after the block's first row.

The Triton source is rendered per (decay, signed) by template.py and imported through the kernel cache;
chunk_launch.py launches it (tile configs, the torch custom op, varlen tables, ahead-of-time jobs).
"""
from __future__ import annotations

import os

from .template import load_variant, render

KERNELS = ("chunk_fwd_h", "chunk_fwd_o", "chunk_bwd_dh", "chunk_bwd_dv", "chunk_bwd_dqkg")

# Dot precision for fp32 inputs ("ieee" is exact; "tf32" is faster on tensor cores).
FP32_DOT_PRECISION = os.environ.get("RECDSL_FP32_DOT", "ieee")


# Coordinates of a sequence / a chunk and the within-chunk cumulative log decay: shared with the
# WY kernels of the delta rule (wy.py).
CHUNK_HELPERS = r'''@triton.jit
def _seq_coords(i_n, cu_seqlens, chunk_offsets, T, BT: tl.constexpr, IS_VARLEN: tl.constexpr):
    """First token, length, and index of the first chunk (row of h) of sequence i_n."""
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        L = (tl.load(cu_seqlens + i_n + 1).to(tl.int64) - bos).to(tl.int32)
        s0 = tl.load(chunk_offsets + i_n).to(tl.int64)
    else:
        bos = i_n.to(tl.int64) * T
        L = T
        s0 = i_n.to(tl.int64) * tl.cdiv(T, BT)
    return bos, L, s0


@triton.jit
def _chunk_coords(i_t, i_bh, cu_seqlens, chunk_indices, T, H: tl.constexpr, BT: tl.constexpr,
                  IS_VARLEN: tl.constexpr):
    """For program (chunk i_t, head i_bh): first token of its sequence, sequence length, chunk index
    within the sequence, global chunk index (row of h), head."""
    if IS_VARLEN:
        i_n = tl.load(chunk_indices + 2 * i_t).to(tl.int64)
        i_c = tl.load(chunk_indices + 2 * i_t + 1).to(tl.int32)
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        L = (tl.load(cu_seqlens + i_n + 1).to(tl.int64) - bos).to(tl.int32)
        i_s = i_t.to(tl.int64)
        i_h = i_bh
    else:
        i_b = i_bh // H
        i_h = i_bh % H
        i_c = i_t
        bos = i_b.to(tl.int64) * T
        L = T
        i_s = i_b.to(tl.int64) * tl.cdiv(T, BT) + i_t
    return bos, L, i_c, i_s, i_h


#if decay
@triton.jit
def _gate(g, sgn, p_row, o_k, m_t, m_k, K: tl.constexpr, BT: tl.constexpr):
    """Load one chunk of the log decay and form its within-chunk cumulative sum G (fp32, inclusive)
    and G at the chunk's last row (padded rows have g = 0, so that is the last real token's value).
#if signed
    Also the cumulative sign P (+1/-1: parity of negative factors so far) and its last row Pl.
#endif
    """
    rows = tl.arange(0, BT)
#if perkey
    off = p_row[:, None] * K + o_k[None, :]
    m = m_t[:, None] & m_k[None, :]
    last = (rows == BT - 1)[:, None]
#else
    off = p_row
    m = m_t
    last = rows == BT - 1
#endif
    b_g = tl.load(g + off, mask=m, other=0.0).to(tl.float32)
    b_G = tl.cumsum(b_g, axis=0)
    b_Gl = tl.sum(tl.where(last, b_G, 0.0), axis=0)
#if signed
    neg = (tl.load(sgn + off, mask=m, other=1) < 0).to(tl.int32)
    b_P = 1.0 - 2.0 * (tl.cumsum(neg, axis=0) & 1).to(tl.float32)
    b_Pl = tl.sum(tl.where(last, b_P, 0.0), axis=0)
    return b_g, b_G, b_Gl, b_P, b_Pl
#else
    return b_g, b_G, b_Gl
#endif
#endif
'''


# --------------------------------------------------------------------------------------------------
# Source template, rendered per variant by template.py (`#if EXPR` ... `#endif` over the names none,
# scalar, perkey, decay and signed).
# --------------------------------------------------------------------------------------------------

_TEMPLATE = r'''
"""Generated by recdsl: chunkwise matrix-state linear recurrence (decay=@DECAY@, signed=@SIGNED@).

S_t = diag(a_t) S_{t-1} + k_t v_t^T, o_t = scale * S_t^T q_t; see recdsl backends/triton/chunk.py.
"""
import triton
import triton.language as tl

#if perkey
# Largest log-magnitude a factor in a split decay exp(G_i - R) * exp(R - G_j) may reach (e^60 ~ 1e26
# is far inside the fp32/bf16 range, and products of two such factors stay finite).
SAFE_LOG = tl.constexpr(60.0)
#endif


@CHUNK_HELPERS@


#if perkey
@triton.jit
def _piece(qP, kP, Qf, Kf, M, A, dA, dq, dk, MODE: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
    """One factorised part of the intra-chunk decay: pairs (i, j) selected by M get
    exp(G_i - G_j) = Qf_i * Kf_j. MODE 0 adds to A = (q k^T) (*) decay; MODE 1 adds the
    gradients dq += Qf * ((M * dA) @ (k Kf)), dk += Kf * ((M * dA)^T @ (q Qf))."""
    qs = (qP * Qf).to(DT)
    ks = (kP * Kf).to(DT)
    if MODE == 0:
        A += tl.where(M, tl.dot(qs, tl.trans(ks), input_precision=PREC), 0.0)
    else:
        dAm = tl.where(M, dA, 0.0).to(DT)
        dq += Qf * tl.dot(dAm, ks, input_precision=PREC)
        dk += Kf * tl.dot(tl.trans(dAm), qs, input_precision=PREC)
    return A, dq, dk


@triton.jit
def _level(qP, kP, b_g, A, dA, dq, dk, done, gmax, s: tl.constexpr, MODE: tl.constexpr, BT: tl.constexpr,
           BK: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
    """One level of the strong-decay split (runs only while done == 0): the pairs with i in the upper
    and j in the lower half of one 2s-block, then, if every s-block spans at most SAFE_LOG of log
    decay (or s == 1), all remaining pairs inside the s-blocks, which finishes the chunk."""
    rows = tl.arange(0, BT)
    ri = rows[:, None]
    cj = rows[None, :]
    if done == 0:
        # both halves are s-segments: segmented sums of g along rows, all <= 0
        g3 = tl.reshape(b_g, [BT // s, s, BK])
        F = tl.reshape(tl.cumsum(g3, axis=1), [BT, BK])                     # sum of g over (mid, i]
        E = tl.reshape(tl.cumsum(g3, axis=1, reverse=True), [BT, BK]) - b_g  # sum of g over (j, mid]
        up = ((rows // s) % 2) == 1
        lo = ((rows // s) % 2) == 0
        Qf = tl.where(up[:, None], tl.exp(F), 0.0)
        Kf = tl.where(lo[:, None], tl.exp(E), 0.0)
        M = ((ri // (2 * s)) == (cj // (2 * s))) & up[:, None] & lo[None, :]
        A, dq, dk = _piece(qP, kP, Qf, Kf, M, A, dA, dq, dk, MODE, DT, PREC)
        if s == 1:
            # only the diagonal is left: exp(0) = 1
            one = tl.full([BT, BK], 1.0, tl.float32)
            A, dq, dk = _piece(qP, kP, one, one, cj == ri, A, dA, dq, dk, MODE, DT, PREC)
            done = done + 1
        else:
            if (s - 1) * gmax <= SAFE_LOG:
                # pairs inside one s-block: reference just after the block's first row
                g0 = tl.where(((rows % s) == 0)[:, None], 0.0, b_g)
                C = tl.reshape(tl.cumsum(tl.reshape(g0, [BT // s, s, BK]), axis=1), [BT, BK])
                M = ((ri // s) == (cj // s)) & (cj <= ri)
                A, dq, dk = _piece(qP, kP, tl.exp(C), tl.exp(-C), M, A, dA, dq, dk, MODE, DT, PREC)
                done = done + 1
    return A, dq, dk, done


@triton.jit
def _intra(qP, kP, b_g, b_G, b_Gl, A, dA, dq, dk, MODE: tl.constexpr, BT: tl.constexpr,
           BK: tl.constexpr, LOG2BT: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
    """Intra-chunk part for one key block: all pairs j <= i with the exact per-key decay
    exp(G_i - G_j), never forming a factor above exp(SAFE_LOG). See _piece for MODE."""
    rows = tl.arange(0, BT)
    ri = rows[:, None]
    cj = rows[None, :]
    # Whole chunk at once, reference at the chunk's midpoint: factors within exp(+-range/2).
    rng = tl.max(-b_Gl, axis=0)
    done = (rng <= 2.0 * SAFE_LOG).to(tl.int32)
    if done == 1:
        Gh = 0.5 * b_Gl[None, :]
        A, dq, dk = _piece(qP, kP, tl.exp(b_G - Gh), tl.exp(Gh - b_G), cj <= ri, A, dA, dq, dk,
                           MODE, DT, PREC)
    # Strong decay: split the pairs level by level (block size 2s, s = BT/2, BT/4, ..., 1).
    gmax = tl.max(tl.max(-b_g, axis=1), axis=0)   # the largest single-step log decay
    for lv in tl.static_range(LOG2BT):
        A, dq, dk, done = _level(qP, kP, b_g, A, dA, dq, dk, done, gmax, BT >> (lv + 1), MODE, BT, BK, DT, PREC)
    return A, dq, dk
#endif


@triton.jit
def chunk_fwd_h(k, v, g, sgn, h0, h, ht, cu_seqlens, chunk_offsets, T,
#if delta
                w, vn,
#endif
                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                BV: tl.constexpr, USE_H0: tl.constexpr, STORE_HT: tl.constexpr, IS_VARLEN: tl.constexpr,
                PREC: tl.constexpr):
    """Sequential state pass. Program (key block, value block, sequence*head) keeps its [BK, BV]
    block of S in fp32 registers, stores it at every chunk start into h [chunks, H, K, V], then
    S <- diag(Lam_l) S + (k * Lam_l / Lam)^T v.
#if delta
    Delta rule (WY form, wy.py): v holds u, and each chunk's new values v' = u - w S are formed from the
    state at its start (this program holds every key: BK >= K), written to vn and used as v.
#endif
    """
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos, L, s0 = _seq_coords(i_n, cu_seqlens, chunk_offsets, T, BT, IS_VARLEN)
    DT = h.dtype.element_ty
    rows = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    off_kv = o_k[:, None] * V + o_v[None, :]
    b_S = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_S += tl.load(h0 + i_nh.to(tl.int64) * K * V + off_kv, mask=m_kv, other=0.0).to(tl.float32)
    for i_t in range(0, tl.cdiv(L, BT)):
        tl.store(h + ((s0 + i_t) * H + i_h) * K * V + off_kv, b_S.to(DT), mask=m_kv)
        o_t = i_t * BT + rows
        m_t = o_t < L
        p_row = (bos + o_t) * H + i_h
        b_k = tl.load(k + p_row[:, None] * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.0)
        b_v = tl.load(v + p_row[:, None] * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0)
#if delta
        # IR delta(k, v, beta): the chunk's new values v' = u - w S, from the state at the chunk start
        b_wy = tl.load(w + p_row[:, None] * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.0)
        b_v = b_v.to(tl.float32) - tl.dot(b_wy.to(DT), b_S.to(DT), input_precision=PREC)
        tl.store(vn + p_row[:, None] * V + o_v[None, :], b_v.to(vn.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])
#endif
#if decay
#if signed
        b_g, b_G, b_Gl, b_P, b_Pl = _gate(g, sgn, p_row, o_k, m_t, m_k, K, BT)
#else
        b_g, b_G, b_Gl = _gate(g, sgn, p_row, o_k, m_t, m_k, K, BT)
#endif
#if perkey
        b_w = tl.exp(b_Gl[None, :] - b_G)      # decay from each token to the chunk end (<= 1)
        b_d = tl.exp(b_Gl)                     # decay over the whole chunk, per key
#if signed
        b_w = b_w * (b_P * b_Pl[None, :])
        b_d = b_d * b_Pl
#endif
        b_kw = (b_k.to(tl.float32) * b_w).to(DT)
        b_S = tl.dot(tl.trans(b_kw), b_v.to(DT), b_S * b_d[:, None], input_precision=PREC)
#else
        b_w = tl.exp(b_Gl - b_G)               # [BT]
        b_d = tl.exp(b_Gl)
#if signed
        b_w = b_w * (b_P * b_Pl)
        b_d = b_d * b_Pl
#endif
        b_kw = (b_k.to(tl.float32) * b_w[:, None]).to(DT)
        b_S = tl.dot(tl.trans(b_kw), b_v.to(DT), b_S * b_d, input_precision=PREC)
#endif
#else
        b_S = tl.dot(tl.trans(b_k.to(DT)), b_v.to(DT), b_S, input_precision=PREC)
#endif
    if STORE_HT:
        tl.store(ht + i_nh.to(tl.int64) * K * V + off_kv, b_S, mask=m_kv)


@triton.jit
def chunk_fwd_o(q, k, v, g, sgn, h, o, cu_seqlens, chunk_indices, scale, T,
                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                BV: tl.constexpr, LOG2BT: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr):
    """Output, parallel over (value block, chunk, batch*head):
    o = scale * [ (q * Lam) @ h_c + (tril(q k^T (*) decay)) @ v ]."""
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, L, i_c, i_s, i_h = _chunk_coords(i_t, i_bh, cu_seqlens, chunk_indices, T, H, BT, IS_VARLEN)
    DT = h.dtype.element_ty
    rows = tl.arange(0, BT)
    ri = rows[:, None]
    cj = rows[None, :]
    o_t = i_c * BT + rows
    m_t = o_t < L
    p_row = (bos + o_t) * H + i_h
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    p_h = h + (i_s * H + i_h) * K * V
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
#if scalar
#if signed
    b_g, b_G, b_Gl, b_P, b_Pl = _gate(g, sgn, p_row, rows, m_t, m_t, K, BT)
#else
    b_g, b_G, b_Gl = _gate(g, sgn, p_row, rows, m_t, m_t, K, BT)
#endif
#endif
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        b_q = tl.load(q + p_row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
        b_k = tl.load(k + p_row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
        b_h = tl.load(p_h + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0.0)
#if perkey
#if signed
        b_g, b_G, b_Gl, b_P, b_Pl = _gate(g, sgn, p_row, o_k, m_t, m_k, K, BT)
        b_qP = b_q.to(tl.float32) * b_P
        b_kP = b_k.to(tl.float32) * b_P
#else
        b_g, b_G, b_Gl = _gate(g, sgn, p_row, o_k, m_t, m_k, K, BT)
        b_qP = b_q.to(tl.float32)
        b_kP = b_k.to(tl.float32)
#endif
        # inter-chunk: the state at the chunk start, decayed to each token
        b_o = tl.dot((b_qP * tl.exp(b_G)).to(DT), b_h.to(DT), b_o, input_precision=PREC)
        # intra-chunk attention matrix (this key block's share)
        b_A, _, _ = _intra(b_qP, b_kP, b_g, b_G, b_Gl, b_A, b_A, b_qP, b_kP, 0, BT, BK, LOG2BT, DT, PREC)
#else
        b_o = tl.dot(b_q.to(DT), b_h.to(DT), b_o, input_precision=PREC)
        b_A = tl.dot(b_q.to(DT), tl.trans(b_k.to(DT)), b_A, input_precision=PREC)
#endif
#if scalar
    b_lam = tl.exp(b_G)
    b_D = tl.exp(tl.where(cj <= ri, b_G[:, None] - b_G[None, :], float("-inf")))
#if signed
    b_lam = b_lam * b_P
    b_D = b_D * (b_P[:, None] * b_P[None, :])
#endif
    b_o = b_o * b_lam[:, None]
    b_A = b_A * b_D
#else
    b_A = tl.where(cj <= ri, b_A, 0.0)
#endif
    b_v = tl.load(v + p_row[:, None] * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0)
    b_o = tl.dot(b_A.to(DT), b_v.to(DT), b_o, input_precision=PREC) * scale
    tl.store(o + p_row[:, None] * V + o_v[None, :], b_o.to(o.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])


@triton.jit
def chunk_bwd_dh(q, g, sgn, do, dht, dh, dh0, cu_seqlens, chunk_offsets, scale, T,
#if delta
                 k, w, dv, dv2,
#endif
                 H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                 BV: tl.constexpr, USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr, IS_VARLEN: tl.constexpr,
                 PREC: tl.constexpr):
    """Reverse state-gradient pass. dS (gradient of the state at a chunk's end) is stored into
    dh [chunks, H, K, V] for every chunk, then dS <- diag(Lam_l) dS + scale (q * Lam)^T do.
#if delta
    Delta rule: the new values v' = u - w S_c read the chunk-start state, so their full gradient
    dv' = dv (the intra-chunk part, from chunk_bwd_dv) + (k * Lam_l / Lam) dS is formed here, written to
    dv2, and dS gains -w^T dv' (this program holds every key: BK >= K).
#endif
    """
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos, L, s0 = _seq_coords(i_n, cu_seqlens, chunk_offsets, T, BT, IS_VARLEN)
    DT = dh.dtype.element_ty
    rows = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    off_kv = o_k[:, None] * V + o_v[None, :]
    b_dS = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_DHT:
        b_dS += tl.load(dht + i_nh.to(tl.int64) * K * V + off_kv, mask=m_kv, other=0.0).to(tl.float32)
    NT = tl.cdiv(L, BT)
    for j in range(0, NT):
        i_t = NT - 1 - j
        tl.store(dh + ((s0 + i_t) * H + i_h) * K * V + off_kv, b_dS.to(DT), mask=m_kv)
        o_t = i_t * BT + rows
        m_t = o_t < L
        p_row = (bos + o_t) * H + i_h
        b_q = tl.load(q + p_row[:, None] * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.0)
        b_do = tl.load(do + p_row[:, None] * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0)
#if decay
#if signed
        b_g, b_G, b_Gl, b_P, b_Pl = _gate(g, sgn, p_row, o_k, m_t, m_k, K, BT)
#else
        b_g, b_G, b_Gl = _gate(g, sgn, p_row, o_k, m_t, m_k, K, BT)
#endif
        b_lam = tl.exp(b_G)
        b_d = tl.exp(b_Gl)
#if signed
        b_lam = b_lam * b_P
        b_d = b_d * b_Pl
#endif
#endif
#if delta
        # IR delta(k, v, beta): the full gradient of this chunk's new values, dv' = dv + (k * Lam_l / Lam) dS
        m_tk = m_t[:, None] & m_k[None, :]
        b_k = tl.load(k + p_row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
#if scalar
        b_kd = (b_k.to(tl.float32) * tl.exp(b_Gl - b_G)[:, None]).to(DT)
#else
        b_kd = b_k.to(DT)
#endif
        b_dv = tl.load(dv + p_row[:, None] * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0)
        b_dv = tl.dot(b_kd, b_dS.to(DT), b_dv.to(tl.float32), input_precision=PREC)
        tl.store(dv2 + p_row[:, None] * V + o_v[None, :], b_dv.to(dv2.dtype.element_ty),
                 mask=m_t[:, None] & m_v[None, :])
        b_wy = tl.load(w + p_row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
#endif
#if perkey
        b_qd = (b_q.to(tl.float32) * b_lam * scale).to(DT)
        b_dS = tl.dot(tl.trans(b_qd), b_do.to(DT), b_dS * b_d[:, None], input_precision=PREC)
#elif decay
        b_qd = (b_q.to(tl.float32) * (b_lam * scale)[:, None]).to(DT)
        b_dS = tl.dot(tl.trans(b_qd), b_do.to(DT), b_dS * b_d, input_precision=PREC)
#else
        b_qd = (b_q.to(tl.float32) * scale).to(DT)
        b_dS = tl.dot(tl.trans(b_qd), b_do.to(DT), b_dS, input_precision=PREC)
#endif
#if delta
        # v' = u - w S_c: its share of the chunk-start state's gradient
        b_dS = tl.dot(tl.trans((-b_wy.to(tl.float32)).to(DT)), b_dv.to(DT), b_dS, input_precision=PREC)
#endif
    if STORE_DH0:
        tl.store(dh0 + i_nh.to(tl.int64) * K * V + off_kv, b_dS, mask=m_kv)


@triton.jit
def chunk_bwd_dv(q, k, g, sgn, do, dh, dv, cu_seqlens, chunk_indices, scale, T,
                 H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                 BV: tl.constexpr, LOG2BT: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
                 USE_DH: tl.constexpr = True):
    """dv = A^T do + (k * Lam_l / Lam) @ dS_c, parallel over (value block, chunk, batch*head);
    A is the intra-chunk attention matrix of the forward (recomputed). Without USE_DH only the
    intra-chunk part A^T do (the delta rule adds the state's share in chunk_bwd_dh)."""
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, L, i_c, i_s, i_h = _chunk_coords(i_t, i_bh, cu_seqlens, chunk_indices, T, H, BT, IS_VARLEN)
    DT = dh.dtype.element_ty
    rows = tl.arange(0, BT)
    ri = rows[:, None]
    cj = rows[None, :]
    o_t = i_c * BT + rows
    m_t = o_t < L
    p_row = (bos + o_t) * H + i_h
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    p_dh = dh + (i_s * H + i_h) * K * V
    b_dv = tl.zeros([BT, BV], dtype=tl.float32)
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
#if scalar
#if signed
    b_g, b_G, b_Gl, b_P, b_Pl = _gate(g, sgn, p_row, rows, m_t, m_t, K, BT)
#else
    b_g, b_G, b_Gl = _gate(g, sgn, p_row, rows, m_t, m_t, K, BT)
#endif
#endif
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        b_q = tl.load(q + p_row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
        b_k = tl.load(k + p_row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
#if perkey
#if signed
        b_g, b_G, b_Gl, b_P, b_Pl = _gate(g, sgn, p_row, o_k, m_t, m_k, K, BT)
        b_qP = b_q.to(tl.float32) * b_P
        b_kP = b_k.to(tl.float32) * b_P
        b_kw = b_kP * (tl.exp(b_Gl[None, :] - b_G) * b_Pl[None, :])
#else
        b_g, b_G, b_Gl = _gate(g, sgn, p_row, o_k, m_t, m_k, K, BT)
        b_qP = b_q.to(tl.float32)
        b_kP = b_k.to(tl.float32)
        b_kw = b_kP * tl.exp(b_Gl[None, :] - b_G)
#endif
        if USE_DH:
            b_dh = tl.load(p_dh + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0.0)
            b_dv = tl.dot(b_kw.to(DT), b_dh.to(DT), b_dv, input_precision=PREC)
        b_A, _, _ = _intra(b_qP, b_kP, b_g, b_G, b_Gl, b_A, b_A, b_qP, b_kP, 0, BT, BK, LOG2BT, DT, PREC)
#else
        if USE_DH:
            b_dh = tl.load(p_dh + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0.0)
            b_dv = tl.dot(b_k.to(DT), b_dh.to(DT), b_dv, input_precision=PREC)
        b_A = tl.dot(b_q.to(DT), tl.trans(b_k.to(DT)), b_A, input_precision=PREC)
#endif
#if scalar
    b_w = tl.exp(b_Gl - b_G)
    b_D = tl.exp(tl.where(cj <= ri, b_G[:, None] - b_G[None, :], float("-inf")))
#if signed
    b_w = b_w * (b_P * b_Pl)
    b_D = b_D * (b_P[:, None] * b_P[None, :])
#endif
    b_dv = b_dv * b_w[:, None]
    b_A = b_A * b_D * scale
#else
    b_A = tl.where(cj <= ri, b_A * scale, 0.0)
#endif
    b_do = tl.load(do + p_row[:, None] * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0)
    b_dv = tl.dot(tl.trans(b_A).to(DT), b_do.to(DT), b_dv, input_precision=PREC)
    tl.store(dv + p_row[:, None] * V + o_v[None, :], b_dv.to(dv.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])


@triton.jit
def chunk_bwd_dqkg(q, k, v, g, sgn, h, do, dh, dq, dk, dg, cu_seqlens, chunk_indices, scale, T, dg_stride,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                   BV: tl.constexpr, LOG2BT: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr):
    """dq, dk and the log-decay gradient, parallel over (key block, chunk, batch*head).
    dA = scale * tril(do v^T); dq = scale Lam * (do h_c^T) + intra(dA, k);
    dk = Lam_l / Lam * (v dS_c^T) + intra(dA^T, q); dg = reverse cumsum of q dq - k dk (+ last row)."""
    i_k, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, L, i_c, i_s, i_h = _chunk_coords(i_t, i_bh, cu_seqlens, chunk_indices, T, H, BT, IS_VARLEN)
    DT = dh.dtype.element_ty
    rows = tl.arange(0, BT)
    ri = rows[:, None]
    cj = rows[None, :]
    o_t = i_c * BT + rows
    m_t = o_t < L
    p_row = (bos + o_t) * H + i_h
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    p_h = h + (i_s * H + i_h) * K * V
    p_dh = dh + (i_s * H + i_h) * K * V
    b_dA = tl.zeros([BT, BT], dtype=tl.float32)
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
#if decay
    b_hd = tl.zeros([BK], dtype=tl.float32)     # rowsum(h_c (*) dS_c) for this key block
#endif
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        m_kv = m_k[:, None] & m_v[None, :]
        b_v = tl.load(v + p_row[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(DT)
        b_do = tl.load(do + p_row[:, None] * V + o_v[None, :], mask=m_tv, other=0.0).to(DT)
        b_h = tl.load(p_h + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0)
        b_dh = tl.load(p_dh + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0)
        b_dA = tl.dot(b_do, tl.trans(b_v), b_dA, input_precision=PREC)
        b_dq = tl.dot(b_do, tl.trans(b_h.to(DT)), b_dq, input_precision=PREC)
        b_dk = tl.dot(b_v, tl.trans(b_dh.to(DT)), b_dk, input_precision=PREC)
#if decay
        b_hd += tl.sum(b_h.to(tl.float32) * b_dh.to(tl.float32), axis=1)
#endif
    b_dA = tl.where(cj <= ri, b_dA * scale, 0.0)
    b_q = tl.load(q + p_row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
    b_k = tl.load(k + p_row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
#if perkey
    # Below, q and k carry the cumulative sign (q P, k P) and dq, dk lack it until the end.
#if signed
    b_g, b_G, b_Gl, b_P, b_Pl = _gate(g, sgn, p_row, o_k, m_t, m_k, K, BT)
    b_q = b_q * b_P
    b_k = b_k * b_P
    b_dl = tl.exp(b_Gl) * b_Pl
    b_dk = b_dk * (tl.exp(b_Gl[None, :] - b_G) * b_Pl[None, :])
#else
    b_g, b_G, b_Gl = _gate(g, sgn, p_row, o_k, m_t, m_k, K, BT)
    b_dl = tl.exp(b_Gl)
    b_dk = b_dk * tl.exp(b_Gl[None, :] - b_G)
#endif
    b_dq = b_dq * (scale * tl.exp(b_G))
    # gradient of the chunk's total log decay: rowsum(S_next (*) dS) split as below
    b_last = b_dl * b_hd + tl.sum(b_k * b_dk, axis=0)
    _, b_dq, b_dk = _intra(b_q, b_k, b_g, b_G, b_Gl, b_dA, b_dA, b_dq, b_dk, 1, BT, BK, LOG2BT, DT, PREC)
    b_dG = b_q * b_dq - b_k * b_dk + tl.where((rows == BT - 1)[:, None], b_last[None, :], 0.0)
    b_dg = tl.cumsum(b_dG, axis=0, reverse=True)
#if signed
    b_dq = b_dq * b_P
    b_dk = b_dk * b_P
#endif
    tl.store(dg + p_row[:, None] * K + o_k[None, :], b_dg.to(dg.dtype.element_ty), mask=m_tk)
#elif scalar
#if signed
    b_g, b_G, b_Gl, b_P, b_Pl = _gate(g, sgn, p_row, rows, m_t, m_t, K, BT)
    b_lam = tl.exp(b_G) * b_P
    b_w = tl.exp(b_Gl - b_G) * (b_P * b_Pl)
    b_dl = tl.exp(b_Gl) * b_Pl
    b_D = tl.exp(tl.where(cj <= ri, b_G[:, None] - b_G[None, :], float("-inf"))) * (b_P[:, None] * b_P[None, :])
#else
    b_g, b_G, b_Gl = _gate(g, sgn, p_row, rows, m_t, m_t, K, BT)
    b_lam = tl.exp(b_G)
    b_w = tl.exp(b_Gl - b_G)
    b_dl = tl.exp(b_Gl)
    b_D = tl.exp(tl.where(cj <= ri, b_G[:, None] - b_G[None, :], float("-inf")))
#endif
    b_dq = b_dq * (scale * b_lam)[:, None]
    b_dk = b_dk * b_w[:, None]
    b_last = b_dl * tl.sum(b_hd, axis=0) + tl.sum(tl.sum(b_k * b_dk, axis=1), axis=0)
    b_dAd = (b_dA * b_D).to(DT)
    b_dq = tl.dot(b_dAd, b_k.to(DT), b_dq, input_precision=PREC)
    b_dk = tl.dot(tl.trans(b_dAd), b_q.to(DT), b_dk, input_precision=PREC)
    b_dG = tl.sum(b_q * b_dq - b_k * b_dk, axis=1) + tl.where(rows == BT - 1, b_last, 0.0)
    b_dg = tl.cumsum(b_dG, axis=0, reverse=True)
    # one partial per key block; the host sums them
    tl.store(dg + i_k * dg_stride + p_row, b_dg.to(dg.dtype.element_ty), mask=m_t)
#else
    b_dq = b_dq * scale
    b_dAd = b_dA.to(DT)
    b_dq = tl.dot(b_dAd, b_k.to(DT), b_dq, input_precision=PREC)
    b_dk = tl.dot(tl.trans(b_dAd), b_q.to(DT), b_dk, input_precision=PREC)
#endif
    tl.store(dq + p_row[:, None] * K + o_k[None, :], b_dq.to(dq.dtype.element_ty), mask=m_tk)
    tl.store(dk + p_row[:, None] * K + o_k[None, :], b_dk.to(dk.dtype.element_ty), mask=m_tk)
'''


_TEXT = _TEMPLATE.replace("@CHUNK_HELPERS@", CHUNK_HELPERS.rstrip("\n"))


def _check(decay: str, signed: bool, delta: bool) -> None:
    if delta and (signed or decay == "perkey"):
        raise ValueError("the delta-rule chunk passes take no decay or a scalar one, unsigned")


def generate(decay: str, signed: bool, delta: bool = False) -> str:
    """The chunked kernels' module text for one variant (delta: the state passes of the delta rule)."""
    _check(decay, signed, delta)
    return render(_TEXT, decay, signed, delta=delta)


def load(decay: str, signed: bool, delta: bool = False):
    """The imported chunked-kernel module for this variant."""
    _check(decay, signed, delta)
    return load_variant(_TEXT, decay, signed, delta=delta)
