"""Host side of the chunked delta rule (wy.py's kernels around chunk.py's delta-variant state passes):
launches, a torch custom op with fake and autograd (torch.compile sees one opaque op), and an
autograd.Function for eager calls. DeltaProduct's n_h reflections per token run as a sequence of
T * n_h steps that the kernels read in place: k, v, beta [B, T, H, n_h, ..] hold step t * n_h + j at
(t, j) (the kernels' NH = n_h), and q, o [B, T, H, ..] belong to each token's last step. No interleaved
copy of the inputs is made, and no output is formed for the steps without a query.

Forward: wy_fwd (T, w, u per chunk) -> chunk_fwd_h (delta: v' = u - w S while passing the state) ->
chunk_fwd_o with v' for v. Backward: chunk_bwd_dv (intra-chunk part of dv') -> chunk_bwd_dh (delta:
completes dv', state gradients) -> chunk_bwd_dqkg with v' for v (dq, the attention share of dk and dg)
-> wy_bwd (dk's WY share, dv, dbeta, dg's WY share).
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Optional

import torch

from .chunk import load as load_chunk
from .chunk_launch import _precision, _tables, chunk_cumulative_gate, configs
from .wy import load as load_wy
from .ints import cdiv, next_power_of_2

BT = 64   # steps per chunk (tokens when n_h = 1; the chunk kernels' tiles assume 64)


def _blocks(K: int, V: int, state_bytes: int = 2) -> tuple[int, int, int, int, int, int]:
    """(BK, BV, BV of the forward state pass, warps of the state passes, warps of the WY kernels, pipeline
    stages of the state passes) for chunk states of `state_bytes` per element (2: bf16, 4: fp32 for
    fp16/fp32 inputs):
    every key in one program (v' = u - w S contracts the whole key axis), value blocks small enough to
    keep S in registers. Each pipeline stage buffers [64, K] tiles in shared memory: with fp32 states
    3 stages need 311-328 KB at K = 128 and 2 need 287-410 KB at K = 256 (sm_90 builds, limit 227 KB), so
    the stages drop to 2 and 1 there (tests/test_triton_delta_chunk.py checks the builds' footprints).
    On an H100 at (4, 4096, 16, 128) 4 warps for the WY kernels beat 8 (wy_fwd 0.26 vs 0.38 ms, wy_bwd
    0.25 vs 0.40). An H200 sweep at DeltaProduct n_h = 2, (8, 1024, 8, 64)
    (benchmarks/results/2026-11-26h_h200_sweep_delta_state_small.jsonl) found value blocks of 32 with 4
    stages 0.016 ms faster per forward+backward than these defaults, but the fp32 GPU test of deltanet
    then failed at 1e-4 (and at K = 128, 2 warps with 2-4 stages ran 20-50x slower and one of them hit an
    illegal address), so the defaults stay. The forward pass alone takes value blocks of 64 with bf16
    states at K = 128: 0.109 against 0.140 ms at (4, 4096, 16, 128) on an H200, level with fla's 0.110
    (benchmarks/results/2026-11-26u_h200_fwdh_sweep.jsonl; the backward pass is slower with them).
    RECDSL_DELTA_BLOCKS="BV,warps,wy_warps[,stages]" overrides (BV for both passes)."""
    BK = max(16, next_power_of_2(K))
    BV = min(max(16, next_power_of_2(V)), 64 if BK <= 64 else 32)
    BVF = min(max(16, next_power_of_2(V)), 64) if state_bytes == 2 and BK <= 128 else BV
    warps, wy_warps = 4, 4
    stages = 3 if BK * state_bytes <= 256 else 2 if BK * state_bytes <= 512 else 1
    text = os.environ.get("RECDSL_DELTA_BLOCKS")
    if text:
        BV, warps, wy_warps, *rest = map(int, text.split(","))
        BVF = BV
        stages = rest[0] if rest else stages
    return BK, BV, BVF, warps, wy_warps, stages


@dataclass(frozen=True)
class _LaunchConfig:
    """What the forward's and the backward's launches of one call share."""
    chunk: object            # chunk.py's delta variant (imported module)
    wy: object               # wy.py's module
    cfg: dict                # tiles of the reused chunk kernels
    cdt: torch.dtype         # storage dtype of w, u, v' and the chunk states
    prec: str                # dot input precision
    varlen: bool
    N: int                   # sequences
    cu: Optional[torch.Tensor]           # sequence boundaries in steps (cu_seqlens * NH), the kernels' unit
    chunk_offsets: Optional[torch.Tensor]
    chunk_indices: Optional[torch.Tensor]
    TS: int                  # steps per sequence (T * NH)
    NS: int                  # chunk states
    NC: int                  # chunks per grid row
    BH: int                  # grid rows
    BK: int
    BV: int
    BVF: int                 # value block of the forward state pass
    warps: int               # of the state passes
    wy_warps: int            # of the WY kernels
    stages: int              # software-pipeline stages of the state passes


def _launch_config(k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor],
                   cu_seqlens: Optional[torch.Tensor]) -> _LaunchConfig:
    """k [B, T, H, NH, K], v [B, T, H, NH, V]; cu_seqlens counts tokens."""
    B, T, H, NH, K = k.shape
    gate = "none" if g is None else "scalar"
    if cu_seqlens is None:   # a pure function of the shapes: formed once per shape (host time per call)
        return _dense_config(B, T, H, NH, K, v.shape[-1], gate, k.dtype, os.environ.get("RECDSL_DELTA_BLOCKS"))
    return _config(B, T, H, NH, K, v.shape[-1], gate, k.dtype, cu_seqlens)


def _config(B, T, H, NH, K, V, gate, dtype, cu_seqlens) -> _LaunchConfig:
    cdt, prec = _precision(dtype)
    cu = cu_seqlens if cu_seqlens is None or NH == 1 else cu_seqlens * NH
    N, chunk_offsets, chunk_indices, NS, NC, BH = _tables(cu, B, T * NH, H, BT)
    return _LaunchConfig(load_chunk(gate, False, delta=True), load_wy(gate), configs(gate, K, V, BT), cdt, prec,
                         cu_seqlens is not None, N, cu, chunk_offsets, chunk_indices, T * NH, NS, NC, BH,
                         *_blocks(K, V, cdt.itemsize))


@functools.lru_cache(maxsize=64)
def _dense_config(B, T, H, NH, K, V, gate, dtype, blocks_env) -> _LaunchConfig:
    """_config without cu_seqlens; blocks_env (RECDSL_DELTA_BLOCKS) is part of the key."""
    return _config(B, T, H, NH, K, V, gate, dtype, None)


def _fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g: Optional[torch.Tensor],
         scale: float, h0: Optional[torch.Tensor], output_final_state: bool,
         cu_seqlens: Optional[torch.Tensor]
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """q [B,T,H,K]; k, v, beta, g per step ([B,T,H,NH,..]). (o, final state (or empty), T, w, h (chunk-start
    states), v')."""
    B, T, H, NH, K = k.shape
    V = v.shape[-1]
    lc = _launch_config(k, v, g, cu_seqlens)
    cu = lc.cu
    if g is not None:   # every kernel reads the gate as its within-chunk cumulative sum
        g = chunk_cumulative_gate(lc.chunk, g, cu, lc.chunk_indices, lc.NC, lc.BH, BT, lc.varlen, NH)
    Tm = torch.empty(B, T, H, NH, BT, dtype=torch.float32, device=k.device)
    w = k.new_empty(k.shape, dtype=lc.cdt)
    u = k.new_empty(v.shape, dtype=lc.cdt)
    vn = torch.empty_like(u)
    h = k.new_empty(lc.NS, H, K, V, dtype=lc.cdt)
    ht = k.new_empty((lc.N, H, K, V) if output_final_state else (0,), dtype=torch.float32)
    o = q.new_empty(B, T, H, V)
    if lc.NS > 0:
        lc.wy.wy_diag_inverse[(4 * lc.NC, lc.BH)](
            k, beta, g, Tm, cu, lc.chunk_indices, lc.TS, H=H, K=K, BT=BT, BK=lc.BK, IS_VARLEN=lc.varlen,
            PREC=lc.prec, NH=NH, num_warps=1)
        lc.wy.wy_fwd[(lc.NC, lc.BH)](
            k, v, beta, g, Tm, w, u, cu, lc.chunk_indices, lc.TS, H=H, K=K, V=V, BT=BT, BK=lc.BK, BV=lc.BV,
            IS_VARLEN=lc.varlen, PREC=lc.prec, NH=NH, BKW=min(lc.BK, 64), num_warps=lc.wy_warps)
    if lc.N > 0:
        lc.chunk.chunk_fwd_h[(1, cdiv(V, lc.BVF), lc.N * H)](
            k, u, g, None, h0, h, ht, cu, lc.chunk_offsets, lc.TS, w, vn, H=H, K=K, V=V, BT=BT, BK=lc.BK,
            BV=lc.BVF, USE_H0=h0 is not None, STORE_HT=output_final_state, IS_VARLEN=lc.varlen, PREC=lc.prec,
            NH=NH, num_warps=lc.warps, num_stages=lc.stages)
    oBK, oBV, ow, ost = lc.cfg["chunk_fwd_o"]
    if lc.NS > 0:
        lc.chunk.chunk_fwd_o[(cdiv(V, oBV), lc.NC, lc.BH)](
            q, k, vn, g, None, h, o, cu, lc.chunk_indices, scale, lc.TS, H=H, K=K, V=V, BT=BT, BK=oBK, BV=oBV,
            LOG2BT=int(math.log2(BT)), IS_VARLEN=lc.varlen, PREC=lc.prec, NH=NH, num_warps=ow, num_stages=ost)
    return o, ht, Tm, w, h, vn


delta_chunk_fwd = torch.library.custom_op("recdsl::delta_chunk_fwd", _fwd, mutates_args=())


@delta_chunk_fwd.register_fake
def _(q, k, v, beta, g, scale, h0, output_final_state, cu_seqlens):
    B, T, H, NH, K = k.shape
    V = v.shape[-1]
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    NS = B * cdiv(T * NH, BT) if cu_seqlens is None else torch.library.get_ctx().new_dynamic_size()
    cdt = _precision(k.dtype)[0]
    return (q.new_empty(B, T, H, V), k.new_empty((N, H, K, V) if output_final_state else (0,), dtype=torch.float32),
            k.new_empty(B, T, H, NH, BT, dtype=torch.float32), k.new_empty(k.shape, dtype=cdt),
            k.new_empty(NS, H, K, V, dtype=cdt), k.new_empty(v.shape, dtype=cdt))


def _bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g: Optional[torch.Tensor],
         h0: Optional[torch.Tensor], Tm: torch.Tensor, w: torch.Tensor, h: torch.Tensor, vn: torch.Tensor,
         cu_seqlens: Optional[torch.Tensor], do: torch.Tensor, dht: Optional[torch.Tensor],
         scale: float) -> list[torch.Tensor]:
    """[dq, dk, dv, dbeta, dg (empty without g), dh0 (empty without h0)]."""
    B, T, H, NH, K = k.shape
    V = v.shape[-1]
    lc = _launch_config(k, v, g, cu_seqlens)
    cu = lc.cu
    gate = g   # the gradient is g's; the kernels read its within-chunk cumulative sum
    if g is not None:
        g = chunk_cumulative_gate(lc.chunk, g, cu, lc.chunk_indices, lc.NC, lc.BH, BT, lc.varlen, NH)
    LOG2BT = int(math.log2(BT))
    do = do.contiguous()
    dht = None if dht is None else dht.contiguous()
    dvl = torch.empty_like(vn)                       # intra-chunk part of dv'
    dvn = torch.empty_like(vn)                       # full dv'
    dh = k.new_empty(lc.NS, H, K, V, dtype=lc.cdt)
    dh0 = k.new_empty((lc.N, H, K, V) if h0 is not None else (0,), dtype=torch.float32)
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    dbeta = torch.empty_like(beta)                   # the kernels compute in fp32 and store in beta's dtype
    oBK, oBV, ow, ost = lc.cfg["chunk_bwd_dv"]
    if lc.NS > 0:
        lc.chunk.chunk_bwd_dv[(cdiv(V, oBV), lc.NC, lc.BH)](
            q, k, g, None, do, h, dvl, cu, lc.chunk_indices, scale, lc.TS, H=H, K=K, V=V, BT=BT, BK=oBK,
            BV=oBV, LOG2BT=LOG2BT, IS_VARLEN=lc.varlen, PREC=lc.prec, USE_DH=False, NH=NH, num_warps=ow,
            num_stages=ost)
    if lc.N > 0:
        lc.chunk.chunk_bwd_dh[(1, cdiv(V, lc.BV), lc.N * H)](
            q, g, None, do, dht, dh, dh0 if h0 is not None else None, cu, lc.chunk_offsets, scale, lc.TS,
            k, w, dvl, dvn, H=H, K=K, V=V, BT=BT, BK=lc.BK, BV=lc.BV, USE_DHT=dht is not None,
            STORE_DH0=h0 is not None, IS_VARLEN=lc.varlen, PREC=lc.prec, NH=NH, num_warps=lc.warps,
            num_stages=lc.stages)
    qBK, qBV, qw, qst = lc.cfg["chunk_bwd_dqkg"]
    NK = cdiv(K, qBK)
    dg_part = None if g is None else torch.empty((NK,) + tuple(g.shape), dtype=torch.float32, device=k.device)
    dg = None if g is None else torch.zeros(g.shape, dtype=torch.float32, device=k.device)
    if lc.NS > 0:
        steps = B * lc.TS * H
        lc.chunk.chunk_bwd_dqkg[(NK, lc.NC, lc.BH)](
            q, k, vn, g, None, h, do, dh, dq, dk, dg_part, cu, lc.chunk_indices, scale, lc.TS, steps, H=H,
            K=K, V=V, BT=BT, BK=qBK, BV=qBV, LOG2BT=LOG2BT, IS_VARLEN=lc.varlen, PREC=lc.prec, NH=NH,
            num_warps=qw, num_stages=qst)
        lc.wy.wy_bwd[(lc.NC, lc.BH)](
            k, v, beta, g, Tm, h, dvn, dk, dv, dbeta, dg, dg_part, cu, lc.chunk_indices, lc.TS, steps,
            H=H, K=K, V=V, BT=BT, BK=lc.BK, BV=lc.BV, NKP=NK, IS_VARLEN=lc.varlen, PREC=lc.prec, NH=NH,
            num_warps=lc.wy_warps)
    else:
        dq.zero_(), dk.zero_(), dv.zero_(), dbeta.zero_()
    dg = k.new_empty((0,)) if gate is None else dg.to(gate.dtype)
    return [dq, dk, dv, dbeta, dg, dh0]


delta_chunk_bwd = torch.library.custom_op("recdsl::delta_chunk_bwd", _bwd, mutates_args=())


@delta_chunk_bwd.register_fake
def _(q, k, v, beta, g, h0, Tm, w, h, vn, cu_seqlens, do, dht, scale):
    return [torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(beta),
            torch.empty_like(g) if g is not None else k.new_empty((0,)),
            torch.empty_like(h0, dtype=torch.float32) if h0 is not None else k.new_empty((0,), dtype=torch.float32)]


def _setup_context(ctx, inputs, output):
    q, k, v, beta, g, scale, h0, _, cu_seqlens = inputs
    ctx.save_for_backward(q, k, v, beta, g, h0, *output[2:], cu_seqlens)
    ctx.scale = scale


def _backward_with(bwd):
    def backward(ctx, do, dht, *_):
        q, k, v, beta, g, h0, Tm, w, h, vn, cu_seqlens = ctx.saved_tensors
        dht = dht if dht is not None and dht.numel() else None
        if do is None:   # only the final state reaches the loss
            do = q.new_zeros(*q.shape[:-1], v.shape[-1])
        dq, dk, dv, dbeta, dg, dh0 = bwd(q, k, v, beta, g, h0, Tm, w, h, vn, cu_seqlens, do, dht, ctx.scale)
        return (dq, dk, dv, dbeta, dg if g is not None else None, None,
                dh0.to(h0.dtype) if h0 is not None else None, None, None)
    return backward


delta_chunk_fwd.register_autograd(_backward_with(delta_chunk_bwd), setup_context=_setup_context)


class _EagerDeltaChunk(torch.autograd.Function):
    """delta_chunk_fwd / delta_chunk_bwd without the custom-op dispatch (outside torch.compile)."""
    @staticmethod
    def forward(ctx, *inputs):
        out = _fwd(*inputs)
        _setup_context(ctx, inputs, out)
        ctx.mark_non_differentiable(*out[2:])
        ctx.set_materialize_grads(False)
        return out

    backward = staticmethod(_backward_with(_bwd))


def chunk_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                     g: Optional[torch.Tensor] = None, scale: Optional[float] = None,
                     initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False,
                     cu_seqlens: Optional[torch.Tensor] = None):
    """Chunked delta rule with n_h reflections per token and an optional scalar log gate:

        S <- exp(g_t) S;  for j = 1..n_h:  S <- S + beta_tj k_tj (v_tj - S^T k_tj)^T;   o_t = scale * S^T q_t

    q [B,T,H,K]; k [B,T,H,K] or [B,T,H,n_h,K]; v [B,T,H,V] or [B,T,H,n_h,V]; beta [B,T,H] or [B,T,H,n_h];
    g [B,T,H] (log space, fp32) or None; initial_state [N,H,K,V]; cu_seqlens [N+1] (B == 1).
    Returns (o [B,T,H,V], final state fp32 [N,H,K,V] or None), differentiable in every tensor input.
    Keys are used as given (normalise them first where the model says so).
    """
    if q.dim() != 4:
        raise ValueError(f"q must be [B,T,H,K], got {tuple(q.shape)}")
    B, T, H, K = q.shape
    n_h = 1 if k.dim() == 4 else k.shape[3]
    kshape = (B, T, H, K) if k.dim() == 4 else (B, T, H, n_h, K)
    if tuple(k.shape) != kshape:
        raise ValueError(f"k must be [B,T,H,K] or [B,T,H,n_h,K] = {list(kshape)}, got {tuple(k.shape)}")
    if v.shape[:-1] != k.shape[:-1]:
        raise ValueError(f"v must be {list(k.shape[:-1])} + [V], got {tuple(v.shape)}")
    if tuple(beta.shape) != tuple(k.shape[:-1]):
        raise ValueError(f"beta must be {list(k.shape[:-1])}, got {tuple(beta.shape)}")
    if g is not None and tuple(g.shape) != (B, T, H):
        raise ValueError(f"g must be [B,T,H] = {[B, T, H]}, got {tuple(g.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError("q, k and v must share one dtype")
    V = v.shape[-1]
    if cu_seqlens is not None and B != 1:
        raise ValueError("cu_seqlens needs packed inputs with B == 1")
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    if initial_state is not None and tuple(initial_state.shape) != (N, H, K, V):
        raise ValueError(f"initial_state must be [{N},{H},{K},{V}], got {tuple(initial_state.shape)}")
    scale = K ** -0.5 if scale is None else float(scale)
    if K > 128 and q.dtype != torch.bfloat16 and torch.is_grad_enabled() and any(
            x is not None and x.requires_grad for x in (q, k, v, beta, g, initial_state)):
        raise ValueError(f"the chunked delta rule's backward keeps [64, K] fp32 tiles of keys in shared memory, "
                         f"more than sm_90 has at K = {K} for {q.dtype} inputs: train with bf16 inputs or K <= 128")
    if k.dim() == 4:   # one step per token: the steps' axis of length 1
        k, v, beta = k.unsqueeze(3), v.unsqueeze(3), beta.unsqueeze(3)
    if g is not None:   # per step: the gate sits on each token's first step (it commutes with the reflections)
        g = g.float().unsqueeze(-1) if n_h == 1 else torch.nn.functional.pad(g.float().unsqueeze(-1), (0, n_h - 1))
    out = (delta_chunk_fwd if torch.compiler.is_compiling() else _EagerDeltaChunk.apply)(
        q.contiguous(), k.contiguous(), v.contiguous(), beta.contiguous(),
        None if g is None else g.contiguous(), scale,
        None if initial_state is None else initial_state.float().contiguous(), bool(output_final_state), cu_seqlens)
    return out[0], (out[1] if output_final_state else None)


# --------------------------------------------------------------------------------------------------
# Ahead-of-time compilation (no GPU needed): the variant's kernels with the flags the launches use.
# --------------------------------------------------------------------------------------------------

def aot_jobs(gate: str = "scalar", data: str = "bf16", K: int = 128, V: int = 128, varlen: bool = False,
             kernels: Optional[tuple] = None, n_h: int = 1):
    """[(kernel name, jit function, signature, constexprs, attrs, options)] of the chunked delta rule
    (see chunk_launch.aot_jobs): wy_fwd, wy_bwd, the delta variants of chunk_fwd_h / chunk_bwd_dh, and
    chunk_fwd_o / chunk_bwd_dv (without dh) / chunk_bwd_dqkg as this path launches them, for n_h steps
    per token."""
    from .chunk_launch import FP32_DOT_PRECISION, _aot_job
    chunk, wy = load_chunk(gate, False, delta=True), load_wy(gate)
    state = "bf16" if data == "bf16" else "fp32"
    prec = {"bf16": "ieee", "fp16": "tf32", "fp32": FP32_DOT_PRECISION}[data]
    BK, BV, BVF, warps, wy_warps, stages = _blocks(K, V, 2 if data == "bf16" else 4)
    cfg = configs(gate, K, V, BT)
    base = dict(H=16, K=K, V=V, BT=BT, IS_VARLEN=varlen, PREC=prec, NH=n_h)
    stored = {"w", "u", "vn", "dvn", "dv2", "dv"}   # kept in the storage dtype by these launches
    launches = [
        ("wy_diag_inverse", wy.wy_diag_inverse, dict(BK=BK), 1, 1, {"Tm": "fp32"}),
        ("wy_fwd", wy.wy_fwd, dict(BK=BK, BV=BV, BKW=min(BK, 64)), wy_warps, 1, {"Tm": "fp32", "w": state, "u": state}),
        ("wy_bwd", wy.wy_bwd, dict(BK=BK, BV=BV, NKP=cdiv(K, cfg["chunk_bwd_dqkg"][0])), wy_warps, 1,
         {"Tm": "fp32", "dvn": state, "dg_part": "fp32"}),
        ("chunk_fwd_h", chunk.chunk_fwd_h, dict(BK=BK, BV=BVF, USE_H0=True, STORE_HT=True), warps, stages,
         {"v": state, "w": state, "vn": state}),
        ("chunk_bwd_dh", chunk.chunk_bwd_dh, dict(BK=BK, BV=BV, USE_DHT=True, STORE_DH0=True), warps, stages,
         {n: state for n in stored}),
        ("chunk_fwd_o", chunk.chunk_fwd_o, dict(zip(("BK", "BV"), cfg["chunk_fwd_o"][:2]), LOG2BT=6),
         *cfg["chunk_fwd_o"][2:], {"v": state}),
        ("chunk_bwd_dv", chunk.chunk_bwd_dv, dict(zip(("BK", "BV"), cfg["chunk_bwd_dv"][:2]), LOG2BT=6, USE_DH=False),
         *cfg["chunk_bwd_dv"][2:], {"dv": state}),
        ("chunk_bwd_dqkg", chunk.chunk_bwd_dqkg, dict(zip(("BK", "BV"), cfg["chunk_bwd_dqkg"][:2]), LOG2BT=6),
         *cfg["chunk_bwd_dqkg"][2:], {"v": state}),
    ]
    if gate == "scalar":
        launches.append(("chunk_gate_cumsum", chunk.chunk_gate_cumsum, {}, 4, 1, {}))
    if kernels is not None:
        launches = [x for x in launches if x[0] in kernels]
    jobs = []
    for name, fn, const, w, stages, types in launches:
        const = {n: c for n, c in {**base, **const}.items() if n in fn.arg_names}
        job = _aot_job(name, fn, const, data, state, dict(num_warps=w, num_stages=stages))
        job[2].update({n: "*" + t for n, t in types.items() if n in job[2]})
        jobs.append(job)
    return jobs
