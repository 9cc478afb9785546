"""Layout variants of the delta rule's forward state pass (no varlen, no initial or final state), for
sweep_delta_fwd_h.py: the state as one [K, BV] tile or two [K/2, BV] halves (KSPLIT, as fla's kernel
holds it), keys loaded transposed from memory or transposed in registers (KT), and a scalar gate's row
factor applied to the [BT, BV] new values (as chunk.py now does)."""
import triton
import triton.language as tl


@triton.jit
def fwd_h_variant(k, u, w, g, h, vn, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                  BV: tl.constexpr, KSPLIT: tl.constexpr, KT: tl.constexpr, USE_G: tl.constexpr):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos = i_n.to(tl.int64) * T
    NT = tl.cdiv(T, BT)
    s0 = i_n.to(tl.int64) * NT
    BK: tl.constexpr = K // KSPLIT
    rows = tl.arange(0, BT)
    o_v = i_v * BV + tl.arange(0, BV)
    o_k1 = tl.arange(0, BK)
    o_k2 = BK + o_k1
    b_S1 = tl.zeros([BK, BV], dtype=tl.float32)
    b_S2 = tl.zeros([BK, BV], dtype=tl.float32)
    DT = h.dtype.element_ty
    for i_t in range(0, NT):
        p_h = h + ((s0 + i_t) * H + i_h) * K * V
        tl.store(p_h + o_k1[:, None] * V + o_v[None, :], b_S1.to(DT))
        if KSPLIT == 2:
            tl.store(p_h + o_k2[:, None] * V + o_v[None, :], b_S2.to(DT))
        p_row = (bos + i_t * BT + rows) * H + i_h
        # v' = u - w S
        b_v = tl.dot(tl.load(w + p_row[:, None] * K + o_k1[None, :]), b_S1.to(DT))
        if KSPLIT == 2:
            b_v = tl.dot(tl.load(w + p_row[:, None] * K + o_k2[None, :]), b_S2.to(DT), b_v)
        b_v = tl.load(u + p_row[:, None] * V + o_v[None, :]).to(tl.float32) - b_v
        tl.store(vn + p_row[:, None] * V + o_v[None, :], b_v.to(DT))
        if USE_G:   # g holds the within-chunk cumulative log gate
            b_G = tl.load(g + p_row)
            b_Gl = tl.load(g + (bos + i_t * BT + BT - 1) * H + i_h)
            b_v = b_v * tl.exp(b_Gl - b_G)[:, None]
            b_S1 = b_S1 * tl.exp(b_Gl)
            if KSPLIT == 2:
                b_S2 = b_S2 * tl.exp(b_Gl)
        b_vd = b_v.to(DT)
        # S <- S + k^T v'
        if KT:
            b_S1 = tl.dot(tl.load(k + p_row[None, :] * K + o_k1[:, None]), b_vd, b_S1)
            if KSPLIT == 2:
                b_S2 = tl.dot(tl.load(k + p_row[None, :] * K + o_k2[:, None]), b_vd, b_S2)
        else:
            b_S1 = tl.dot(tl.trans(tl.load(k + p_row[:, None] * K + o_k1[None, :])), b_vd, b_S1)
            if KSPLIT == 2:
                b_S2 = tl.dot(tl.trans(tl.load(k + p_row[:, None] * K + o_k2[None, :])), b_vd, b_S2)
