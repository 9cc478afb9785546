"""Matrix-state specs with a scalar or per-key diagonal transition, run by the chunked kernels.

The IR is matched against S_t = diag(a_t) S_{t-1} + k'_t v'_t^T, y_t = c * (q'_t @ S_t): the
sub-expressions q', k', v', the decay a_t (in log space, with its sign when the analysis says it can
be negative) and the scalar c are evaluated from the IR with torch (autograd flows through them), and
the chunked kernels of chunk.py do the recurrence. One kernel family serves linear attention, RetNet,
Mamba-2, GLA and their signed variants.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from recdsl.ir import IR


@dataclass(frozen=True)
class MatrixPattern:
    decay: str            # none | scalar | perkey
    gate: int | None      # value node of a_t (None for identity)
    log_gate: int | None  # value node G with a_t = exp(G), when the IR says so
    signed: bool          # a_t may be negative: carried as (log|a|, sign)
    q: int
    k: int
    v: int
    scale: tuple[int, ...]  # scalar value nodes multiplying the readout


def matrix_state_reason(ir: IR, what: str = "a matrix") -> str | None:
    """Why a spec is not a plain recurrence over a two-axis state (what every matrix-state kernel
    family needs first), or None."""
    if len(ir.state[1]) != 2:
        return f"the state {list(ir.state[1])} is not {what}"
    if any(ir.node(i).op == "prev" for i in ir.graph.nodes):
        return "the spec iterates a fixed point"
    return None


def match(ir: IR, eig_lo: float) -> MatrixPattern | str:
    """The pattern, or the reason this spec does not fit it."""
    reason = matrix_state_reason(ir)
    if reason:
        return reason
    S = ir.state[1]
    trans, write = ir.root("transition"), ir.root("write")
    tn = ir.node(trans)
    if tn.op == "identity":
        decay, gate = "none", None
    elif tn.op == "diag" and ir.node(ir.operands(trans)[0]).shape in ((), S[:1]):
        gate = ir.operands(trans)[0]
        decay = "scalar" if ir.node(gate).shape == () else "perkey"
    else:
        return "the transition is not one scalar or per-key diag(...)"
    if ir.node(write).op != "outer":
        return "the write is not outer(k, v)"
    k, v = ir.operands(write)
    readout = match_readout(ir)
    if isinstance(readout, str):
        return readout
    q, scale = readout
    log_gate = ir.operands(gate)[0] if gate is not None and ir.node(gate).op == "exp" else None
    signed = gate is not None and log_gate is None and eig_lo < 0
    return MatrixPattern(decay, gate, log_gate, signed, q, k, v, tuple(scale))


def match_readout(ir: IR) -> tuple[int, tuple[int, ...]] | str:
    """(q, scalar factors) of a readout c * (q @ S), or the reason it is not one."""
    scale, node = [], ir.roots_with("output:")[0][1]
    while ir.node(node).op == "mul":
        a, b = ir.operands(node)
        if ir.node(b).shape == () and not ir.reads(b, "state"):
            scale.append(b)
            node = a
        elif ir.node(a).shape == () and not ir.reads(a, "state"):
            scale.append(a)
            node = b
        else:
            return "the readout is not c * (q @ S)"
    if ir.node(node).op != "matmul" or ir.node(ir.operands(node)[1]).op != "state":
        return "the readout is not q @ S"
    q = ir.operands(node)[0]
    if ir.reads(q, "state") or ir.node(q).shape != ir.state[1][:1]:
        return "the readout's query is not a vector over the key axis"
    return q, tuple(scale)


class _LazyLayout(dict):
    """Arguments in the reference layout, converted on first use: expressions read only what they need."""

    def __init__(self, spec, raw, dtype, kind):
        super().__init__()
        self.spec, self.raw, self.dtype, self.kind = spec, raw, dtype, kind

    def __missing__(self, name):
        x = self.raw[name].to(self.dtype)
        if self.spec.heads is None:
            x = x.unsqueeze(2) if self.kind == "input" else x.unsqueeze(0)
        self[name] = x
        return x



class _Values:
    """value(i, shape, keep_dtype) is node i over [B, T, H, *shape]: an input passed through in its own
    dtype when keep_dtype (no copy), l2-normalised in it where declared; anything else evaluated from the
    IR in fp32 with autograd. value.many([(i, shape), ..], keep_dtype) is the same for several nodes, with
    the declared l2norms of same-width inputs in one launch (q and k: one launch less per call)."""

    def __init__(self, spec, raw: dict, ev, ref: torch.Tensor):
        self.ir, self.raw, self.ev, self.ref = spec.ir, raw, ev, ref

    def _input(self, i):
        n = self.ir.node(i)
        x = self.raw[n.args[0]]
        return (x if self.ir.heads is not None else x.unsqueeze(2)), any(c[0] == "l2norm" for c in n.args[1])

    def __call__(self, i, shape, keep_dtype=False):
        from .l2norm import l2norm
        if keep_dtype and self.ir.node(i).op == "input":
            x, norm = self._input(i)
            return l2norm(x)[0] if norm else x
        B, T = self.ref.shape[:2]
        return torch.as_tensor(self.ev(i), dtype=torch.float32, device=self.ref.device).expand(
            (B, T, self.ir.heads or 1) + shape)

    def many(self, items, keep_dtype=False) -> list:
        from .l2norm import l2norm
        out = [None] * len(items)
        norms = []
        for j, (i, shape) in enumerate(items):
            if keep_dtype and self.ir.node(i).op == "input":
                x, norm = self._input(i)
                if norm:
                    norms.append((j, x))
                    continue
                out[j] = x
            else:
                out[j] = self(i, shape, keep_dtype)
        while norms:   # l2norm takes two tensors of one width and dtype per launch
            (j1, x1), rest = norms[0], norms[1:]
            mate = next((m for m in rest if m[1].shape[-1] == x1.shape[-1] and m[1].dtype == x1.dtype), None)
            ys = l2norm(x1) if mate is None else l2norm(x1, mate[1])
            out[j1] = ys[0]
            if mate is not None:
                out[mate[0]] = ys[1]
            norms = [m for m in rest if m is not mate]
        return out


def ir_values(spec, raw: dict, options: dict):
    """(value, scalar): value is a _Values over the call's arguments; scalar(i) is a per-call constant
    node as a float."""
    from recdsl.backends.reference import leaf_values
    from recdsl.evaluate import Evaluator
    ir = spec.ir
    ref = next(raw[a.name] for a in spec.args if a.kind == "input")
    ev = Evaluator(ir, leaf_values(ir, _LazyLayout(spec, raw, torch.float32, "input"),
                                   _LazyLayout(spec, raw, torch.float32, "weight"), options, ref.shape[1]))

    def scalar(i):
        v = ev(i)
        return float(v) if not isinstance(v, torch.Tensor) else float(v.reshape(-1)[0])
    return _Values(spec, raw, ev, ref), scalar


def run_matrix(spec, pattern: MatrixPattern, raw: dict, options: dict, h0, cu, output_final_state, chunk_size=64,
               inference="chunk"):
    from .chunk_launch import chunk_linear_recurrence
    ir = spec.ir
    dtype = next(raw[a.name] for a in spec.args if a.kind == "input").dtype
    full, scalar = ir_values(spec, raw, options)
    K, V = ir.state[1]
    q, k, v = full.many([(pattern.q, (K,)), (pattern.k, (K,)), (pattern.v, (V,))], keep_dtype=True)
    g = sign = None
    if pattern.decay != "none":
        gshape = () if pattern.decay == "scalar" else (K,)
        if pattern.log_gate is not None:
            g = full(pattern.log_gate, gshape, keep_dtype=True).float()
        else:
            a = full(pattern.gate, gshape)
            g = torch.log(a.abs().clamp_min(1e-30))
            sign = torch.where(a.detach() < 0, -1, 1).to(torch.int8) if pattern.signed else None
    scale = 1.0
    for s in pattern.scale:
        scale *= scalar(s)
    kernel_dtype = dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32
    h0 = None if h0 is None else (h0 if ir.heads else h0.unsqueeze(1)).float()
    o, final = chunk_linear_recurrence(q.to(kernel_dtype).contiguous(), k.to(kernel_dtype).contiguous(),
                                       v.to(kernel_dtype).contiguous(), g=None if g is None else g.contiguous(),
                                       sign=sign, scale=scale, initial_state=h0,
                                       output_final_state=output_final_state, cu_seqlens=cu,
                                       chunk_size=chunk_size, inference=inference)
    if not ir.heads:
        o = o.squeeze(2)
        final = None if final is None else final.squeeze(1)
    return o.to(dtype), final
