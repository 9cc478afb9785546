"""Device functions shared by the chunked kernels (chunk.py) and the delta rule's WY kernels (wy.py), as
template text rendered per variant by template.py.

CHUNK_HELPERS: a sequence's or a chunk's coordinates (packed by cu_seqlens or not) and one chunk of
the log decay with its within-chunk cumulative sum (and cumulative sign for signed decays).

PERKEY_INTRA: the intra-chunk attention matrix for per-key decays. exp(G_i - G_j) must not be split as
exp(G_i) * exp(-G_j) (overflow for strong decays). When the chunk's log range is at most 2*SAFE_LOG the
split is taken about the chunk's midpoint (one tl.dot). Otherwise pairs (i, j) are split
hierarchically: at level s the pairs with i in the upper and j in the lower half of the same 2s-block
use segmented sums of g that are both <= 0 (F_i over (mid, i], E_j over (j, mid]); once every s-block
spans at most SAFE_LOG of log decay the remaining within-block pairs take one dot with the reference
after the block's first row.
"""

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


@triton.jit
def _step_row(bos, o_t, i_h, H: tl.constexpr, NH: tl.constexpr = 1):
    """Rows of steps bos + o_t (bos: a sequence's first step, a multiple of NH; o_t: int32 steps within it)
    of head i_h in [.., H, NH, ..] tensors. A step is token (bos + o_t) // NH's reflection o_t % NH:
    DeltaProduct's n_h = NH steps per token are read where the caller laid them out ([B, T, H, n_h, ..]),
    with no interleaved copy. NH = 1: one step per token, rows of [.., H, ..]. The int64 part is one
    scalar per sequence; the per-row part stays int32 (a sequence's steps * H < 2^31)."""
    return ((bos // NH) * H + i_h) * NH + (o_t // NH) * (H * NH) + o_t % NH


@triton.jit
def _query_rows(bos, o_t, i_h, m_t, H: tl.constexpr, NH: tl.constexpr = 1):
    """Rows of steps bos + o_t's tokens in [.., H, ..] tensors (q, o, do, dq), and the mask of the steps
    that carry a query: only a token's last step does (its output is the token's)."""
    rows = ((bos // NH) * H + i_h) + (o_t // NH) * H
    if NH == 1:
        m = m_t
    else:
        m = m_t & (o_t % NH == NH - 1)
    return rows, m


@triton.jit
def _last_row(bos, L, i_c, i_h, H: tl.constexpr, BT: tl.constexpr, NH: tl.constexpr = 1):
    """Row offset (into [.., H, NH, ..] tensors) of chunk i_c's last real step."""
    return _step_row(bos, tl.minimum(L, (i_c + 1) * BT) - 1, i_h, H, NH)


@triton.jit
def _chunk_rows(bos, L, i_c, i_h, H: tl.constexpr, BT: tl.constexpr, NH: tl.constexpr = 1):
    """Chunk i_c of a sequence of L steps from bos: its steps' indices within the sequence (o_t), which of
    them are real (m_t), their rows (_step_row) and its last real step's row (_last_row)."""
    o_t = i_c * BT + tl.arange(0, BT)
    return o_t, o_t < L, _step_row(bos, o_t, i_h, H, NH), _last_row(bos, L, i_c, i_h, H, BT, NH)


#if scalar
@triton.jit
def _chunk_cumulative(G, p_row, p_last, m_t):
    """Rows p_row of the within-chunk cumulative log decay that `chunk_gate_cumsum` formed once per call,
    and its value at the chunk's last real row p_last, which rows past the sequence's end also take (as a
    running sum over their g = 0 would): exp(G_i - G_j) then never pairs a padded 0 with a large -G_j."""
    b_Gl = tl.load(G + p_last)
    return tl.where(m_t, tl.load(G + p_row, mask=m_t, other=0.0), b_Gl), b_Gl


#endif
#if decay
@triton.jit
def _gate(g, sgn, p_row, p_last, o_k, m_t, m_k, K: tl.constexpr, BT: tl.constexpr):
    """One chunk of the log decay g: its within-chunk cumulative sum G (fp32, inclusive) and G at the
    chunk's last row (padded rows have g = 0, so that is the last real token's value).
#if scalar
    A scalar decay's G was formed once per call (chunk_gate_cumsum) and g points at it: the sequential
    passes then neither scan nor reduce on their critical path. b_g is returned as G (unused there).
#endif
#if signed
    Also the cumulative sign P (+1/-1: the parity of negative factors so far in the chunk), which
    `chunk_sign_parity` computed once per call into sgn, and its value Pl at the last real row.
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
#if scalar
    b_G, b_Gl = _chunk_cumulative(g, p_row, p_last, m_t)
    b_g = b_G
#else
    b_g = tl.load(g + off, mask=m, other=0.0).to(tl.float32)
    b_G = tl.cumsum(b_g, axis=0)
    b_Gl = tl.sum(tl.where(last, b_G, 0.0), axis=0)
#endif
#if signed
    b_P = tl.load(sgn + off, mask=m, other=1).to(tl.float32)
    # Pl by a load of the last real row, not a reduction over the tile: in the sequential passes a
    # reduction's barrier sits on every chunk's critical path
#if perkey
    b_Pl = tl.load(sgn + p_last * K + o_k, mask=m_k, other=1).to(tl.float32)
#else
    b_Pl = tl.load(sgn + p_last).to(tl.float32)
#endif
    return b_g, b_G, b_Gl, b_P, b_Pl
#else
    return b_g, b_G, b_Gl
#endif
#endif
'''

PERKEY_INTRA = r'''#if perkey
# Largest log-magnitude a factor in a split decay exp(G_i - R) * exp(R - G_j) may reach (e^60 ~ 1e26
# is far inside the fp32/bf16 range, and products of two such factors stay finite).
SAFE_LOG = tl.constexpr(60.0)


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
           BK: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr, EXCL: tl.constexpr):
    """One level of the strong-decay split (runs only while done == 0): the pairs with i in the upper
    and j in the lower half of one 2s-block, then, if every s-block spans at most SAFE_LOG of log
    decay (or s == 1), all remaining pairs inside the s-blocks, which finishes the chunk. EXCL: see
    _intra (row i's own factor left out: its sums stop at i - 1, and the diagonal is not a pair)."""
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
        if EXCL:
            F = F - b_g
        Qf = tl.where(up[:, None], tl.exp(F), 0.0)
        Kf = tl.where(lo[:, None], tl.exp(E), 0.0)
        M = ((ri // (2 * s)) == (cj // (2 * s))) & up[:, None] & lo[None, :]
        A, dq, dk = _piece(qP, kP, Qf, Kf, M, A, dA, dq, dk, MODE, DT, PREC)
        if s == 1:
            # only the diagonal is left: exp(0) = 1 (not a pair when exclusive)
            if not EXCL:
                one = tl.full([BT, BK], 1.0, tl.float32)
                A, dq, dk = _piece(qP, kP, one, one, cj == ri, A, dA, dq, dk, MODE, DT, PREC)
            done = done + 1
        else:
            if (s - 1) * gmax <= SAFE_LOG:
                # pairs inside one s-block: reference just after the block's first row
                g0 = tl.where(((rows % s) == 0)[:, None], 0.0, b_g)
                C = tl.reshape(tl.cumsum(tl.reshape(g0, [BT // s, s, BK]), axis=1), [BT, BK])
                if EXCL:
                    # row i's factor stops at i - 1; a block's first row pairs with nothing
                    M = ((ri // s) == (cj // s)) & (cj < ri)
                    Qf = tl.where(((rows % s) == 0)[:, None], 0.0, tl.exp(C - b_g))
                else:
                    M = ((ri // s) == (cj // s)) & (cj <= ri)
                    Qf = tl.exp(C)
                A, dq, dk = _piece(qP, kP, Qf, tl.exp(-C), M, A, dA, dq, dk, MODE, DT, PREC)
                done = done + 1
    return A, dq, dk, done


@triton.jit
def _intra(qP, kP, b_g, b_G, b_Gl, A, dA, dq, dk, MODE: tl.constexpr, BT: tl.constexpr,
           BK: tl.constexpr, LOG2BT: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr, EXCL: tl.constexpr,
           LEVELS: tl.constexpr = True):
    """Intra-chunk part for one key block: all pairs j <= i with the exact per-key decay
    exp(G_i - G_j), never forming a factor above exp(SAFE_LOG). See _piece for MODE. EXCL: the pairs
    j < i with exp(G_(i-1) - G_j) instead (a query that reads the state before row i's own decay, as the
    rank-one read of a diagonal-plus-low-rank transition does). LEVELS=False leaves out the strong-decay
    split (its code costs registers even where it never runs): the caller then handles chunks whose
    log range exceeds 2 * SAFE_LOG (see _strong), whose A this leaves unchanged."""
    rows = tl.arange(0, BT)
    ri = rows[:, None]
    cj = rows[None, :]
    # Whole chunk at once, reference at the chunk's midpoint: factors within exp(+-range/2).
    rng = tl.max(-b_Gl, axis=0)
    done = (rng <= 2.0 * SAFE_LOG).to(tl.int32)
    if done == 1:
        Gh = 0.5 * b_Gl[None, :]
        if EXCL:
            A, dq, dk = _piece(qP, kP, tl.exp(b_G - b_g - Gh), tl.exp(Gh - b_G), cj < ri, A, dA, dq, dk,
                               MODE, DT, PREC)
        else:
            A, dq, dk = _piece(qP, kP, tl.exp(b_G - Gh), tl.exp(Gh - b_G), cj <= ri, A, dA, dq, dk,
                               MODE, DT, PREC)
    # Strong decay: split the pairs level by level (block size 2s, s = BT/2, BT/4, ..., 1).
    gmax = tl.max(tl.max(-b_g, axis=1), axis=0)   # the largest single-step log decay
    for lv in tl.static_range(LOG2BT if LEVELS else 0):
        A, dq, dk, done = _level(qP, kP, b_g, A, dA, dq, dk, done, gmax, BT >> (lv + 1), MODE, BT, BK, DT, PREC,
                                 EXCL)
    return A, dq, dk


@triton.jit
def _strong(b_Gl):
    """Whether a key block's chunk needs _intra's strong-decay split (log range above 2 * SAFE_LOG)."""
    return tl.max(-b_Gl, axis=0) > 2.0 * SAFE_LOG
#endif
'''
