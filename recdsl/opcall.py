"""Calling a spec's core op: argument checking against the spec's shapes, layouts, varlen, dispatch."""
from __future__ import annotations

import torch

FLOAT_TYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def call_op(spec, args, kwargs, initial_state, output_final_state, cu_seqlens, backend):
    from recdsl.backends import reference

    from recdsl.planner import plan as make_plan

    raw, options, ref, omitted = prepare(spec, args, dict(kwargs))
    B, T = ref.shape[:2]
    H, dtype = spec.heads, ref.dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    state_shape = spec.state_shape(1)[1:]
    N = B if cu_seqlens is None else _check_cu(cu_seqlens, B, T)
    channels = 1
    for d in spec.ir.state[1]:
        channels *= d
    needs_grad = torch.is_grad_enabled() and (any(x.requires_grad for x in raw.values()) or (
        initial_state is not None and initial_state.requires_grad))
    # sequences, not rows: packed sequences (cu_seqlens) run as N sequences
    plan = make_plan(spec, backend, batch_channels=N * channels * (H or 1), on_cuda=ref.is_cuda, tokens=T,
                     needs_grad=needs_grad)
    if plan.backend == "triton":
        if dtype == torch.float64:
            raise ValueError("the Triton backend computes in fp32 from fp16/bf16/fp32 inputs; use backend='reference' for fp64")
        if initial_state is not None:
            want = (N,) + state_shape
            if tuple(initial_state.shape) != want:
                raise ValueError(f"initial_state: expected shape {list(want)}, got {list(initial_state.shape)}")
        if plan.algorithm in ("chunk", "fused_chunk", "recurrent"):
            from recdsl.backends.triton.matrix import run_matrix
            o, final = run_matrix(spec, spec.memo["matrix_pattern"], raw, options, initial_state, cu_seqlens,
                                  output_final_state, chunk_size=plan.block_t if plan.block_t > 1 else 64,
                                  inference={"chunk": "chunk", "fused_chunk": "fused"}.get(plan.algorithm, "recurrent"))
            return o, final, None
        if plan.algorithm.startswith("fixed_point"):
            from recdsl.backends.triton.fixed_point import run_fixed_point
            fused = spec.memo["fp_fused_pattern"] if plan.algorithm != "fixed_point_scan" else None
            return run_fixed_point(spec, raw, options, initial_state, cu_seqlens, output_final_state, fused,
                                   one_launch=plan.algorithm == "fixed_point_one_launch")
        if plan.algorithm == "blockdiag_recurrent":
            from recdsl.backends.triton.blockdiag import run_blockdiag
            o, final = run_blockdiag(spec, spec.memo["blockdiag_pattern"], raw, options, initial_state, cu_seqlens,
                                     output_final_state)
            return o, final, None
        if plan.algorithm in ("delta_recurrent", "delta_chunk", "delta_dplr"):
            from recdsl.backends.triton.delta import run_delta
            o, final = run_delta(spec, spec.memo["delta_pattern"], raw, options, initial_state, cu_seqlens,
                                 output_final_state, chunked=plan.algorithm == "delta_chunk", omitted=omitted,
                                 via_dplr=plan.algorithm == "delta_dplr")
            return o, final, None
        if plan.algorithm == "dplr_recurrent":
            from recdsl.backends.triton.dplr import run_dplr
            o, final = run_dplr(spec, spec.memo["dplr_pattern"], raw, options, initial_state, cu_seqlens,
                                output_final_state)
            return o, final, None
        from recdsl.backends.triton.launch import run_scan
        o, final = run_scan(spec, plan, raw, options, initial_state, cu_seqlens, output_final_state)
        return o, final, None
    inputs, weights = internal(spec, raw, compute)
    if initial_state is not None:
        want = (N,) + state_shape
        if tuple(initial_state.shape) != want:
            raise ValueError(f"initial_state: expected shape {list(want)} ([N{', H' if H else ''}, "
                             f"{', '.join(map(str, spec.ir.state[1]))}]), got {list(initial_state.shape)}")
        if initial_state.device != ref.device:
            raise ValueError(f"initial_state is on {initial_state.device}, the inputs on {ref.device}")
        initial_state = initial_state.to(compute)
        if not H:
            initial_state = initial_state.unsqueeze(1)
    if cu_seqlens is None:
        o, S, info = reference.run(spec.ir, inputs, weights, options, initial_state, compute)
    else:
        o, S, info = _varlen(spec, inputs, weights, options, initial_state, compute, cu_seqlens)
    o = _layout_out(o, H).to(dtype)
    if not H:
        S = S.squeeze(1)
    final = S.to(compute if compute == torch.float64 else torch.float32) if output_final_state else None
    return o, final, info


def prepare(spec, args, kwargs):
    """Bind and check the op's arguments against the spec. Returns the tensors by name in the op's
    layout (defaults filled in), the options, a reference input tensor, and the names of the inputs
    left to their defaults (a backend may specialise on those constants). Nothing is copied."""
    named = _bind(spec, args, kwargs)
    options = {}
    for name, default in spec.options:
        v = kwargs.pop(name, None)
        options[name] = default if v is None else float(v)
    if kwargs:
        known = [a.name for a in spec.args] + [n for n, _ in spec.options]
        raise TypeError(f"{spec.name}.op() got unexpected argument(s) {sorted(kwargs)}; it takes {known}")
    present = [named[a.name] for a in spec.args if a.kind == "input" and named.get(a.name) is not None]
    if not present:
        raise ValueError(f"{spec.name}.op() needs at least one input tensor")
    ref = present[0]
    if ref.dim() < 2:
        raise ValueError(f"inputs are [B, T, ...]; got a tensor of shape {list(ref.shape)}")
    B, T = ref.shape[:2]
    H = spec.heads
    lead = (B, T) + ((H,) if H else ())
    raw, omitted = {}, set()
    for a in spec.args:
        x = named.get(a.name)
        if a.kind == "weight":
            want = ((H,) if H else ()) + a.shape
            if x is None:
                raise ValueError(f"weight {a.name!r} is required: expected shape {_show(spec, a, want, weight=True)}")
        else:
            want = lead + a.shape
            if x is None:
                if a.default is None:
                    raise ValueError(f"input {a.name!r} is required: expected shape {_show(spec, a, want)}")
                x = torch.full(want, a.default, dtype=ref.dtype, device=ref.device)
                omitted.add(a.name)
        _check_tensor(spec, a, x, want, ref, weight=a.kind == "weight")
        raw[a.name] = x
    return raw, options, ref, frozenset(omitted)


def internal(spec, raw: dict, compute: torch.dtype):
    """The reference layout: inputs [B, T, H, *shape] and weights [H, *shape] (H = 1 without heads)."""
    H = spec.heads
    inputs = {a.name: _layout_in(raw[a.name].to(compute), H) for a in spec.args if a.kind == "input"}
    weights = {a.name: (raw[a.name] if H else raw[a.name].unsqueeze(0)).to(compute)
               for a in spec.args if a.kind == "weight"}
    return inputs, weights


def _varlen(spec, inputs, weights, options, h0, compute, cu):
    from recdsl.backends import reference
    outs, finals, infos = [], [], []
    bounds = cu.tolist()
    for n in range(len(bounds) - 1):
        s, e = bounds[n], bounds[n + 1]
        part = {k: v[:, s:e] for k, v in inputs.items()}
        o, S, info = reference.run(spec.ir, part, weights, options,
                                   None if h0 is None else h0[n:n + 1], compute)
        outs.append(o)
        finals.append(S)
        infos.append(info)
    return torch.cat(outs, 1), torch.cat(finals, 0), (infos[-1] if infos and infos[-1] else None)


def _check_cu(cu, B, T) -> int:
    if not isinstance(cu, torch.Tensor) or cu.dim() != 1 or cu.numel() < 2 or cu.dtype.is_floating_point:
        raise ValueError("cu_seqlens: expected an integer tensor [N+1] of cumulative lengths")
    if B != 1:
        raise ValueError(f"with cu_seqlens the inputs are packed: batch must be 1, got {B}")
    c = cu.tolist()
    if c[0] != 0 or c[-1] != T or any(b < a for a, b in zip(c, c[1:])):
        raise ValueError(f"cu_seqlens must rise from 0 to T = {T}; got {c}")
    return len(c) - 1


def _bind(spec, args, kwargs) -> dict:
    names = [a.name for a in spec.args if a.kind == "input"]
    if len(args) > len(names):
        raise TypeError(f"{spec.name}.op() takes {len(names)} positional inputs ({', '.join(names)}), "
                        f"got {len(args)}")
    named = dict(zip(names, args))
    for a in spec.args:
        if a.name in kwargs:
            if a.name in named:
                raise TypeError(f"{spec.name}.op() got {a.name!r} twice")
            named[a.name] = kwargs.pop(a.name)
    return named


def _show(spec, a, want, weight=False) -> str:
    lead = [] if weight else ["B", "T"]
    if spec.heads:
        lead.append("H")
    sym = lead + list(a.symbols)
    return "[" + ", ".join(f"{s}={w}" if s != str(w) else str(w) for s, w in zip(sym, want)) + "]"


def _check_tensor(spec, a, x, want, ref, weight=False):
    kind = "weight" if weight else "input"
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{kind} {a.name!r}: expected a tensor of shape {_show(spec, a, want, weight)}, "
                         f"got {type(x).__name__}")
    if tuple(x.shape) != tuple(want):
        raise ValueError(f"{kind} {a.name!r}: expected shape {_show(spec, a, want, weight)}, got {list(x.shape)}")
    if x.dtype not in FLOAT_TYPES:
        raise ValueError(f"{kind} {a.name!r}: expected a floating-point tensor, got {x.dtype}")
    if x.device != ref.device:
        raise ValueError(f"{kind} {a.name!r} is on {x.device}, the other inputs on {ref.device}")


def _layout_in(x, H):
    return x if H else x.unsqueeze(2)


def _layout_out(o, H):
    return o if H else o.squeeze(2)
