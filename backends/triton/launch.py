"""Host side of the generated element-wise scan: layouts, launch grids, and a torch custom op
(forward, backward, fake) per generated module, so torch.compile(fullgraph=True) sees one opaque op.
Eager calls take an autograd.Function over the same launches: the custom op's dispatch costs more
host time than the kernels take."""
from __future__ import annotations

import hashlib
from typing import Optional

import torch
import triton

import recdsl

from .cache import load_module
from .look_back import Words
from .scan import generate
from .ints import cdiv, next_power_of_2

_OPS: dict[str, object] = {}     # kernel key -> registered custom op (one registration per process)
WORDS = Words()                  # the look-back's words, shared by every scan launched on a stream


def kernel_key(src: str) -> str:
    return hashlib.sha256(f"{src}\n{recdsl.__version__}\n{triton.__version__}".encode()).hexdigest()[:24]


SCHEDULES = ("walk", "look_back")


def scan_op(spec, block_t: int, block_d: int, num_warps: int, backward: str = "exclusive", schedule: str = "walk",
            bwd_warps: int = 0):
    """The op running this spec's generated scan with these blocks, backward form and schedule ("walk":
    one program per sequence and channel block walks the tokens; "look_back": every tile of BT tokens is
    a program, chained by a decoupled look-back), registered on first use: eager calls go through an
    autograd.Function, torch.compile sees the custom op. `bwd_warps` (0: as the forward) sets the
    backward kernel's warps."""
    warps = (num_warps, bwd_warps or num_warps)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    memo_key = ("scan_op", block_t, block_d, warps, backward, schedule)
    if memo_key not in spec.memo:
        src = generate(spec.ir, spec.args, backward)
        geometry = scan_geometry(spec)
        key = (f"{kernel_key(src)}_{block_t}_{block_d}_{warps[0]}_{warps[1]}_{schedule}_"
               f"{'_'.join(map(str, geometry))}")
        if key not in _OPS:
            _OPS[key] = _register(load_module(kernel_key(src), src), key, spec.name, block_t, block_d, warps,
                                  geometry, schedule, backward)
        spec.memo[memo_key] = _OPS[key]
    return spec.memo[memo_key]


def scan_geometry(spec) -> tuple[int, int, int]:
    """(H, D, N) as the kernels see them. A vector state folds heads into its channels (every value is
    per channel), so H = 1, D = heads * D and N = 1; a matrix state keeps heads apart because its
    inputs along N are shared by the rows of a head."""
    S = spec.ir.state[1]
    if len(S) == 1:
        return 1, (spec.heads or 1) * S[0], 1
    return spec.heads or 1, S[0], S[1]


def _register(mod, key, spec_name, BT, BD, warps, geometry, schedule, backward):
    """`warps`: (the forward kernel's, the backward kernel's)."""
    name = f"recdsl::{spec_name}_scan_{key}"
    n_in, n_w = len(mod.INPUTS), len(mod.WEIGHTS)
    H, D, N = geometry
    BN = next_power_of_2(N)
    state_size = H * D * N

    def chunk_offsets_of(cu, B, T):
        """Each sequence's first chunk (an empty sequence has one, so every sequence has a tile to pass
        its state through), the total, and each chunk's sequence (for the look-back's tiles)."""
        if cu is None:
            return None, B * cdiv(T, BT), None
        nck = ((cu[1:] - cu[:-1] + BT - 1) // BT).clamp_min(1)
        co = torch.cat([nck.new_zeros(1), nck.cumsum(0)]).to(torch.int32)
        n_chunks = int(co[-1])
        seq = torch.repeat_interleave(torch.arange(nck.numel(), device=cu.device, dtype=torch.int32), nck,
                                      output_size=n_chunks) if schedule == "look_back" else None
        return co, n_chunks, seq

    def launch(kernel, walk_grid, n_chunks, args, seq, device, **flags):
        num_warps = warps[kernel == "scan_bwd"]
        if schedule == "walk":
            return getattr(mod, kernel)[walk_grid](*args, **flags, num_warps=num_warps)
        n = n_chunks * state_size
        # the backward's carries on their way into each tile's layout (written before they are read: no fill)
        bridge = (torch.empty(n, dtype=torch.float32, device=device),) if kernel == "scan_bwd" else ()
        with WORDS.lock:   # the look-back's words, one per element, kept per stream (look_back.Words)
            words, stale, mark = WORDS.take(n, device)
            try:
                getattr(mod, kernel + "_tiles")[(n_chunks * H * cdiv(D, BD),)](
                    *args, seq, words, stale, mark, n_chunks, *bridge, **flags, num_warps=num_warps)
            except BaseException:
                WORDS.discard(device)
                raise

    out_tail = (H, D) + ((N,) if "N" in mod.OUT_KIND else ())   # the readout: [tokens, H, D(, N)]

    def forward_impl(ins: list[torch.Tensor], ws: list[torch.Tensor], options: list[float], h0: Optional[torch.Tensor],
                cu: Optional[torch.Tensor], output_final_state: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ins, ws = [x.contiguous() for x in ins], [w.contiguous() for w in ws]
        h0 = None if h0 is None else h0.contiguous()
        B, T = ins[0].shape[:2]
        Ns = B if cu is None else cu.numel() - 1
        co, n_chunks, seq = chunk_offsets_of(cu, B, T)
        out = ins[0].new_empty((B, T) + out_tail)
        ht = torch.empty(Ns if output_final_state else 0, state_size, dtype=torch.float32, device=out.device)
        hc = torch.empty(max(n_chunks, 1), state_size, dtype=torch.float32, device=out.device)
        launch("scan_fwd", (cdiv(D, BD), Ns * H), n_chunks, (*ins, *ws, *options, h0, out, ht, hc, cu, co),
               seq, out.device, T=T, NTOK=B * T, H=H, D=D, N=N, BT=BT, BD=BD, BN=BN, IS_VARLEN=cu is not None,
               USE_H0=h0 is not None, STORE_HT=output_final_state,
               STORE_HC=backward != "output")   # the output form reads h_(t-1) from `out` instead
        return out, ht, hc

    forward = torch.library.custom_op(name, forward_impl, mutates_args=())

    @forward.register_fake
    def _(ins, ws, options, h0, cu, output_final_state):
        B, T = ins[0].shape[:2]
        Ns = B if cu is None else cu.shape[0] - 1
        n_chunks = torch.library.get_ctx().new_dynamic_size() if cu is not None else B * cdiv(T, BT)
        return (ins[0].new_empty((B, T) + out_tail),
                ins[0].new_empty(Ns if output_final_state else 0, state_size, dtype=torch.float32),
                ins[0].new_empty(n_chunks, state_size, dtype=torch.float32))

    def backward_impl(ins: list[torch.Tensor], ws: list[torch.Tensor], options: list[float], h0: Optional[torch.Tensor],
                    hc: torch.Tensor, out: torch.Tensor, cu: Optional[torch.Tensor], d_out: torch.Tensor,
                    dht: Optional[torch.Tensor]) -> list[torch.Tensor]:
        ins, ws = [x.contiguous() for x in ins], [w.contiguous() for w in ws]
        h0 = None if h0 is None else h0.contiguous()
        dht = None if dht is None else dht.contiguous()
        B, T = ins[0].shape[:2]
        Ns = B if cu is None else cu.numel() - 1
        co, n_chunks, seq = chunk_offsets_of(cu, B, T)
        n_blocks = cdiv(D, BD)
        rows = Ns if schedule == "walk" else n_chunks   # weight gradients: per sequence, or per tile
        # inputs along D get their gradient directly; inputs along N one partial sum per D block
        d_ins = [x.new_empty(x.shape) if "D" in mod.KINDS.get(n, ()) else
                 x.new_zeros((n_blocks,) + x.shape, dtype=torch.float32) if n in mod.KINDS else x.new_zeros(x.shape)
                 for n, x in zip(mod.INPUTS, ins)]
        d_ws = [w.new_empty((rows,) + w.shape, dtype=torch.float32) if "D" in mod.KINDS.get(n, ()) else
                w.new_zeros((rows * n_blocks,) + w.shape, dtype=torch.float32) for n, w in zip(mod.WEIGHTS, ws)]
        dh0 = torch.empty(Ns if h0 is not None else 0, state_size, dtype=torch.float32, device=d_out.device)
        launch("scan_bwd", (n_blocks, Ns * H), n_chunks,
               (*ins, *ws, *options, h0, hc, out, d_out.contiguous(), dht, *d_ins, *d_ws, dh0, cu, co), seq,
               d_out.device, T=T, NTOK=B * T, H=H, D=D, N=N, BT=BT, BD=BD, BN=BN, IS_VARLEN=cu is not None,
               USE_H0=h0 is not None, USE_DHT=dht is not None)
        d_ins = [g.sum(0).to(x.dtype) if n in mod.PARTIAL_INPUTS else g for n, g, x in zip(mod.INPUTS, d_ins, ins)]
        return d_ins + [g.sum(0).to(w.dtype) for g, w in zip(d_ws, ws)] + [dh0]

    backward_op = torch.library.custom_op(name + "_bwd", backward_impl, mutates_args=())

    @backward_op.register_fake
    def _(ins, ws, options, h0, hc, out, cu, d_out, dht):
        Ns = ins[0].shape[0] if cu is None else cu.shape[0] - 1
        return ([torch.empty_like(x) for x in ins] + [torch.empty_like(w) for w in ws]
                + [d_out.new_empty(Ns if h0 is not None else 0, state_size, dtype=torch.float32)])

    def setup_context(ctx, inputs, output):
        ins, ws, options, h0, cu, _ = inputs
        ctx.save_for_backward(*ins, *ws, *([h0] if h0 is not None else []), output[2], output[0],
                              *([cu] if cu is not None else []))
        ctx.options, ctx.has_h0, ctx.has_cu = options, h0 is not None, cu is not None

    def backward(ctx, d_out, d_ht, d_hc):
        saved = list(ctx.saved_tensors)
        ins, ws, rest = saved[:n_in], saved[n_in:n_in + n_w], saved[n_in + n_w:]
        h0 = rest.pop(0) if ctx.has_h0 else None
        hc, out = rest.pop(0), rest.pop(0)
        cu = rest.pop(0) if ctx.has_cu else None
        dht = d_ht if (d_ht is not None and d_ht.numel()) else None
        grads = backward_op(ins, ws, ctx.options, h0, hc, out, cu, d_out, dht)
        return (grads[:n_in], grads[n_in:n_in + n_w], [None] * len(ctx.options),
                grads[-1] if ctx.has_h0 else None, None, None)

    forward.register_autograd(backward, setup_context=setup_context)

    class EagerScan(torch.autograd.Function):
        """The same forward and backward without the custom-op dispatch, whose Python cost (about 1 ms
        per forward+backward on the H100 host) would exceed the kernels' time; used outside torch.compile."""
        @staticmethod
        def forward(ctx, options, h0, cu, output_final_state, *tensors):
            out, ht, hc = forward_impl(list(tensors[:n_in]), list(tensors[n_in:]), options, h0, cu,
                                       output_final_state)
            ctx.save_for_backward(*tensors, h0, hc, out, cu)
            ctx.options = options
            ctx.mark_non_differentiable(hc)
            ctx.set_materialize_grads(False)
            return out, ht, hc

        @staticmethod
        def backward(ctx, d_out, d_ht, d_hc):
            *tensors, h0, hc, out, cu = ctx.saved_tensors
            if d_out is None:   # only the final state reaches the loss
                d_out = tensors[0].new_zeros(tensors[0].shape[:2] + out_tail)
            grads = backward_impl(list(tensors[:n_in]), list(tensors[n_in:]), ctx.options, h0, hc, out, cu,
                                  d_out, d_ht if d_ht is not None and d_ht.numel() else None)
            return (None, grads[-1] if h0 is not None else None, None, None, *grads[:-1])

    def call(ins, ws, options, h0, cu, output_final_state):
        if torch.compiler.is_compiling():
            return forward(ins, ws, options, h0, cu, output_final_state)
        return EagerScan.apply(options, h0, cu, output_final_state, *ins, *ws)

    call.custom_op = forward
    return call


def run_scan(spec, plan, named: dict, options: dict, h0, cu, output_final_state):
    """named: op-layout tensors by argument name (inputs [B, T, (H,) *shape], weights [(H,) *shape])."""
    heads = (spec.heads,) if spec.heads else ()
    op = scan_op(spec, plan.block_t, plan.block_d, plan.num_warps, plan.scan_backward, plan.scan_schedule,
                 plan.bwd_warps)
    ins = [named[a.name] for a in spec.args if a.kind == "input"]
    B, T = ins[0].shape[:2]
    if len(spec.ir.state[1]) == 1:   # heads folded into channels: [B, T, H * D]
        ins = [x.flatten(2) for x in ins]
    ws = [named[a.name].reshape(-1) for a in spec.args if a.kind == "weight"]
    Ns = B if cu is None else cu.numel() - 1
    h0f = None if h0 is None else h0.reshape(Ns, -1).float()
    out, ht, _ = op(ins, ws, [float(options[o]) for o in sorted(options)], h0f, cu, output_final_state)
    out = out.reshape((B, T) + heads + spec.ir.node(spec.ir.roots_with("output:")[0][1]).shape)
    final = ht.reshape((Ns,) + heads + spec.ir.state[1]) if output_final_state else None
    return out, final
