"""Fixed points over a [D, N] matrix state whose readout is iterated (FP-Mamba, Movahedi et al. 2025,
Sec. 4), the unfused path: each iteration evaluates the decay and the write from the previous output
iterate y^(l-1) with torch (the mixer included) and runs the generated element-wise matrix scan once,

    H^l_t = a_t (*) H^l_(t-1) + w_t(y^(l-1)),   y^l_t = f(H^l_t c_t, y^(l-1)),   y^0 = 0,

under the driver every backend shares (recdsl/solve.py). The scan gives H c; the rest of the readout (in the
paper's code a skip term and a LayerNorm at every iteration) is evaluated in torch, as are operands that read
the previous token's output, prev(y, shift = 1) (its shifted dependence of B, C and the mixer). The gradient
is that of `backward_steps` more iterations from the fixed point held constant, as for vector states
(fixed_point.py).
"""
from __future__ import annotations

import os

import torch

from recdsl.evaluate import shift_tokens
from recdsl.ir import IR

# What the generated scan of each iteration takes. The decay and the write may pass as factors, formed entry by
# entry in the scan's registers, where materialised [B, T, D, N] operands are read at every iteration:
# - a decay exp(s * M) or exp(-(s * M)) with s [D] per token and M [D, N] of the weights alone (Mamba's
#   exp(-dt exp(A_log))) as s and M;
# - a write outer(p, q), p [D] and q [N] (FP-Mamba's dt x~ b^T), as p and q.
# At the A5 task's training shape (batch 512, T = 16, D = 1024, N = 16, bf16 autocast) a step took 48 GPU ms
# so, against 63 with both materialised (H100, results 2026-12-04c/d). RECDSL_FP_MATRIX_DECAY /
# RECDSL_FP_MATRIX_WRITE=materialised pass the operand whole, for a comparison.
DECAY_ENV, WRITE_ENV = "RECDSL_FP_MATRIX_DECAY", "RECDSL_FP_MATRIX_WRITE"


def scan_spec(decay_factors: bool, write_factors: bool) -> str:
    """The text of the per-iteration scan's spec."""
    inputs = (["s[D]"] if decay_factors else ["a[D, N]"]) + (["p[D]", "q[N]"] if write_factors else ["w[D, N]"])
    return "\n".join([
        "recurrence diag_scan_matrix(D = 1, N = 1):",
        "    state H[D, N]",
        f"    input {', '.join(inputs)}, c[N]",
        *(["    weight M[D, N]"] if decay_factors else []),
        f"    transition diag({'exp(s * M)' if decay_factors else 'a'})",
        f"    write {'outer(p, q)' if write_factors else 'w'}",
        "    output y = H @ c", ""])


def _choice(env: str) -> bool:
    choice = os.environ.get(env, "factors")
    if choice not in ("factors", "materialised"):
        raise ValueError(f"{env}={choice!r}: expected factors or materialised")
    return choice == "factors"


def decay_factors(ir: IR, decay: int) -> tuple[int, int, float] | None:
    """(s, M, sign) where the decay is exp(sign * s * M) as scan_spec takes it, else None."""
    if not _choice(DECAY_ENV) or ir.node(decay).op != "exp":
        return None
    (x,) = ir.operands(decay)
    sign = 1.0
    if ir.node(x).op == "neg":
        (x,), sign = ir.operands(x), -1.0
    if ir.node(x).op != "mul":
        return None
    D, N = ir.state[1]
    for s, m in (ir.operands(x), ir.operands(x)[::-1]):
        if ir.node(s).shape == (D,) and ir.node(m).shape == (D, N) and not ir.reads(m, "input", "prev", "state"):
            return s, m, sign
    return None


def write_factors(ir: IR, write: int) -> tuple[int, int] | None:
    """(p, q) where the write is outer(p, q), else None."""
    return tuple(ir.operands(write)) if _choice(WRITE_ENV) and ir.node(write).op == "outer" else None


def readout_product(ir: IR) -> int | None:
    """The readout's one node that reads the state, H @ c with c [N] free of the state, where the state is read
    nowhere else (the rest of the readout element-wise around it), else None."""
    state = [i for i in ir.graph.nodes if ir.node(i).op == "state"]
    users = {u for i in state for u in ir.graph.successors(i)}
    if len(users) != 1:
        return None
    (rd,) = users
    n, S = ir.node(rd), ir.state[1]
    if n.op != "matmul" or ir.node(ir.operands(rd)[0]).op != "state" or \
            ir.node(ir.operands(rd)[1]).shape != S[1:] or ir.reads(ir.operands(rd)[1], "state"):
        return None
    # rd is the state's one user, so the readout reads the state exactly when rd is in it (reads() is a table
    # lookup; this runs on every call)
    return rd if ir.reads(ir.roots_with("output:")[0][1], "state") else None


def eligible(ir: IR) -> str | None:
    """None when this path can run the fixed point, else the reason it cannot."""
    S = ir.state[1]
    if len(S) != 2:
        return f"the state {list(S)} is not a [D, N] matrix"
    if ir.heads:
        return "heads (the matrix path reads one c_t per token for every channel)"
    out_name, out = ir.roots_with("output:")[0]
    if any(ir.node(i).op == "prev" and ir.node(i).args[0] != out_name for i in ir.graph.nodes):
        return f"prev(...) of something other than the output {out_name}"
    trans, write = ir.root("transition"), ir.root("write")
    if ir.node(trans).op != "diag" or ir.node(ir.operands(trans)[0]).shape != S:
        return "the transition is not one element-wise diag(...) over the state's entries"
    if ir.reads(ir.operands(trans)[0], "state") or ir.reads(write, "state") or ir.node(write).shape != S:
        return "the decay or the write reads the current state, or the write is not one value per entry"
    if readout_product(ir) is None:
        return "the readout does not read the state once, as H @ c with c over N free of the state"
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
    out, rd = ir.roots_with("output:")[0][1], readout_product(ir)
    a_id, w_id, c_id = ir.operands(ir.root("transition"))[0], ir.root("write"), ir.operands(rd)[1]
    decay, write = decay_factors(ir, a_id), write_factors(ir, w_id)
    key = ("fixed_point_matrix_scan", decay is not None, write is not None)
    if key not in spec.memo:
        spec.memo[key] = recdsl.load(scan_spec(*key[1:]), D=D, N=N)
    scan = spec.memo[key]
    varying = {i for i in ir.graph.nodes if ir.reads(i, "prev")}

    def leaves():   # the inputs in the reference layout ([B, T, 1, ...]: no heads), converted on first use
        return leaf_values(ir, _LazyLayout(spec, raw, torch.float32, "input"),
                           _LazyLayout(spec, raw, torch.float32, "weight"), options, T)
    base, shared = leaves(), {}

    def iterate(y_prev, final):
        def leaf(i, n):
            if n.op == "prev":   # prev(y, shift = 1): the previous token's output, zeros at a sequence's start
                return (shift_tokens(y_prev, None, cu) if len(n.args) > 1 else y_prev).unsqueeze(2)
            return base(i, n)
        ev = Evaluator(ir, leaf)
        ev.memo.update(shared)      # everything that does not depend on the iterate, evaluated once
        val = lambda i, shape: torch.as_tensor(ev(i), dtype=torch.float32, device=ref.device) \
            .expand((B, T, 1) + shape).squeeze(2)   # noqa: E731
        operands = {"c": val(c_id, (N,))}
        if decay:       # exp(s * sign M): s per token, M of the weights alone (one [D, N] value, which takes the sign)
            operands.update(s=val(decay[0], (D,)), M=decay[2] * val(decay[1], (D, N))[0, 0])
        else:
            operands["a"] = val(a_id, (D, N))
        if write:
            operands.update(p=val(write[0], (D,)), q=val(write[1], (N,)))
        else:
            operands["w"] = val(w_id, (D, N))
        shared.update({i: v for i, v in ev.memo.items() if i not in varying})
        y, last = scan.op(**operands, initial_state=None if h0 is None else h0.float(),
                          output_final_state=final, cu_seqlens=cu, backend="triton")
        if out != rd:       # the rest of the readout around H @ c
            ev.memo[rd] = y.unsqueeze(2)
            y = val(out, (D,))
        return y, last

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
