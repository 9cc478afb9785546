"""Host side of the generated element-wise scan: layouts, launch grids, autograd."""
from __future__ import annotations

import hashlib

import torch
import triton

import recdsl
from recdsl.planner import Plan

from .cache import load_module
from .scan import generate

_MODULES: dict[str, object] = {}


def kernels(spec):
    """The generated module for this spec, keyed by a hash of its source, recdsl's and Triton's versions."""
    src = generate(spec.ir, spec.args)
    key = hashlib.sha256(f"{src}\n{recdsl.__version__}\n{triton.__version__}".encode()).hexdigest()[:24]
    if key not in _MODULES:
        _MODULES[key] = load_module(key, src)
    return _MODULES[key], key


def _flat(x: torch.Tensor, heads: bool) -> torch.Tensor:
    """[B, T, H, D] -> [B, T, H*D] (a no-op view for head-less specs), contiguous."""
    x = x.flatten(-2) if heads else x
    return x.contiguous()


class ScanFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec, plan: Plan, names, n_inputs, options, h0, cu, output_final_state, *tensors):
        mod, _ = kernels(spec)
        heads = spec.heads is not None
        ins = [_flat(t, heads) for t in tensors[:n_inputs]]
        ws = [t.reshape(-1).contiguous() for t in tensors[n_inputs:]]
        B, T, C = ins[0].shape
        N, BT, BD = (B if cu is None else cu.numel() - 1), plan.block_t, plan.block_d
        device = ins[0].device
        if cu is None:
            chunk_offsets, n_chunks = None, B * triton.cdiv(T, BT)
        else:
            lens = cu[1:] - cu[:-1]
            nck = (lens + BT - 1) // BT
            chunk_offsets = torch.cat([nck.new_zeros(1), nck.cumsum(0)]).to(torch.int32)
            n_chunks = int(chunk_offsets[-1])
        out = torch.empty_like(ins[0])
        ht = torch.empty(N, C, dtype=torch.float32, device=device) if output_final_state else None
        need_grad = any(ctx.needs_input_grad[8:]) or (h0 is not None and h0.requires_grad)
        hc = torch.empty(max(n_chunks, 1), C, dtype=torch.float32, device=device) if need_grad else None
        h0f = None if h0 is None else h0.reshape(N, C).float().contiguous()
        grid = (triton.cdiv(C, BD), N)
        mod.scan_fwd[grid](*ins, *ws, *[options[o] for o in mod.OPTIONS], h0f, out, ht, hc, cu, chunk_offsets,
                           T, C, BT=BT, BD=BD, IS_VARLEN=cu is not None, USE_H0=h0 is not None,
                           STORE_HT=output_final_state, STORE_HC=need_grad, num_warps=plan.num_warps)
        ctx.save_for_backward(*ins, *ws, h0f if h0f is not None else torch.empty(0), hc if hc is not None else torch.empty(0),
                              cu if cu is not None else torch.empty(0), chunk_offsets if chunk_offsets is not None else torch.empty(0))
        ctx.meta = (spec, plan, n_inputs, len(ws), options, h0 is not None, cu is not None, tuple(t.shape for t in tensors),
                    tuple(t.dtype for t in tensors), h0.shape if h0 is not None else None)
        shape_out = tensors[0].shape[:2] + (spec.heads,) + spec.ir.state[1] if heads else tensors[0].shape[:2] + spec.ir.state[1]
        final = None if ht is None else (ht.reshape((N, spec.heads) + spec.ir.state[1]) if heads else ht)
        return out.reshape(shape_out), final

    @staticmethod
    def backward(ctx, d_out, d_final):
        spec, plan, n_in, n_w, options, has_h0, varlen, shapes, dtypes, h0_shape = ctx.meta
        saved = ctx.saved_tensors
        ins, ws = list(saved[:n_in]), list(saved[n_in:n_in + n_w])
        h0f, hc, cu, chunk_offsets = saved[n_in + n_w:]
        mod, _ = kernels(spec)
        heads = spec.heads is not None
        B, T, C = ins[0].shape
        N = cu.numel() - 1 if varlen else B
        d_out = _flat(d_out, heads)
        dht = None if d_final is None else d_final.reshape(N, C).float().contiguous()
        d_ins = [torch.empty_like(x) for x in ins]
        dw = [torch.zeros(N, C, dtype=torch.float32, device=x.device) for x in ws]
        dh0 = torch.empty(N, C, dtype=torch.float32, device=ins[0].device) if has_h0 else None
        grid = (triton.cdiv(C, plan.block_d), N)
        mod.scan_bwd[grid](*ins, *ws, *[options[o] for o in mod.OPTIONS], h0f if has_h0 else None, hc, d_out, dht,
                           *d_ins, *dw, dh0, cu if varlen else None, chunk_offsets if varlen else None,
                           T, C, BT=plan.block_t, BD=plan.block_d, IS_VARLEN=varlen, USE_H0=has_h0,
                           USE_DHT=dht is not None, num_warps=plan.num_warps)
        grads = [g.reshape(s) for g, s in zip(d_ins, shapes[:n_in])]
        grads += [g.sum(0).reshape(s).to(dt) for g, s, dt in zip(dw, shapes[n_in:], dtypes[n_in:])]
        g_h0 = dh0.reshape(h0_shape) if has_h0 else None
        return (None, None, None, None, None, g_h0, None, None, *grads)


def run_scan(spec, plan, named: dict, options: dict, h0, cu, output_final_state):
    """named: op-layout tensors by argument name (inputs [B, T, (H,) D], weights [(H,) D])."""
    ins = [named[a.name] for a in spec.args if a.kind == "input"]
    ws = [named[a.name] for a in spec.args if a.kind == "weight"]
    names = tuple(a.name for a in spec.args)
    return ScanFunction.apply(spec, plan, names, len(ins), options, h0, cu, output_final_state, *ins, *ws)
