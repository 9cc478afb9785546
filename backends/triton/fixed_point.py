"""Fixed points of diagonal scans (Fixed-Point RNNs, Movahedi et al. 2025), the unfused path: each
iteration evaluates the spec's decay and write from the previous iterate with torch (the mixer Q_t, and
Lambda_t too where it depends on the hidden state) and runs the generated element-wise scan once,

    h^l = scan(a_t(h^(l-1)), b_t(h^(l-1))),   h^l_t = a_t * h^l_(t-1) + b_t,   h^0 = 0,

under the driver every backend shares (recdsl/solve.py: tol, max_iter, damping, the batch quantile
that must converge in training, a RecNotConverged warning when it does not). The gradient is that of
`backward_steps` more iterations from the fixed point held constant: one is the paper's choice (the
memory of a single layer), k give the implicit gradient's Neumann series to k terms. (The reference
differentiates every iteration.)
"""
from __future__ import annotations

import torch

from recdsl.ir import IR

SCAN_SPEC = """
recurrence diag_scan(D = 1):
    state h[D]
    input a[D], b[D]
    transition diag(a)
    write b
    output y = h
"""


def eligible(ir: IR) -> str | None:
    """None when this path can run the fixed point, else the reason it cannot."""
    S = ir.state[1]
    if len(S) != 1:
        return f"the state {list(S)} is not a vector"
    prev = [i for i in ir.graph.nodes if ir.node(i).op == "prev"]
    if any(ir.node(i).args[0] != ir.state[0] for i in prev):
        return "prev(...) of something other than the state"
    trans, write = ir.root("transition"), ir.root("write")
    if ir.node(trans).op != "diag" or ir.node(ir.operands(trans)[0]).shape != S:
        return "the transition is not one element-wise diag(...)"
    if ir.reads(ir.operands(trans)[0], "state"):
        return "the transition reads the current state"
    if ir.node(write).shape != S or ir.reads(write, "state"):
        return "the write is not one value per state entry free of the current state"
    if ir.reads(ir.roots_with("output:")[0][1], "prev"):
        return "the readout reads the previous iterate"
    return None


def run_fixed_point(spec, raw: dict, options: dict, h0, cu, output_final_state, fused=None, one_launch=False):
    """The core op of a fixed-point spec (op layout in and out). Returns (o, final state, SolveInfo).
    `fused` (an fp_fused.FusedPattern) runs the iterations as one fused launch each (fp_fused.py), or,
    with `one_launch`, many in one launch (fp_one_launch.py)."""
    if len(spec.ir.state[1]) == 2:   # a matrix state whose readout is iterated (FP-Mamba)
        from .fixed_point_matrix import run_fixed_point_matrix
        return run_fixed_point_matrix(spec, raw, options, h0, cu, output_final_state)
    import recdsl
    from recdsl.backends.reference import leaf_values
    from recdsl.solve import fixed_point
    from recdsl.evaluate import Evaluator, shift_tokens

    from .matrix import _LazyLayout
    ir = spec.ir
    ref = next(raw[a.name] for a in spec.args if a.kind == "input")
    B, T = ref.shape[:2]
    H, D = ir.heads or 1, ir.state[1][0]
    full = (B, T, H, D)
    if "fixed_point_scan" not in spec.memo:
        spec.memo["fixed_point_scan"] = recdsl.load(SCAN_SPEC, D=H * D)
    scan = spec.memo["fixed_point_scan"]

    def leaves():   # the inputs in the reference layout, converted on first use (and then kept)
        return leaf_values(ir, _LazyLayout(spec, raw, torch.float32, "input"),
                           _LazyLayout(spec, raw, torch.float32, "weight"), options)   # weights broadcast
    base = leaves()
    a_id, write, out = ir.operands(ir.root("transition"))[0], ir.root("write"), ir.roots_with("output:")[0][1]
    varying = {i for i in ir.graph.nodes if ir.reads(i, "prev", "state")}
    shared: dict = {}

    first = None if h0 is None else h0.reshape(h0.shape[0], H, D).float()

    def leaf(i, n, prev, states):
        if n.op == "prev":   # prev(h, shift = 1): the previous token's iterate, each sequence from its h0
            return shift_tokens(prev, first, cu) if len(n.args) > 1 else prev
        return states if n.op == "state" else base(i, n)

    def evaluator(prev, states=None):
        ev = Evaluator(ir, lambda i, n: leaf(i, n, prev, states))
        ev.memo.update(shared)        # everything that does not depend on the iterate, evaluated once
        return ev

    def iterate(prev, h_init, final):
        ev = evaluator(prev)
        a, b = (torch.as_tensor(ev(i), dtype=torch.float32, device=ref.device).expand(full) for i in (a_id, write))
        shared.update({i: v for i, v in ev.memo.items() if i not in varying})
        y, ht = scan.op(a=a.reshape(B, T, H * D), b=b.reshape(B, T, H * D), initial_state=h_init,
                        output_final_state=final, cu_seqlens=cu, backend="triton")
        return y.reshape(full), ht

    h_init = None if h0 is None else h0.reshape(h0.shape[0], H * D).float()
    start = {"h": torch.zeros(full, dtype=torch.float32, device=ref.device), "zero": True}   # h^0 = 0
    training = torch.is_grad_enabled()
    steps = int(dict(ir.solve).get("backward_steps", 1))

    def close_inference(last, step):
        """(o, final state) of an inference call from the solve's last iterates: the closing iterations from
        the fixed point as fused launches too (replayed where there are graphs and no final state is wanted),
        then the readout."""
        prev = states = last["h"]
        dots, peak, ht = last.get("dots"), last.get("peak"), None
        for _ in range(steps):
            if graphs is not None and not output_final_state:   # replayed too: an eager shifted launch's host
                # work (its operands' evaluation, about 2 ms at issue 5's shape) left the device idle
                nxt, _ = graphs.run({"h": states, "dots": dots, "peak": peak}, 1.0, 1)
                # a first, eager call gives no dot products
                prev, states, dots, peak = states, nxt["h"], nxt.get("dots"), nxt.get("peak")
                continue
            prev, (states, _, ht, dots) = states, step.launch(states, 1.0, store_ht=output_final_state, dots=dots)
            peak = None
        return _readout(spec, evaluator(prev, states), out, ht, B, T, H, D, ref)

    graphs = while_waiting = closing = None
    holder: list = []      # the differentiable operands, when evaluated while the solve runs
    closed: list = []      # closing's (o, final state), when the driver ran it
    if fused is not None:
        from . import fp_graph

        def prepare(args, h_in):
            """The solve's operands: with autograd where enabled (the differentiable step reuses them), or, where
            they read prev(h, shift = 1), a ShiftedIteration that evaluates them again for each launch."""
            if fused.varying:
                return shifted_operands(spec, fused, args, options, B, T, h_in, cu)
            return fused_operands(spec, fused, args, options, B, T, h_in, cu)
        if not one_launch and fp_graph.usable(ref, cu):    # replayed as CUDA graphs (fp_graph.py)
            solve_args = {k: raw[k] for k in fused.reads}
            with torch.no_grad():
                graphs = _graphs(spec, fp_graph.SolveGraphs.key(solve_args, h_init, options),
                                 lambda: fp_graph.SolveGraphs(prepare, solve_args, h_init))
            if training and not fused.varying:    # the differentiable operands, evaluated while the solve runs
                def differentiable_operands():
                    with torch.enable_grad():
                        holder.append(prepare(raw, h_init))
                while_waiting = differentiable_operands
            elif training:
                def closing(last):     # the replayed differentiable tail (fp_tail_graph.py), queued behind the solve
                    from . import fp_tail_graph
                    with torch.enable_grad():
                        closed.append(fp_tail_graph.call(spec, fused, raw, options, h_init, last["h"], steps,
                                                         output_final_state))
            elif not output_final_state:
                def closing(last):     # the closing launches, replayed too, queued behind the solve
                    closed.append(close_inference(last, None))
        else:
            with torch.set_grad_enabled(training and not fused.varying):
                step = prepare(raw, h_init)
    with torch.no_grad():
        if fused is None:
            _, last, info = fixed_point(lambda it: ({"h": iterate(it["h"], h_init, False)[0]}, None), start,
                                        dict(ir.solve), training=training, name=ir.name, stacklevel=5)
        else:
            from recdsl.solve import Batched
            from .fp_fused import per_call
            max_iter = dict(ir.solve)["max_iter"]
            if one_launch:
                from .fp_one_launch import iterations
                solver = iterations(step.detached(), max_iter)
            elif graphs is not None:
                solver = Batched(graphs.bind(solve_args, h_init), max_iter, per_call())
            else:
                solver = Batched(step.detached().iterations, max_iter, per_call())
            _, last, info = fixed_point(solver, start, dict(ir.solve), training=training, name=ir.name,
                                        stacklevel=5, fused=True, while_waiting=while_waiting, closing=closing)
            if graphs is not None:
                # the graphs' memory is written again by the next solve: what outlives this call is copied
                # (the closing work read the last iterate at once; the tail graph copies it in, or its eager
                # call a copy, fp_tail_graph.call)
                info.residual = info.residual.clone()
                if training and not fused.varying:
                    last = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in last.items()}
                step = holder[0] if holder else graphs.step
    if closed:
        return closed[0] + (info,)
    prev = last["h"]
    if fused is not None and not training:
        return close_inference(last, step) + (info,)
    # k differentiable iterations from the fixed point (its value held constant): their gradient is the
    # implicit-function gradient's Neumann series cut after k terms (k = 1: the paper's one step). The
    # inputs are converted again so that autograd sees them (the loop's copies were made without a graph)
    if fused is not None and fused.varying:     # each step evaluates its operands again (varying_steps)
        from . import fp_graph, fp_tail_graph
        if fp_graph.usable(ref, cu):     # replayed as CUDA graphs, forward and backward (fp_tail_graph.py)
            o, final = fp_tail_graph.call(spec, fused, raw, options, h_init, prev, steps, output_final_state)
        else:
            o, final = varying_steps(spec, fused, raw, options, h_init, cu, prev.detach(), steps, output_final_state)
        return o, final, info
    shared.clear()
    base = leaves()
    states = prev.detach()
    for _ in range(steps):
        if fused is None:
            prev, (states, ht) = states, iterate(states, h_init, output_final_state)
        else:
            prev, (states, ht) = states, fused_step(scan, fused, step, states, h_init, cu, output_final_state)
    return _readout(spec, evaluator(prev, states), out, ht, B, T, H, D, ref) + (info,)


def fused_step(scan, pattern, step, states, h0, cu, want_final: bool):
    """One differentiable iteration from `states` [B, T, 1, D] on the fused operands `step`: the write as one
    token-parallel kernel with its own backward (fp_fused_step.py), then the scan. Returns (the next states,
    like `states`; the final state [N, D] or None)."""
    from .fp_fused_step import mix_write
    B, T, _, D = states.shape
    b = mix_write(pattern, step.x, step.g, step.u, step.w, states)
    y, ht = scan.op(a=step.a.reshape(B, T, D), b=b.reshape(B, T, D), initial_state=h0,
                    output_final_state=want_final, cu_seqlens=cu, backend="triton")
    return y.reshape(states.shape), ht


def varying_steps(spec, pattern, args: dict, options: dict, h0, cu, states, steps: int, want_final: bool):
    """The differentiable tail of a training call whose fused operands read prev(h, shift = 1): `steps`
    iterations from the fixed point `states` [B, T, 1, D] (held constant), each evaluating its operands
    again with autograd, then the readout. Returns (o in the op layout, final state [N, D] or None)."""
    ir = spec.ir
    B, T, _, D = states.shape
    scan = spec.memo["fixed_point_scan"]
    prev, ht = states, None
    for _ in range(steps):
        step = fused_operands(spec, pattern, args, options, B, T, h0, cu, states)
        prev, (states, ht) = states, fused_step(scan, pattern, step, states, h0, cu, want_final)
    ref = next(args[a.name] for a in spec.args if a.kind == "input")
    ev = operand_evaluator(spec, args, options, h0, cu, prev, states)
    return _readout(spec, ev, ir.roots_with("output:")[0][1], ht, B, T, 1, D, ref)


def fused_operands(spec, pattern, args: dict, options: dict, B: int, T: int, h0, cu, prev=None):
    """The fused kernels' operands (fp_fused.FusedIteration) evaluated from the spec arguments `args`
    (op layout), the initial state h0 [N, D] (or None) and, for operands that read prev(h, shift = 1), the
    iterate prev [B, T, 1, D]."""
    from .fp_fused import FusedIteration
    ev = operand_evaluator(spec, args, options, h0, cu, prev)
    return FusedIteration.build(pattern, spec.ir, ev, B, T, None if h0 is None else h0.contiguous(), cu,
                                args, options)


def shifted_operands(spec, pattern, args: dict, options: dict, B: int, T: int, h0, cu):
    """fp_shifted.ShiftedIteration for a pattern whose operands read prev(h, shift = 1): the operands evaluated
    once from the start of the solve (h^0 = 0) and the values that do not read the iterate, kept for the
    evaluations before the later launches."""
    from .fp_fused import FusedIteration
    from .fp_products import IterateProducts, products
    from .fp_reflections import ReflectionLaunches
    from .fp_shifted import ShiftedIteration
    ir, D = spec.ir, spec.ir.state[1][0]
    ref = next(args[a.name] for a in spec.args if a.kind == "input")
    ev = operand_evaluator(spec, args, options, h0, cu, torch.zeros(B, T, 1, D, device=ref.device))
    found = products(ir, ev, B, T)
    moving = reflections(ir, pattern, found)
    iterate_products = IterateProducts(ir, ev, B, T, ref.dtype, None if h0 is None else h0.float(), cu, found,
                                       () if moving is None else (moving.product,))
    iterate_products.fill(ev, zero_iterate=h0 is None)
    step = FusedIteration.build(pattern, ir, ev, B, T, None if h0 is None else h0.contiguous(), cu, args, options)
    kept = {i: v for i, v in ev.memo.items() if not ir.reads(i, "prev")}
    launches = None if moving is None else ReflectionLaunches(moving, iterate_products, step, ref.dtype)
    return ShiftedIteration(ir, step, lambda prev: operand_evaluator(spec, args, options, h0, cu, prev), kept,
                            iterate_products, launches)


def reflections(ir, pattern, found):
    """fp_reflections.MovingReflections where the reflection vectors are a weight product of prev(h, shift = 1)
    among the products `found` (and RECDSL_FP_REFLECTIONS is not "torch", which keeps them on torch's passes for
    a comparison), else None."""
    import os
    from . import fp_reflections
    choice = os.environ.get("RECDSL_FP_REFLECTIONS", "triton")
    if choice not in ("triton", "torch"):
        raise ValueError(f"RECDSL_FP_REFLECTIONS={choice!r}: expected 'triton' or 'torch'")
    return fp_reflections.match(ir, pattern, found) if "u" in pattern.varying and choice == "triton" else None


def operand_evaluator(spec, args: dict, options: dict, h0, cu, prev=None, states=None):
    """An Evaluator of the spec's iterate-free nodes and of those reading prev(h, shift = 1), the iterate
    `prev` [B, T, 1, D] one token back (each sequence's first token reads h0 [N, D], or zeros); with
    `states` (the next iterate, like prev), of the readout too."""
    from recdsl.backends.reference import leaf_values
    from recdsl.evaluate import Evaluator, shift_tokens

    from .matrix import _LazyLayout
    ir = spec.ir
    base = leaf_values(ir, _LazyLayout(spec, args, torch.float32, "input"),
                       _LazyLayout(spec, args, torch.float32, "weight"), options)   # weights broadcast
    first = None if h0 is None else h0.reshape(h0.shape[0], 1, -1).float()

    def leaf(i, n):
        if n.op == "prev":    # fp_fused.match lets only prev(h, shift = 1) into an operand
            if prev is None:
                raise ValueError(f"{ir.name}: an operand reads prev(h, shift = 1); pass the iterate")
            return shift_tokens(prev, first, cu)
        if n.op == "state" and states is not None:
            return states
        return base(i, n)
    # weight products of many columns (Wu @ h_last) on tensor cores at the reflection products' precision, the
    # weight gradient of half inputs in their dtype (gemm.py): cuBLAS's fp32 GEMM and its weight gradient took
    # 0.71 ms of a training call's tail (2026-11-28l)
    from .fp_products import HALF
    w_exact = all(getattr(args.get(a.name), "dtype", None) in HALF for a in spec.args if a.kind == "weight")
    ref = next(args[a.name] for a in spec.args if a.kind == "input")
    grad_half = ref.dtype if ref.dtype in HALF else None
    # l2norm as one Triton pass (l2norm.py): F.normalize (a norm, then a division by the broadcast norm on
    # torch's strided element-wise path) took about 1.9 ms of a 17-iteration shifted solve at issue 5's shape,
    # the kernel 0.8 ms (H100 profiles 2026-11-27t and 27u)
    return Evaluator(ir, leaf, kernels={"l2norm": _l2norm,
                                        "matmul": lambda a, b, ra, rb: _matmul(a, b, ra, rb, w_exact, grad_half)})


def _matmul(a, b, ra: int, rb: int, w_exact: bool, half):
    """evaluate.matmul, weight products on the GPU through gemm.weight_product; torch's where
    RECDSL_FP_REFLECTION_FP32=ieee asks for FMA products, or RECDSL_FP_WEIGHT_PRODUCTS=torch for a comparison
    (read when a call runs eagerly: a replayed CUDA graph keeps the products it captured)."""
    import os
    from recdsl.evaluate import matmul
    from .fp_reflections import precision
    from .gemm import weight_product
    choice = os.environ.get("RECDSL_FP_WEIGHT_PRODUCTS", "triton")
    if choice not in ("triton", "torch"):
        raise ValueError(f"RECDSL_FP_WEIGHT_PRODUCTS={choice!r}: expected 'triton' or 'torch'")
    take = (choice == "triton" and isinstance(a, torch.Tensor) and a.is_cuda
            and precision(torch.float32) != "ieee")
    y = weight_product(a, b, ra, rb, w_exact, half) if take else None
    return matmul(a, b, ra, rb) if y is None else y


def _l2norm(x):
    from recdsl.evaluate import l2norm
    from .l2norm import l2norm as kernel
    return kernel(x)[0] if isinstance(x, torch.Tensor) and x.is_cuda else l2norm(x)


def _graphs(spec, key, make, shapes: int = 4):
    """The spec's fp_graph.SolveGraphs for this call shape, made by make() when new (the last `shapes` shapes
    are kept)."""
    cache = spec.memo.setdefault("fp_graphs", {})
    if key not in cache:
        if len(cache) >= shapes:
            cache.pop(next(iter(cache)))
        cache[key] = make()
    return cache[key]


def _readout(spec, ev, out, ht, B, T, H, D, ref):
    """(o in the op layout and the inputs' dtype, final state or None) from the last iterate's evaluator."""
    ir = spec.ir
    o = torch.as_tensor(ev(out), dtype=torch.float32, device=ref.device)
    o = o.expand((B, T, H) + ir.node(out).shape)
    if not ir.heads:
        o = o.squeeze(2)
    final = None if ht is None else ht.reshape((ht.shape[0],) + ((H,) if ir.heads else ()) + (D,))
    return o.to(ref.dtype), final
