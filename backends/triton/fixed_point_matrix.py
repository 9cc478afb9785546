"""Fixed points over a [D, N] matrix state whose readout is iterated (FP-Mamba, Movahedi et al. 2025,
Sec. 4), the unfused path: each iteration evaluates the decay and the write from the previous output
iterate y^(l-1) with torch (the mixer included) and runs the generated element-wise matrix scan once,

    H^l_t = a_t (*) H^l_(t-1) + w_t(y^(l-1)),   y^l_t = H^l_t c_t,   y^0 = 0,

under the driver every backend shares (recdsl/solve.py). The gradient is that of `backward_steps` more
iterations from the fixed point held constant, as for vector states (fixed_point.py).
"""
from __future__ import annotations

import torch

from recdsl.ir import IR

SCAN_SPEC = """
recurrence diag_scan_matrix(D = 1, N = 1):
    state H[D, N]
    input a[D, N], w[D, N], c[N]
    transition diag(a)
    write w
    output y = H @ c
"""


def eligible(ir: IR) -> str | None:
    """None when this path can run the fixed point, else the reason it cannot."""
    S = ir.state[1]
    if len(S) != 2:
        return f"the state {list(S)} is not a [D, N] matrix"
    if ir.heads:
        return "heads (the matrix path reads one c_t per token for every channel)"
    out_name, out = ir.roots_with("output:")[0]
    if any(ir.node(i).op == "prev" and ir.node(i).args != (out_name,) for i in ir.graph.nodes):
        return f"prev(...) of something other than the output {out_name} (unshifted)"
    trans, write = ir.root("transition"), ir.root("write")
    if ir.node(trans).op != "diag" or ir.node(ir.operands(trans)[0]).shape != S:
        return "the transition is not one element-wise diag(...) over the state's entries"
    if ir.reads(ir.operands(trans)[0], "state") or ir.reads(write, "state") or ir.node(write).shape != S:
        return "the decay or the write reads the current state, or the write is not one value per entry"
    n = ir.node(out)
    if n.op != "matmul" or ir.node(ir.operands(out)[0]).op != "state" or \
            ir.node(ir.operands(out)[1]).shape != S[1:] or ir.reads(ir.operands(out)[1], "prev", "state"):
        return "the readout is not H @ c with c over N, free of the iterate"
    return None


def run_fixed_point_matrix(spec, raw: dict, options: dict, h0, cu, output_final_state):
    """The core op (op layout in and out). Returns (o, final state, SolveInfo)."""
    import recdsl
    from recdsl.backends.reference import leaf_values
    from recdsl.evaluate import Evaluator
    from recdsl.solve import fixed_point

    from .matrix import _LazyLayout
    ir = spec.ir
    ref = next(raw[a.name] for a in spec.args if a.kind == "input")
    B, T = ref.shape[:2]
    D, N = ir.state[1]
    if "fixed_point_matrix_scan" not in spec.memo:
        spec.memo["fixed_point_matrix_scan"] = recdsl.load(SCAN_SPEC, D=D, N=N)
    scan = spec.memo["fixed_point_matrix_scan"]
    out = ir.roots_with("output:")[0][1]
    a_id, w_id, c_id = ir.operands(ir.root("transition"))[0], ir.root("write"), ir.operands(out)[1]
    varying = {i for i in ir.graph.nodes if ir.reads(i, "prev")}

    def leaves():   # the inputs in the reference layout ([B, T, 1, ...]: no heads), converted on first use
        return leaf_values(ir, _LazyLayout(spec, raw, torch.float32, "input"),
                           _LazyLayout(spec, raw, torch.float32, "weight"), options, T)
    base, shared = leaves(), {}

    def iterate(y_prev, final):
        ev = Evaluator(ir, lambda i, n: y_prev.unsqueeze(2) if n.op == "prev" else base(i, n))
        ev.memo.update(shared)      # everything that does not depend on the iterate, evaluated once
        val = lambda i, shape: torch.as_tensor(ev(i), dtype=torch.float32, device=ref.device) \
            .expand((B, T, 1) + shape).squeeze(2)   # noqa: E731
        a, w, c = val(a_id, (D, N)), val(w_id, (D, N)), val(c_id, (N,))
        shared.update({i: v for i, v in ev.memo.items() if i not in varying})
        return scan.op(a=a, w=w, c=c, initial_state=None if h0 is None else h0.float(),
                       output_final_state=final, cu_seqlens=cu, backend="triton")

    start = {"y": torch.zeros(B, T, D, dtype=torch.float32, device=ref.device)}
    with torch.no_grad():
        _, last, info = fixed_point(lambda it: ({"y": iterate(it["y"], False)[0]}, None), start, dict(ir.solve),
                                    training=torch.is_grad_enabled(), name=ir.name, stacklevel=5)
    # k differentiable iterations from the fixed point (held constant), as for vector states
    shared.clear()
    base = leaves()
    y = last["y"].detach()
    for _ in range(int(dict(ir.solve).get("backward_steps", 1))):
        y, final = iterate(y, output_final_state)
    return y.to(ref.dtype), final, info
