"""Host side of the chunkwise kernels of chunk.py: tile configs, varlen tables, launches, and a torch
custom op (forward, backward, fake) so torch.compile(fullgraph=True) sees one opaque op. Eager calls
take an autograd.Function over the same launches (the custom op's dispatch costs more host time than
small shapes' kernels)."""
from __future__ import annotations

import json
import math
import os
from typing import Optional

import torch

from .chunk import FP32_DOT_PRECISION, load
from .ints import cdiv, next_power_of_2

# --------------------------------------------------------------------------------------------------
# Launch configuration: fixed tiles per head size (no autotuning).
# --------------------------------------------------------------------------------------------------

# Per-kernel (BK, BV, num_warps, num_stages) overrides for tuning on a GPU, e.g.
# RECDSL_CHUNK_CONFIG='{"chunk_fwd_o": [32, 128, 8, 2]}'; BK/BV are capped at the padded K/V.
CONFIG_OVERRIDES: dict = {k: tuple(v) for k, v in json.loads(os.environ.get("RECDSL_CHUNK_CONFIG", "{}")).items()}


def _p2(x: int) -> int:
    return max(16, next_power_of_2(int(x)))


def configs(decay: str, K: int, V: int, BT: int) -> dict:
    """(BK, BV, num_warps, num_stages) per kernel. Sequential passes use small state blocks (more
    programs in flight); parallel kernels use tiles that keep the fp32 accumulators in registers."""
    pK, pV = _p2(K), _p2(V)
    sK, sV = min(pK, 64 if K > 64 else 32), min(pV, 64 if V > 64 else 32)
    state = (sK, sV, 4, 2)
    if decay == "perkey":
        # the exact intra-chunk split keeps several [BT, BK] factors live: narrow key blocks, 8 warps
        out = (min(pK, 32), min(pV, 128), 8, 2)
        dqk = (min(pK, 32), min(pV, 64), 8, 2)
    else:
        oV = min(pV, 128)
        # 8 warps also for 32-wide value blocks: with 4 warps Triton 3.6's sm_90 build of chunk_fwd_o faulted
        # on an H100 (an out-of-range shared address in its q k^T product at K = 40, V = 24, with or without
        # cu_seqlens, depending on where the tensors lay), which 8 warps did not
        # (benchmarks/results/2026-11-26zv_h100_chunk_fwd_o_fault.txt)
        out = (min(pK, 64), oV, 8 if oV * BT >= 8192 or oV <= 32 else 4, 2)
        dK = min(pK, 64)
        # value blocks no wider than the key block: with BV > BK (K <= 32, V > K) Triton 3.6's sm_90 build of
        # chunk_bwd_dqkg gave gradients with relative errors of 0.6 to 9.5 on an H100; not yet rerun there with
        # this cap
        # (benchmarks/results/2026-11-26zz_h100_stress_chunk_shapes.txt)
        dqk = (dK, min(pV, 64, dK), 8 if dK * BT >= 4096 else 4, 2)
    cfg = dict(chunk_fwd_h=state, chunk_fwd_o=out, chunk_bwd_dh=state, chunk_bwd_dv=out, chunk_bwd_dqkg=dqk)
    if decay != "perkey":
        # the one-launch forward holds every key: parallel over value blocks and sequences only
        cfg["chunk_fwd_fused"] = (pK, min(pV, 32), 4, 2)
    for name, c in CONFIG_OVERRIDES.items():
        BK, BV, w, st = c
        cfg[name] = (min(pK, BK), min(pV, BV), w, st)
    return cfg


def _precision(dtype: torch.dtype) -> tuple[torch.dtype, str]:
    """Storage dtype of chunk states / dot operands, and the dot input precision."""
    if dtype == torch.bfloat16:
        return torch.bfloat16, "ieee"            # bf16 tensor-core dots, fp32 accumulation
    if dtype == torch.float16:
        return torch.float32, "tf32"             # fp16 data is exact in tf32; keeps fp32 range
    return torch.float32, FP32_DOT_PRECISION


def _varlen_tables(cu_seqlens: torch.Tensor, BT: int):
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    nck = [(int(n) + BT - 1) // BT for n in lens]
    offs = [0]
    for c in nck:
        offs.append(offs[-1] + c)
    idx = [(n, c) for n, cnt in enumerate(nck) for c in range(cnt)]
    dev = cu_seqlens.device
    chunk_offsets = torch.tensor(offs, dtype=torch.int32, device=dev)
    chunk_indices = torch.tensor(idx if idx else [(0, 0)], dtype=torch.int32, device=dev).reshape(-1)
    return chunk_offsets, chunk_indices, offs[-1]


def chunk_cumulative_gate(mod, g: torch.Tensor, cu_seqlens, chunk_indices, NC: int, BH: int, BT: int,
                          varlen: bool, NH: int = 1) -> torch.Tensor:
    """A scalar log gate g [B,T,H] (or per step, [B,T,H,NH]) as its inclusive cumulative sum within each
    chunk of steps (fp32), which the scalar variants' kernels read in place of g (mod: a chunk.py module
    of a scalar variant; cu_seqlens in steps)."""
    G = torch.empty(g.shape, dtype=torch.float32, device=g.device)
    if G.numel():
        mod.chunk_gate_cumsum[(NC, BH)](g, G, cu_seqlens, chunk_indices, g.shape[1] * NH, H=g.shape[2], BT=BT,
                                        IS_VARLEN=varlen, NH=NH)
    return G


def _tables(cu_seqlens, B, T, H, BT):
    """(N sequences, chunk_offsets, chunk_indices, chunk states NS, chunks per grid row NC, grid rows BH)
    for T steps per row of the batch. The kernels offset rows within a sequence in int32
    (chunk_parts._step_row), so T * H must stay below 2^31."""
    if isinstance(T, int) and T * H >= 2 ** 31:
        raise ValueError(f"{T} steps with {H} heads: the chunked kernels' row offsets within a sequence are "
                         f"int32 (steps * heads < 2^31); split the sequence, or pack fewer tokens per call")
    if cu_seqlens is None:
        return B, None, None, B * cdiv(T, BT), cdiv(T, BT), B * H
    chunk_offsets, chunk_indices, NS = _varlen_tables(cu_seqlens, BT)
    return cu_seqlens.numel() - 1, chunk_offsets, chunk_indices, NS, NS, H


def _chunk_gates(mod, q, g, sign, cu_seqlens, chunk_indices, NS: int, NC: int, BH: int, BT: int, decay: str):
    """What the forward kernels read in place of the gate: a scalar decay's within-chunk cumulative sum,
    and the signs' running product within each chunk (int8, kept for the backward; empty when
    unsigned), once per call."""
    B, T, H, K = q.shape
    varlen = cu_seqlens is not None
    parity = q.new_empty((0,), dtype=torch.int8)
    if sign is not None:
        parity = torch.empty_like(sign)
        if NS > 0:
            mod.chunk_sign_parity[(NC, BH)](sign, parity, cu_seqlens, chunk_indices, T, H=H, K=K, BT=BT,
                                            BK=min(_p2(K), 64), IS_VARLEN=varlen)
    if decay == "scalar":
        g = chunk_cumulative_gate(mod, g, cu_seqlens, chunk_indices, NC, BH, BT, varlen)
    return g, parity


def _chunk_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor],
              sign: Optional[torch.Tensor], scale: float, h0: Optional[torch.Tensor], output_final_state: bool,
              cu_seqlens: Optional[torch.Tensor], BT: int, decay: str
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(o, final state or an empty tensor, chunk-start states and the chunks' cumulative signs (empty
    when unsigned), both kept for the backward)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    mod = load(decay, sign is not None)
    cfg = configs(decay, K, V, BT)
    cdt, prec = _precision(q.dtype)
    varlen = cu_seqlens is not None
    N, chunk_offsets, chunk_indices, NS, NC, BH = _tables(cu_seqlens, B, T, H, BT)
    g, parity = _chunk_gates(mod, q, g, sign, cu_seqlens, chunk_indices, NS, NC, BH, BT, decay)
    sign = parity if sign is not None else None
    h = q.new_empty(NS, H, K, V, dtype=cdt)
    ht = q.new_empty((N, H, K, V) if output_final_state else (0,), dtype=torch.float32)
    o = torch.empty_like(v)
    BK, BV, w, st = cfg["chunk_fwd_h"]
    if N > 0:
        mod.chunk_fwd_h[(cdiv(K, BK), cdiv(V, BV), N * H)](
            k, v, g, sign, h0, h, ht, cu_seqlens, chunk_offsets, T, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV,
            USE_H0=h0 is not None, STORE_HT=output_final_state, IS_VARLEN=varlen, PREC=prec,
            num_warps=w, num_stages=st)
    BK, BV, w, st = cfg["chunk_fwd_o"]
    if NS > 0:
        mod.chunk_fwd_o[(cdiv(V, BV), NC, BH)](
            q, k, v, g, sign, h, o, cu_seqlens, chunk_indices, scale, T, H=H, K=K, V=V, BT=BT, BK=BK,
            BV=BV, LOG2BT=int(math.log2(BT)), IS_VARLEN=varlen, PREC=prec, num_warps=w, num_stages=st)
    return o, ht, h, parity


chunk_fwd = torch.library.custom_op("recdsl::chunk_fwd", _chunk_fwd, mutates_args=())


def fused_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor],
                  sign: Optional[torch.Tensor], scale: float, h0: Optional[torch.Tensor], output_final_state: bool,
                  cu_seqlens: Optional[torch.Tensor], BT: int, decay: str):
    """(o, final state or None) in one launch of chunk_fwd_fused, for calls that record no backward
    (arguments as _chunk_fwd takes them): no chunk states are stored, so nothing is kept for a backward."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    mod = load(decay, sign is not None)
    BK, BV, w, st = configs(decay, K, V, BT)["chunk_fwd_fused"]
    varlen = cu_seqlens is not None
    N, chunk_offsets, chunk_indices, NS, NC, BH = _tables(cu_seqlens, B, T, H, BT)
    g, parity = _chunk_gates(mod, q, g, sign, cu_seqlens, chunk_indices, NS, NC, BH, BT, decay)
    ht = q.new_empty((N, H, K, V) if output_final_state else (0,), dtype=torch.float32)
    o = torch.empty_like(v)
    if N > 0:
        mod.chunk_fwd_fused[(cdiv(V, BV), N * H)](
            q, k, v, g, parity if sign is not None else None, h0, o, ht, cu_seqlens, chunk_offsets, scale, T,
            H=H, K=K, V=V, BT=BT, BK=max(BK, _p2(K)), BV=BV, LOG2BT=int(math.log2(BT)), USE_H0=h0 is not None,
            STORE_HT=output_final_state, IS_VARLEN=varlen, PREC=_precision(q.dtype)[1],
            DOT_BF16=q.dtype == torch.bfloat16, num_warps=w, num_stages=st)
    return o, (ht if output_final_state else None)


@chunk_fwd.register_fake
def _(q, k, v, g, sign, scale, h0, output_final_state, cu_seqlens, BT, decay):
    B, T, H, K = q.shape
    V = v.shape[-1]
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    NS = B * cdiv(T, BT) if cu_seqlens is None else torch.library.get_ctx().new_dynamic_size()
    return (torch.empty_like(v), q.new_empty((N, H, K, V) if output_final_state else (0,), dtype=torch.float32),
            q.new_empty(NS, H, K, V, dtype=_precision(q.dtype)[0]),
            torch.empty_like(sign) if sign is not None else q.new_empty((0,), dtype=torch.int8))


def _chunk_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor],
              parity: Optional[torch.Tensor], h0: Optional[torch.Tensor], h: torch.Tensor,
              cu_seqlens: Optional[torch.Tensor], do: torch.Tensor, dht: Optional[torch.Tensor], scale: float,
              BT: int, decay: str) -> list[torch.Tensor]:
    """[dq, dk, dv, dg (empty without g), dh0 (empty without h0)]; parity: the forward's cumulative signs."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    sign = parity
    mod = load(decay, sign is not None)
    cfg = configs(decay, K, V, BT)
    cdt, prec = _precision(q.dtype)
    varlen = cu_seqlens is not None
    N, chunk_offsets, chunk_indices, NS, NC, BH = _tables(cu_seqlens, B, T, H, BT)
    gate = g   # the gradient is g's; a scalar gate reaches the kernels as its chunk-wise cumulative sum
    if decay == "scalar":
        g = chunk_cumulative_gate(mod, g, cu_seqlens, chunk_indices, NC, BH, BT, varlen)
    do = do.contiguous()
    dht = None if dht is None else dht.contiguous()
    dh = q.new_empty(NS, H, K, V, dtype=cdt)
    dh0 = q.new_empty((N, H, K, V) if h0 is not None else (0,), dtype=torch.float32)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    BK, BV, w, st = cfg["chunk_bwd_dh"]
    if N > 0:
        mod.chunk_bwd_dh[(cdiv(K, BK), cdiv(V, BV), N * H)](
            q, g, sign, do, dht, dh, dh0 if h0 is not None else None, cu_seqlens, chunk_offsets, scale, T, H=H,
            K=K, V=V, BT=BT, BK=BK, BV=BV, USE_DHT=dht is not None, STORE_DH0=h0 is not None, IS_VARLEN=varlen,
            PREC=prec, num_warps=w, num_stages=st)
    BK, BV, w, st = cfg["chunk_bwd_dv"]
    if NS > 0:
        mod.chunk_bwd_dv[(cdiv(V, BV), NC, BH)](
            q, k, g, sign, do, dh, dv, cu_seqlens, chunk_indices, scale, T, H=H, K=K, V=V, BT=BT, BK=BK,
            BV=BV, LOG2BT=int(math.log2(BT)), IS_VARLEN=varlen, PREC=prec, num_warps=w, num_stages=st)
    BK, BV, w, st = cfg["chunk_bwd_dqkg"]
    NK = cdiv(K, BK)
    # a scalar decay's gradient is summed over the NK key blocks afterwards
    dg = (q.new_empty((0,)) if decay == "none" else
          torch.empty(g.shape, dtype=torch.float32, device=q.device) if decay == "perkey" else
          torch.empty((NK,) + tuple(g.shape), dtype=torch.float32, device=q.device))
    if NS > 0:
        mod.chunk_bwd_dqkg[(NK, NC, BH)](
            q, k, v, g, sign, h, do, dh, dq, dk, dg if decay != "none" else None, cu_seqlens, chunk_indices,
            scale, T, B * T * H, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, LOG2BT=int(math.log2(BT)), IS_VARLEN=varlen,
            PREC=prec, num_warps=w, num_stages=st)
    if decay == "scalar":
        dg = dg.sum(0)
    if gate is not None:
        dg = dg.to(gate.dtype)
    return [dq, dk, dv, dg, dh0]


chunk_bwd = torch.library.custom_op("recdsl::chunk_bwd", _chunk_bwd, mutates_args=())


@chunk_bwd.register_fake
def _(q, k, v, g, parity, h0, h, cu_seqlens, do, dht, scale, BT, decay):
    return [torch.empty_like(q), torch.empty_like(k), torch.empty_like(v),
            torch.empty_like(g) if g is not None else q.new_empty((0,)),
            torch.empty_like(h0, dtype=torch.float32) if h0 is not None else q.new_empty((0,), dtype=torch.float32)]


def _setup_context(ctx, inputs, output):
    q, k, v, g, sign, scale, h0, _, cu_seqlens, BT, decay = inputs
    parity = output[3] if sign is not None else None
    ctx.save_for_backward(q, k, v, g, parity, h0, output[2], cu_seqlens)
    ctx.meta = (scale, BT, decay)


def _backward_with(bwd):
    def backward(ctx, do, dht, _dh, _parity):
        q, k, v, g, parity, h0, h, cu_seqlens = ctx.saved_tensors
        scale, BT, decay = ctx.meta
        dht = dht if dht is not None and dht.numel() else None
        if do is None:   # only the final state reaches the loss
            do = v.new_zeros(v.shape)
        dq, dk, dv, dg, dh0 = bwd(q, k, v, g, parity, h0, h, cu_seqlens, do, dht, scale, BT, decay)
        return (dq, dk, dv, dg if g is not None else None, None, None,
                dh0.to(h0.dtype) if h0 is not None else None, None, None, None, None)
    return backward


chunk_fwd.register_autograd(_backward_with(chunk_bwd), setup_context=_setup_context)


class _EagerChunk(torch.autograd.Function):
    """chunk_fwd / chunk_bwd without the custom-op dispatch (used outside torch.compile)."""
    @staticmethod
    def forward(ctx, *inputs):
        out = _chunk_fwd(*inputs)
        _setup_context(ctx, inputs, out)
        ctx.mark_non_differentiable(out[2], out[3])
        ctx.set_materialize_grads(False)
        return out

    backward = staticmethod(_backward_with(_chunk_bwd))


def _chunk_call(*inputs):
    return chunk_fwd(*inputs) if torch.compiler.is_compiling() else _EagerChunk.apply(*inputs)


INFERENCE = ("chunk", "fused", "recurrent")   # forwards of calls that record no backward


def chunk_linear_recurrence(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor] = None,
                            sign: Optional[torch.Tensor] = None, scale: Optional[float] = None,
                            initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False,
                            cu_seqlens: Optional[torch.Tensor] = None, chunk_size: int = 64,
                            inference: str = "chunk"):
    """Chunkwise S_t = diag(a_t) S_{t-1} + k_t v_t^T, o_t = scale * S_t^T q_t with a_t = sign_t * exp(g_t).

    q, k [B,T,H,K]; v [B,T,H,V]; g [B,T,H,K] (per-key decay) or [B,T,H] (scalar decay) or None, in
    log space (<= 0; fp32 recommended); sign like g (+1/-1) or None, read and saved for the backward as
    int8 (another dtype is converted first, one pass); scale defaults to K ** -0.5;
    initial_state [N,H,K,V]; cu_seqlens [N+1] for packed variable-length sequences (B == 1).
    Returns (o [B,T,H,V], final state fp32 [N,H,K,V] or None). Differentiable in q, k, v, g and
    initial_state. `inference` picks the forward of a call that records no backward (nothing needs a
    gradient) outside torch.compile's tracing: "chunk" the two launches above (chunk states through
    memory), "fused" one launch that walks the chunks with the state in registers (chunk_fwd_fused),
    "recurrent" the fused recurrent kernel (recurrent.py: decoding and short calls).
    """
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"expected q, k [B,T,H,K] and v [B,T,H,V], got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError("q, k and v must share one dtype")
    if chunk_size not in (16, 32, 64):
        raise ValueError("chunk_size must be 16, 32 or 64")
    B, T, H, K = q.shape
    V = v.shape[-1]
    if sign is not None and g is None:
        g = torch.zeros(sign.shape, dtype=torch.float32, device=q.device)
    if g is None:
        decay = "none"
    elif g.dim() == 4 and g.shape == q.shape:
        decay = "perkey"
    elif g.dim() == 3 and g.shape == q.shape[:3]:
        decay = "scalar"
    else:
        raise ValueError(f"g must be [B,T,H,K] or [B,T,H], got {tuple(g.shape)}")
    if sign is not None and sign.shape != g.shape:
        raise ValueError("sign must have the shape of g")
    if inference not in INFERENCE:
        raise ValueError(f"inference must be one of {INFERENCE}, got {inference!r}")
    if inference == "fused" and decay == "perkey":
        raise ValueError("inference='fused' takes a scalar decay or none; per-key decays (g [B,T,H,K]) use "
                         "'chunk' or 'recurrent'")
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError("cu_seqlens needs packed inputs with B == 1")
        N = cu_seqlens.numel() - 1
    else:
        N = B
    if initial_state is not None and tuple(initial_state.shape) != (N, H, K, V):
        raise ValueError(f"initial_state must be [{N},{H},{K},{V}], got {tuple(initial_state.shape)}")
    scale = K ** -0.5 if scale is None else float(scale)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    g = None if g is None else g.contiguous()
    sign = None if sign is None else (sign if sign.dtype == torch.int8 else
                                      torch.where(sign < 0, -1, 1).to(torch.int8)).contiguous()
    h0 = None if initial_state is None else initial_state.contiguous()
    tensors = (q, k, v, g, h0)
    if inference != "chunk" and not torch.compiler.is_compiling() and not (
            torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)):
        if inference == "fused":
            return fused_forward(q, k, v, g, sign, scale, h0, bool(output_final_state), cu_seqlens,
                                 int(chunk_size), decay)
        from .recurrent import recurrent_forward
        return recurrent_forward(q, k, v, g, sign, scale, h0, bool(output_final_state), cu_seqlens, decay)
    o, ht, _, _ = _chunk_call(q, k, v, g, sign, scale, h0, bool(output_final_state), cu_seqlens, int(chunk_size), decay)
    return o, (ht if output_final_state else None)


# --------------------------------------------------------------------------------------------------
# Ahead-of-time compilation (no GPU needed): signatures for triton.compile(ASTSource(...)).
# --------------------------------------------------------------------------------------------------

_DATA = {"q", "k", "v", "o", "do", "dq", "dk", "dv"}


def aot_jobs(decay: str, signed: bool, data: str = "bf16", K: int = 128, V: int = 128, BT: int = 64,
             varlen: bool = False):
    """[(kernel name, jit function, signature, constexprs, attrs, options)] for one variant (the chunked
    kernels, the per-call sign and gate passes, the fused recurrent forward and the Householder-product
    recurrence with the same gate), with q/k/v in `data` ("bf16", "fp16", "fp32"), g fp32, signs int8,
    chunk states in the storage dtype; attrs mark pointers (and T) 16-divisible as the JIT does
    for aligned tensors. Compile one with triton.compile(ASTSource(fn, signature, constexprs, attrs),
    target=GPUTarget("cuda", 90, 32), options=options)."""
    from .recurrent import blocks as recurrent_blocks, load as load_recurrent
    mod = load(decay, signed)
    state = "bf16" if data == "bf16" else "fp32"
    prec = {"bf16": "ieee", "fp16": "tf32", "fp32": FP32_DOT_PRECISION}[data]
    jobs = []
    for name, (BK, BV, warps, stages) in configs(decay, K, V, BT).items():
        const = dict(H=16, K=K, V=V, BT=BT, BK=BK, BV=BV, IS_VARLEN=varlen, PREC=prec)
        if name in ("chunk_fwd_o", "chunk_fwd_fused", "chunk_bwd_dv", "chunk_bwd_dqkg"):
            const["LOG2BT"] = int(math.log2(BT))
        if name in ("chunk_fwd_h", "chunk_fwd_fused"):
            const.update(USE_H0=True, STORE_HT=True)
        if name == "chunk_fwd_fused":
            const["DOT_BF16"] = data == "bf16"
        if name == "chunk_bwd_dh":
            const.update(USE_DHT=True, STORE_DH0=True)
        jobs.append(_aot_job(name, getattr(mod, name), const, data, state, dict(num_warps=warps, num_stages=stages)))
    if signed:
        const = dict(H=16, K=K, BT=BT, BK=min(_p2(K), 64), IS_VARLEN=varlen)
        jobs.append(_aot_job("chunk_sign_parity", mod.chunk_sign_parity, const, data, state, dict(num_warps=4)))
    if decay == "scalar":
        const = dict(H=16, BT=BT, IS_VARLEN=varlen)
        jobs.append(_aot_job("chunk_gate_cumsum", mod.chunk_gate_cumsum, const, data, state, dict(num_warps=4)))
    BK, BV, warps = recurrent_blocks(K, V)
    const = dict(H=16, K=K, V=V, BK=BK, BV=BV, USE_H0=True, STORE_HT=True, IS_VARLEN=varlen)
    fn = load_recurrent(decay, signed).recurrent_fwd
    jobs.append(_aot_job("recurrent_fwd", fn, const, data, state, dict(num_warps=warps)))
    # the Householder-product recurrence with this gate (two reflections per token)
    from .delta import load as load_delta
    fn = load_delta(decay).delta_recurrent_fwd
    jobs.append(_aot_job("delta_recurrent_fwd", fn, {**const, "NH": 2}, data, state, dict(num_warps=warps)))
    return jobs


def _aot_job(name, fn, const, data, state, options):
    # constexpr parameters the caller leaves out take their defaults, as in a launch
    const = {**{p.name: p.default for p in fn.params if p.is_constexpr and p.has_default}, **const}
    sig = {}
    for a in fn.arg_names:
        if a in const:
            sig[a] = "constexpr"
        elif a in ("T",):
            sig[a] = "i32"
        elif a == "dg_stride":
            sig[a] = "i64"
        elif a == "scale":
            sig[a] = "fp32"
        elif a in ("cu_seqlens", "chunk_offsets", "chunk_indices"):
            sig[a] = "*i32"
        elif a in _DATA:
            sig[a] = f"*{data}"
        elif a in ("h", "dh"):
            sig[a] = f"*{state}"
        elif a in ("sgn", "par"):
            sig[a] = "*i8"
        else:   # g, h0, ht, dht, dh0, dg
            sig[a] = "*fp32"
    # what the JIT would specialise for 16-byte aligned tensors and a T divisible by 16
    from .aot import aligned_pointers
    attrs = aligned_pointers(fn, sig, also=("T", "dg_stride"))
    return name, fn, sig, const, attrs, options
