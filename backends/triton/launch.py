"""Host side of the generated element-wise scan: layouts, launch grids, and a torch custom op
(forward, backward, fake) per generated module, so torch.compile(fullgraph=True) sees one opaque op."""
from __future__ import annotations

import hashlib
from typing import Optional

import torch
import triton

import recdsl

from .cache import load_module
from .scan import generate

_OPS: dict[str, object] = {}     # kernel key -> registered custom op (one registration per process)


def kernel_key(src: str) -> str:
    return hashlib.sha256(f"{src}\n{recdsl.__version__}\n{triton.__version__}".encode()).hexdigest()[:24]


def scan_op(spec, block_t: int, block_d: int, num_warps: int):
    """The custom op running this spec's generated scan with these blocks (registered on first use)."""
    memo_key = ("scan_op", block_t, block_d, num_warps)
    if memo_key not in spec.memo:
        src = generate(spec.ir, spec.args)
        key = f"{kernel_key(src)}_{block_t}_{block_d}_{num_warps}"
        if key not in _OPS:
            _OPS[key] = _register(load_module(kernel_key(src), src), key, spec.name, block_t, block_d, num_warps)
        spec.memo[memo_key] = _OPS[key]
    return spec.memo[memo_key]


def _register(mod, key, spec_name, BT, BD, warps):
    name = f"recdsl::{spec_name}_scan_{key}"
    n_in, n_w = len(mod.INPUTS), len(mod.WEIGHTS)

    def chunk_offsets_of(cu, B, T):
        if cu is None:
            return None, B * triton.cdiv(T, BT)
        nck = (cu[1:] - cu[:-1] + BT - 1) // BT
        co = torch.cat([nck.new_zeros(1), nck.cumsum(0)]).to(torch.int32)
        return co, int(co[-1])

    @torch.library.custom_op(name, mutates_args=())
    def forward(ins: list[torch.Tensor], ws: list[torch.Tensor], options: list[float], h0: Optional[torch.Tensor],
                cu: Optional[torch.Tensor], output_final_state: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ins, ws = [x.contiguous() for x in ins], [w.contiguous() for w in ws]
        h0 = None if h0 is None else h0.contiguous()
        B, T, C = ins[0].shape
        N = B if cu is None else cu.numel() - 1
        co, n_chunks = chunk_offsets_of(cu, B, T)
        out = torch.empty(ins[0].shape, dtype=ins[0].dtype, device=ins[0].device)
        ht = torch.empty(N if output_final_state else 0, C, dtype=torch.float32, device=out.device)
        hc = torch.empty(max(n_chunks, 1), C, dtype=torch.float32, device=out.device)
        mod.scan_fwd[(triton.cdiv(C, BD), N)](
            *ins, *ws, *options, h0, out, ht, hc, cu, co, T, C, BT=BT, BD=BD, IS_VARLEN=cu is not None,
            USE_H0=h0 is not None, STORE_HT=output_final_state, STORE_HC=True, num_warps=warps)
        return out, ht, hc

    @forward.register_fake
    def _(ins, ws, options, h0, cu, output_final_state):
        B, T, C = ins[0].shape
        N = B if cu is None else cu.shape[0] - 1
        n_chunks = torch.library.get_ctx().new_dynamic_size() if cu is not None else B * triton.cdiv(T, BT)
        return (torch.empty_like(ins[0]), ins[0].new_empty(N if output_final_state else 0, C, dtype=torch.float32),
                ins[0].new_empty(n_chunks, C, dtype=torch.float32))

    @torch.library.custom_op(name + "_bwd", mutates_args=())
    def backward_op(ins: list[torch.Tensor], ws: list[torch.Tensor], options: list[float], h0: Optional[torch.Tensor],
                    hc: torch.Tensor, cu: Optional[torch.Tensor], d_out: torch.Tensor,
                    dht: Optional[torch.Tensor]) -> list[torch.Tensor]:
        ins, ws = [x.contiguous() for x in ins], [w.contiguous() for w in ws]
        h0 = None if h0 is None else h0.contiguous()
        dht = None if dht is None else dht.contiguous()
        B, T, C = ins[0].shape
        N = B if cu is None else cu.numel() - 1
        co, _ = chunk_offsets_of(cu, B, T)
        d_ins = [torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in ins]
        dw = [torch.zeros(N, C, dtype=torch.float32, device=x.device) for x in ws]
        dh0 = torch.empty(N if h0 is not None else 0, C, dtype=torch.float32, device=d_out.device)
        mod.scan_bwd[(triton.cdiv(C, BD), N)](
            *ins, *ws, *options, h0, hc, d_out.contiguous(), dht, *d_ins, *dw, dh0, cu, co, T, C, BT=BT, BD=BD,
            IS_VARLEN=cu is not None, USE_H0=h0 is not None, USE_DHT=dht is not None, num_warps=warps)
        return d_ins + [g.sum(0).to(w.dtype) for g, w in zip(dw, ws)] + [dh0]

    @backward_op.register_fake
    def _(ins, ws, options, h0, hc, cu, d_out, dht):
        N = ins[0].shape[0] if cu is None else cu.shape[0] - 1
        return ([torch.empty_like(x) for x in ins] + [torch.empty_like(w) for w in ws]
                + [d_out.new_empty(N if h0 is not None else 0, ins[0].shape[-1], dtype=torch.float32)])

    def setup_context(ctx, inputs, output):
        ins, ws, options, h0, cu, _ = inputs
        ctx.save_for_backward(*ins, *ws, *([h0] if h0 is not None else []), output[2],
                              *([cu] if cu is not None else []))
        ctx.options, ctx.has_h0, ctx.has_cu = options, h0 is not None, cu is not None

    def backward(ctx, d_out, d_ht, d_hc):
        saved = list(ctx.saved_tensors)
        ins, ws, rest = saved[:n_in], saved[n_in:n_in + n_w], saved[n_in + n_w:]
        h0 = rest.pop(0) if ctx.has_h0 else None
        hc = rest.pop(0)
        cu = rest.pop(0) if ctx.has_cu else None
        dht = d_ht if (d_ht is not None and d_ht.numel()) else None
        grads = backward_op(ins, ws, ctx.options, h0, hc, cu, d_out, dht)
        return (grads[:n_in], grads[n_in:n_in + n_w], [None] * len(ctx.options),
                grads[-1] if ctx.has_h0 else None, None, None)

    forward.register_autograd(backward, setup_context=setup_context)
    return forward


def run_scan(spec, plan, named: dict, options: dict, h0, cu, output_final_state):
    """named: op-layout tensors by argument name (inputs [B, T, (H,) D], weights [(H,) D])."""
    heads = spec.heads is not None
    op = scan_op(spec, plan.block_t, plan.block_d, plan.num_warps)
    mod_options = sorted(options)
    ins = [named[a.name] for a in spec.args if a.kind == "input"]
    B, T = ins[0].shape[:2]
    flat = [(x.flatten(-2) if heads else x).contiguous() for x in ins]
    ws = [named[a.name].reshape(-1).contiguous() for a in spec.args if a.kind == "weight"]
    N = B if cu is None else cu.numel() - 1
    C = flat[0].shape[-1]
    h0f = None if h0 is None else h0.reshape(N, C).float().contiguous()
    out, ht, _ = op(flat, ws, [float(options[o]) for o in mod_options], h0f, cu, output_final_state)
    out = out.reshape(ins[0].shape[:2] + ((spec.heads,) if heads else ()) + spec.ir.state[1])
    final = ht.reshape((N,) + ((spec.heads,) if heads else ()) + spec.ir.state[1]) if output_final_state else None
    return out, final
