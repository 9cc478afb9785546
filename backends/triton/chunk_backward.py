"""The chunked kernels' backward passes, as template text that chunk.py's module includes (rendered per
variant with it: `#if` lines over none, scalar, perkey, decay, signed and delta; see chunk.py for the
recurrence, the chunk form and the gradient of the log decay).

chunk_bwd_dh walks a sequence's chunks in reverse with the state gradient in fp32 registers and stores it
at every chunk end; chunk_bwd_dv and chunk_bwd_dqkg are parallel over chunks and recompute the
intra-chunk attention matrix. The device functions they call (_seq_coords, _gate, _intra, ...) come from
chunk_parts.py.
"""

CHUNK_BACKWARD = r'''@triton.jit
def chunk_bwd_dh(q, g, sgn, do, dht, dh, dh0, cu_seqlens, chunk_offsets, scale, T,
#if delta
                 k, w, dv, dv2,
#endif
                 H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                 BV: tl.constexpr, USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr, IS_VARLEN: tl.constexpr,
                 PREC: tl.constexpr, NH: tl.constexpr = 1):
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
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv, off_kv, b_dS = _state_block(dht, i_nh, m_k, m_v, o_k, o_v, K, V, BK, BV, USE_DHT)
    NT = tl.cdiv(L, BT)
    for j in range(0, NT):
        i_t = NT - 1 - j
        tl.store(dh + ((s0 + i_t) * H + i_h) * K * V + off_kv, b_dS.to(DT), mask=m_kv)
        o_t, m_t, p_row, p_last = _chunk_rows(bos, L, i_t, i_h, H, BT, NH)
        p_qrow, m_q = _query_rows(bos, o_t, i_h, m_t, H, NH)
        b_q = tl.load(q + p_qrow[:, None] * K + o_k[None, :], mask=m_q[:, None] & m_k[None, :], other=0.0)
        b_do = tl.load(do + p_qrow[:, None] * V + o_v[None, :], mask=m_q[:, None] & m_v[None, :], other=0.0)
#if decay
#if signed
        b_g, b_G, b_Gl, b_P, b_Pl = _gate(g, sgn, p_row, p_last, o_k, m_t, m_k, K, BT)
#else
        b_g, b_G, b_Gl = _gate(g, sgn, p_row, p_last, o_k, m_t, m_k, K, BT)
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
        b_dv = tl.load(dv + p_row[:, None] * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.0)
#if scalar
        # row factors go on [BT, BV] tiles, so that the [BT, K] operands reach the products as loaded
        b_dv = tl.dot(b_k.to(DT), b_dS.to(DT), input_precision=PREC) * tl.exp(b_Gl - b_G)[:, None] + b_dv
#else
        b_dv = tl.dot(b_k.to(DT), b_dS.to(DT), b_dv.to(tl.float32), input_precision=PREC)
#endif
        tl.store(dv2 + p_row[:, None] * V + o_v[None, :], b_dv.to(dv2.dtype.element_ty),
                 mask=m_t[:, None] & m_v[None, :])
        b_wy = tl.load(w + p_row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
#endif
#if perkey
        b_qd = (b_q.to(tl.float32) * b_lam * scale).to(DT)
        b_dS = tl.dot(tl.trans(b_qd), b_do.to(DT), b_dS * b_d[:, None], input_precision=PREC)
#elif decay
        b_dod = (b_do.to(tl.float32) * (b_lam * scale)[:, None]).to(DT)
        b_dS = tl.dot(tl.trans(b_q.to(DT)), b_dod, b_dS * b_d, input_precision=PREC)
#else
        b_dod = (b_do.to(tl.float32) * scale).to(DT)
        b_dS = tl.dot(tl.trans(b_q.to(DT)), b_dod, b_dS, input_precision=PREC)
#endif
#if delta
        # v' = u - w S_c: its share of the chunk-start state's gradient
        b_dS = tl.dot(tl.trans(b_wy.to(DT)), (-b_dv).to(DT), b_dS, input_precision=PREC)
#endif
    if STORE_DH0:
        tl.store(dh0 + i_nh.to(tl.int64) * K * V + off_kv, b_dS, mask=m_kv)


@triton.jit
def chunk_bwd_dv(q, k, g, sgn, do, dh, dv, cu_seqlens, chunk_indices, scale, T,
                 H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                 BV: tl.constexpr, LOG2BT: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
                 USE_DH: tl.constexpr = True, NH: tl.constexpr = 1):
    """dv = A^T do + (k * Lam_l / Lam) @ dS_c, parallel over (value block, chunk, batch*head);
    A is the intra-chunk attention matrix of the forward (recomputed). Without USE_DH only the
    intra-chunk part A^T do (the delta rule adds the state's share in chunk_bwd_dh)."""
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, L, i_c, i_s, i_h = _chunk_coords(i_t, i_bh, cu_seqlens, chunk_indices, T, H, BT, IS_VARLEN)
    DT = dh.dtype.element_ty
    rows = tl.arange(0, BT)
    ri = rows[:, None]
    cj = rows[None, :]
    o_t, m_t, p_row, p_last = _chunk_rows(bos, L, i_c, i_h, H, BT, NH)
    p_qrow, m_q = _query_rows(bos, o_t, i_h, m_t, H, NH)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    p_dh = dh + (i_s * H + i_h) * K * V
    b_dv = tl.zeros([BT, BV], dtype=tl.float32)
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
#if scalar
#if signed
    b_g, b_G, b_Gl, b_P, b_Pl = _gate(g, sgn, p_row, p_last, rows, m_t, m_t, K, BT)
#else
    b_g, b_G, b_Gl = _gate(g, sgn, p_row, p_last, rows, m_t, m_t, K, BT)
#endif
#endif
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        b_q = tl.load(q + p_qrow[:, None] * K + o_k[None, :], mask=m_q[:, None] & m_k[None, :], other=0.0)
        b_k = tl.load(k + p_row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0)
#if perkey
#if signed
        b_g, b_G, b_Gl, b_P, b_Pl = _gate(g, sgn, p_row, p_last, o_k, m_t, m_k, K, BT)
        b_qP = b_q.to(tl.float32) * b_P
        b_kP = b_k.to(tl.float32) * b_P
        b_kw = b_kP * (tl.exp(b_Gl[None, :] - b_G) * b_Pl[None, :])
#else
        b_g, b_G, b_Gl = _gate(g, sgn, p_row, p_last, o_k, m_t, m_k, K, BT)
        b_qP = b_q.to(tl.float32)
        b_kP = b_k.to(tl.float32)
        b_kw = b_kP * tl.exp(b_Gl[None, :] - b_G)
#endif
        if USE_DH:
            b_dh = tl.load(p_dh + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0.0)
            b_dv = tl.dot(b_kw.to(DT), b_dh.to(DT), b_dv, input_precision=PREC)
        b_A, _, _ = _intra(b_qP, b_kP, b_g, b_G, b_Gl, b_A, b_A, b_qP, b_kP, 0, BT, BK, LOG2BT, DT, PREC, False)
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
    b_do = tl.load(do + p_qrow[:, None] * V + o_v[None, :], mask=m_q[:, None] & m_v[None, :], other=0.0)
    b_dv = tl.dot(tl.trans(b_A).to(DT), b_do.to(DT), b_dv, input_precision=PREC)
    tl.store(dv + p_row[:, None] * V + o_v[None, :], b_dv.to(dv.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])


@triton.jit
def chunk_bwd_dqkg(q, k, v, g, sgn, h, do, dh, dq, dk, dg, cu_seqlens, chunk_indices, scale, T, dg_stride,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                   BV: tl.constexpr, LOG2BT: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
                   NH: tl.constexpr = 1):
    """dq, dk and the log-decay gradient, parallel over (key block, chunk, batch*head).
    dA = scale * tril(do v^T); dq = scale Lam * (do h_c^T) + intra(dA, k);
    dk = Lam_l / Lam * (v dS_c^T) + intra(dA^T, q); dg = reverse cumsum of q dq - k dk (+ last row)."""
    i_k, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, L, i_c, i_s, i_h = _chunk_coords(i_t, i_bh, cu_seqlens, chunk_indices, T, H, BT, IS_VARLEN)
    DT = dh.dtype.element_ty
    rows = tl.arange(0, BT)
    ri = rows[:, None]
    cj = rows[None, :]
    o_t, m_t, p_row, p_last = _chunk_rows(bos, L, i_c, i_h, H, BT, NH)
    p_qrow, m_q = _query_rows(bos, o_t, i_h, m_t, H, NH)
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
        b_do = tl.load(do + p_qrow[:, None] * V + o_v[None, :], mask=m_q[:, None] & m_v[None, :], other=0.0).to(DT)
        b_h = tl.load(p_h + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0)
        b_dh = tl.load(p_dh + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0)
        b_dA = tl.dot(b_do, tl.trans(b_v), b_dA, input_precision=PREC)
        b_dq = tl.dot(b_do, tl.trans(b_h.to(DT)), b_dq, input_precision=PREC)
        b_dk = tl.dot(b_v, tl.trans(b_dh.to(DT)), b_dk, input_precision=PREC)
#if decay
        b_hd += tl.sum(b_h.to(tl.float32) * b_dh.to(tl.float32), axis=1)
#endif
    b_dA = tl.where(cj <= ri, b_dA * scale, 0.0)
    b_q = tl.load(q + p_qrow[:, None] * K + o_k[None, :], mask=m_q[:, None] & m_k[None, :], other=0.0).to(tl.float32)
    b_k = tl.load(k + p_row[:, None] * K + o_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
#if perkey
    # Below, q and k carry the cumulative sign (q P, k P) and dq, dk lack it until the end.
#if signed
    b_g, b_G, b_Gl, b_P, b_Pl = _gate(g, sgn, p_row, p_last, o_k, m_t, m_k, K, BT)
    b_q = b_q * b_P
    b_k = b_k * b_P
    b_dl = tl.exp(b_Gl) * b_Pl
    b_dk = b_dk * (tl.exp(b_Gl[None, :] - b_G) * b_Pl[None, :])
#else
    b_g, b_G, b_Gl = _gate(g, sgn, p_row, p_last, o_k, m_t, m_k, K, BT)
    b_dl = tl.exp(b_Gl)
    b_dk = b_dk * tl.exp(b_Gl[None, :] - b_G)
#endif
    b_dq = b_dq * (scale * tl.exp(b_G))
    # gradient of the chunk's total log decay: rowsum(S_next (*) dS) split as below
    b_last = b_dl * b_hd + tl.sum(b_k * b_dk, axis=0)
    _, b_dq, b_dk = _intra(b_q, b_k, b_g, b_G, b_Gl, b_dA, b_dA, b_dq, b_dk, 1, BT, BK, LOG2BT, DT, PREC, False)
    b_dG = b_q * b_dq - b_k * b_dk + tl.where((rows == BT - 1)[:, None], b_last[None, :], 0.0)
    b_dg = tl.cumsum(b_dG, axis=0, reverse=True)
#if signed
    b_dq = b_dq * b_P
    b_dk = b_dk * b_P
#endif
    tl.store(dg + p_row[:, None] * K + o_k[None, :], b_dg.to(dg.dtype.element_ty), mask=m_tk)
#elif scalar
#if signed
    b_g, b_G, b_Gl, b_P, b_Pl = _gate(g, sgn, p_row, p_last, rows, m_t, m_t, K, BT)
    b_lam = tl.exp(b_G) * b_P
    b_w = tl.exp(b_Gl - b_G) * (b_P * b_Pl)
    b_dl = tl.exp(b_Gl) * b_Pl
    b_D = tl.exp(tl.where(cj <= ri, b_G[:, None] - b_G[None, :], float("-inf"))) * (b_P[:, None] * b_P[None, :])
#else
    b_g, b_G, b_Gl = _gate(g, sgn, p_row, p_last, rows, m_t, m_t, K, BT)
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
    tl.store(dq + p_qrow[:, None] * K + o_k[None, :], b_dq.to(dq.dtype.element_ty), mask=m_q[:, None] & m_k[None, :])
    tl.store(dk + p_row[:, None] * K + o_k[None, :], b_dk.to(dk.dtype.element_ty), mask=m_tk)
'''
