"""The reference backend: a sequential loop over time, generated from the IR.

Per token: the transition's factors are applied right to left, then the write is added. A
`delta(k, v, beta)` write belongs to its `householder(k, beta)` factor: step j's write beta_j k_j v_j^T
passes through the later reflections j+1..n_h of that product and through no other factor, so
S_t = A_t S_{t-1} + sum_j H_n..H_{j+1} beta_j k_j v_j^T (DeltaProduct; Gated DeltaNet for n_h = 1).
Specs that read `prev(...)` are solved by fixed-point iteration of the whole loop (recdsl/solve.py).

Internal layout: values [B, T, H, *shape] (H = 1 for specs without heads), state [B, H, *state].
"""
from __future__ import annotations

import torch

from recdsl.evaluate import Evaluator, apply_linmap, l2norm, shift_tokens
from recdsl.ir import IR
from recdsl.solve import fixed_point


def step_program(ir: IR) -> list[tuple[str, int]]:
    """The per-token update as a list of ("apply", linmap) / ("delta", householder) / ("write", value)."""
    trans, write = ir.root("transition"), ir.root("write")
    factors = ir.factors(trans)
    wn = ir.node(write)
    if wn.op != "delta":
        return [("apply", f) for f in factors] + [("write", write)]
    k, _, beta = ir.operands(write)
    prog = []
    for f in factors:
        paired = ir.node(f).op == "householder" and ir.operands(f) == [k, beta]
        prog.append(("delta", f) if paired else ("apply", f))
    return prog




def leaf_values(ir: IR, inputs: dict, weights: dict, options: dict, T: int | None = None):
    """Leaf supplier for the evaluator in the time-batched layout [B, T, H, *shape]. Weights come as
    [1, 1, *shape], broadcast over batch and tokens, or with T expanded to [1, T, *shape] for a loop that takes
    token t of every value. (Broadcast, a product with a weight stays one product over all tokens, and its
    gradient needs no [T, *shape] buffer: 4.3 GB for Wu [2, 512, 512] at T = 2048.)"""
    def leaf(i, n):
        if n.op == "input":
            x = inputs[n.args[0]]
            return l2norm(x) if any(c[0] == "l2norm" for c in n.args[1]) else x
        if n.op == "weight":
            w = weights[n.args[0]]
            w = (l2norm(w) if any(c[0] == "l2norm" for c in n.args[1]) else w).unsqueeze(0).unsqueeze(0)
            return w if T is None else w.expand(1, T, *w.shape[2:])
        if n.op == "option":
            return options[n.args[0]]
        raise ValueError(f"leaf {n.op!r} has no value outside the loop")
    return leaf


def run(ir: IR, inputs: dict, weights: dict, options: dict, initial_state: torch.Tensor | None,
        compute_dtype: torch.dtype):
    """Run the recurrence. Returns (outputs [B, T, H, *out], final state [B, H, *S], SolveInfo | None)."""
    any_input = next(iter(inputs.values()))
    B, T = any_input.shape[:2]
    H = ir.heads or 1
    S0 = initial_state if initial_state is not None else \
        torch.zeros((B, H) + ir.state[1], dtype=compute_dtype, device=any_input.device)
    prev_names = sorted({ir.node(i).args[0] for i in ir.graph.nodes if ir.node(i).op == "prev"})
    if not prev_names:
        o, S, _ = _loop(ir, inputs, weights, options, S0, {}, B, T, H)
        return o, S, None
    out_name = ir.roots_with("output:")[0][0]
    prev = {}
    for name in prev_names:
        shape = ir.state[1] if name == ir.state[0] else ir.node(ir.root(f"output:{name}")).shape
        prev[name] = torch.zeros((B, T, H) + tuple(shape), dtype=compute_dtype, device=any_input.device)

    def step(prev):
        o, S, states = _loop(ir, inputs, weights, options, S0, prev, B, T, H, keep_states=ir.state[0] in prev)
        return {name: (o if name == out_name else states) for name in prev_names}, (o, S)

    (o, S), _, info = fixed_point(step, prev, dict(ir.solve), training=torch.is_grad_enabled(), name=ir.name,
                                  stacklevel=4)
    return o, S, info


def _loop(ir, inputs, weights, options, S0, prev, B, T, H, keep_states=False):
    base = leaf_values(ir, inputs, weights, options, T)

    def leaf(i, n):
        if n.op == "prev":
            x = prev[n.args[0]]
            if len(n.args) == 1:
                return x
            # prev(x, shift = 1): x^(l-1)_(t-1), at a sequence's start the initial state (an output: zeros)
            return shift_tokens(x, S0 if n.args[0] == ir.state[0] else None)
        return base(i, n)

    ev = Evaluator(ir, leaf)
    program = step_program(ir)
    # everything outside the readout is independent of the state: evaluate once for all t
    needed = []
    for kind, node in program:
        needed += [node] if kind == "write" else _value_operands(ir, node)
    if program and program[-1][0] != "write":  # a delta write: its v is read inside the loop
        needed.append(ir.operands(ir.root("write"))[1])
    pre = {j: ev(j) for j in needed}
    out_id = ir.roots_with("output:")[0][1]
    for j in _state_free_operands(ir, out_id):
        pre[j] = ev(j)
    S, outs, states = S0, [], []
    for t in range(T):
        at = {j: (v[:, t] if isinstance(v, torch.Tensor) and v.dim() >= 2 else v) for j, v in pre.items()}
        value = lambda j: at[j]
        W = None   # the delta writes of this token: they pass through later reflections, no other factor
        for kind, node in program:
            if kind == "apply":
                S = apply_linmap(ir, node, S, value)
            elif kind == "write":
                S = S + at[node]
            else:
                k_id = ir.operands(node)[0]
                k, beta, v = at[k_id], at[ir.operands(node)[1]], at[ir.operands(ir.root("write"))[1]]
                multi = len(ir.node(k_id).shape) == 2
                W = torch.zeros_like(S)
                for jj in range(k.shape[-2] if multi else 1):
                    kj, bj, vj = (k[..., jj, :], beta[..., jj], v[..., jj, :]) if multi else (k, beta, v)
                    step = slice(jj, jj + 1) if multi else None
                    S = apply_linmap(ir, node, S, value, steps=step)
                    W = apply_linmap(ir, node, W, value, steps=step)
                    W = W + (bj.unsqueeze(-1) * kj).unsqueeze(-1) * vj.unsqueeze(-2)
        if W is not None:
            S = S + W
        outs.append(_readout(ir, out_id, S, at))
        if keep_states:
            states.append(S)
    if not outs:   # an empty sequence (varlen): no outputs, the state passes through
        o = S0.new_zeros((B, 0, H) + tuple(ir.node(out_id).shape))
        return o, S, (S0.new_zeros((B, 0) + tuple(S0.shape[1:])) if keep_states else None)
    o = torch.stack(outs, dim=1)
    return o, S, (torch.stack(states, dim=1) if keep_states else None)


def _value_operands(ir: IR, linmap: int) -> list[int]:
    out = []
    for j in ir.operands(linmap):
        out += [j] if ir.node(j).kind == "value" else _value_operands(ir, j)
    return out


def _state_free_operands(ir: IR, out_id: int) -> list[int]:
    """Maximal sub-expressions of the readout that do not read the state."""
    import networkx as nx
    state_ids = {i for i in ir.graph.nodes if ir.node(i).op == "state"}
    reads_state = lambda i: i in state_ids or bool(nx.ancestors(ir.graph, i) & state_ids)
    found, todo = [], [out_id]
    while todo:
        i = todo.pop()
        if reads_state(i):
            todo += ir.operands(i)
        elif ir.node(i).op != "const":
            found.append(i)
    return found


def _readout(ir, out_id, S, at):
    def leaf(i, n):
        if n.op == "state":
            return S
        return at[i]
    ev = Evaluator(ir, leaf)
    ev.memo.update({i: v for i, v in at.items()})
    return ev(out_id)
