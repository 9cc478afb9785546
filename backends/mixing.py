"""The materialised token-mixing operator: a second, parallel oracle for the reference loop.

For a zero initial state, y_t = sum_{s <= t} M[t, s] x_s + r_t, where x_s is what step s writes and
r_t the part of the readout that does not read the state. Two forms, both built from dense
transition matrices rather than from the state loop:

- matrix states S[K, V] whose transitions act on the key axis, with rank-one writes k v^T (or
  delta writes, interleaved as in the loop): M is a scalar per (t, s) per head, x_s = v_s, and the
  columns s run over the T * n_h write events (MOHAWK's matrix mixer view, Bick et al. 2024);
- any other state, flattened to n numbers: M[t, s] is an [m, n] block, x_s the write vector.
"""
from __future__ import annotations

import torch

from recdsl.backends.reference import leaf_values, step_program
from recdsl.evaluate import Evaluator, apply_linmap
from recdsl.opcall import internal, prepare


def materialize(spec, *args, **kwargs):
    """Returns (M, y): the mixing operator and the outputs it gives, in the op's output layout.
    M is [B, H, T, E] (key-axis form) or [B, H, T, m, T, n] (flattened form); H is 1 without heads."""
    ir = spec.ir
    if ir.solve:
        raise ValueError(f"{spec.name}: the write reads prev(...), so the mixing operator depends on the "
                         "fixed point itself; materialise the dense A_t instead")
    raw, options, ref, _ = prepare(spec, args, dict(kwargs))
    inputs, weights = internal(spec, raw, torch.float64)
    B, T = ref.shape[:2]
    H = ir.heads or 1
    ev = Evaluator(ir, leaf_values(ir, inputs, weights, options, T))
    if _key_axis_form(ir):
        M, y = _key_axis(ir, ev, B, T, H)
    else:
        M, y = _flattened(ir, ev, B, T, H)
    y = y if spec.heads else y.squeeze(2)
    return M, y.to(ref.dtype)


def _key_axis_form(ir) -> bool:
    S = ir.state[1]
    if len(S) != 2 or ir.node(ir.root("write")).op not in ("outer", "delta"):
        return False
    for i in ir.graph.nodes:
        n = ir.node(i)
        if n.op == "diag" and len(ir.node(ir.operands(i)[0]).shape) > 1:
            return False  # an element-wise gate over [K, V] also acts on the value axis
        if n.op in ("blockdiag", "mix"):
            return False
    return True


def _dense(ir, lin: int, ev, B, T, H, key_axis: bool, steps=None) -> torch.Tensor:
    """The matrix of linmap `lin` at every token, [B, T, H, n, n], from its action on a basis:
    on the key axis (n = K) the identity is itself a [K, K] state; otherwise the flattened state's
    basis vectors ride on a leading axis."""
    shape = ir.state[1]
    if key_axis:
        K = shape[0]
        eye = torch.eye(K, dtype=torch.float64).reshape(1, 1, 1, K, K)
        return apply_linmap(ir, lin, eye, ev, steps=steps).expand(B, T, H, K, K)
    n = int(torch.tensor(shape).prod())
    basis = torch.eye(n, dtype=torch.float64).reshape((n, 1, 1, 1) + shape)
    cols = apply_linmap(ir, lin, basis, ev, steps=steps).expand((n, B, T, H) + shape)
    return cols.reshape(n, B, T, H, n).permute(1, 2, 3, 4, 0)   # [B, T, H, row, col]


def _events(ir, ev, B, T, H, key_axis: bool):
    """Per token, the micro-operations of the loop: ("A", [B,T,H,n,n]) or ("w", key, value)."""
    ops, writes = [], []
    write = ir.root("write")
    for kind, node in step_program(ir):
        if kind == "apply":
            ops.append(("A", _dense(ir, node, ev, B, T, H, key_axis)))
        elif kind == "write":
            ops.append(("w", None, write))
        else:  # a delta write: step j's write passes through reflections j+1..n_h only
            k_id, beta_id = ir.operands(node)
            k, beta = ev(k_id), ev(beta_id)
            v = ev(ir.operands(write)[1])
            multi = len(ir.node(k_id).shape) == 2
            steps = k.shape[-2] if multi else 1
            reflections = [_dense(ir, node, ev, B, T, H, key_axis, steps=slice(j, j + 1) if multi else None)
                           for j in range(steps)]
            ops += [("A", R) for R in reflections]
            for j in range(steps):
                key = (beta[..., j, None] * k[..., j, :]) if multi else beta[..., None] * k
                for R in reflections[j + 1:]:
                    key = torch.einsum("bthij,bthj->bthi", R, key)
                writes.append(("w", key, v[..., j, :] if multi else v))
    return ops + writes


def _key_axis(ir, ev, B, T, H):
    K, V = ir.state[1]
    ops = _events(ir, ev, B, T, H, key_axis=True)
    n_writes = sum(1 for o in ops if o[0] == "w")
    E = T * n_writes
    Z = torch.zeros(B, H, E, K, dtype=torch.float64)          # propagated key of every write event
    values = torch.zeros(B, H, E, V, dtype=torch.float64)
    out_id = ir.roots_with("output:")[0][1]
    M = torch.zeros(B, H, T, E, dtype=torch.float64)
    r = []
    for t in range(T):
        e = t * n_writes
        for op in ops:
            if op[0] == "A":
                Z = torch.einsum("bhij,bhej->bhei", op[1][:, t], Z)
            else:
                key, val = op[1], op[2]
                if key is None:  # outer(k, v) write
                    a, b = ir.operands(val)
                    key, val = ev(a), ev(b)
                Z[:, :, e] = key[:, t]
                values[:, :, e] = val[:, t]
                e += 1
        # readout of S = sum_e Z_e v_e^T, linear in S: evaluate with S = [K, E] (one column per event)
        M[:, :, t] = _readout_at(ir, out_id, ev, t, Z.transpose(-1, -2)) - _readout_at(ir, out_id, ev, t, None, E)
        r.append(_readout_at(ir, out_id, ev, t, torch.zeros(B, H, K, V, dtype=torch.float64)))
    y = torch.einsum("bhte,bhev->bthv", M, values) + torch.stack(r, 1)
    return M, y


def _flattened(ir, ev, B, T, H):
    shape = ir.state[1]
    n = int(torch.tensor(shape).prod())
    ops = _events(ir, ev, B, T, H, key_axis=False)
    out_id = ir.roots_with("output:")[0][1]
    Z = torch.zeros(B, H, T, n, n, dtype=torch.float64)   # Z[s] = propagator from step s's write to now
    rows, r = [], []
    for t in range(T):
        for op in ops:
            if op[0] == "A":
                Z = torch.einsum("bhij,bhsjk->bhsik", op[1][:, t], Z)
            else:
                Z[:, :, t] = torch.eye(n, dtype=torch.float64)
        basis = torch.eye(n, dtype=torch.float64).reshape((n, 1, 1) + shape)
        zero = torch.zeros((1, 1) + shape, dtype=torch.float64)
        base = _readout_at(ir, out_id, ev, t, zero)
        base = base.expand((B, H) + base.shape[2:])
        R = _readout_at(ir, out_id, ev, t, basis) - base      # [n, B, H, *out]
        R = R.expand((n,) + base.shape).reshape(n, B, H, -1).permute(1, 2, 3, 0)   # [B, H, m, n]
        rows.append(torch.einsum("bhmn,bhsnk->bhmsk", R, Z))
        r.append(base)
    M = torch.stack(rows, 2)                                  # [B, H, t, m, s, n]
    w = ev(ir.root("write")).reshape(B, T, H, n).permute(0, 2, 1, 3)
    y = torch.einsum("bhtmsn,bhsn->bthm", M, w)
    out_shape = ir.node(out_id).shape
    y = y.reshape((B, T, H) + out_shape) + torch.stack(r, 1).reshape((B, T, H) + out_shape)
    return M, y


def _readout_at(ir, out_id, ev, t, S, E=None):
    """Evaluate the readout at token t with the state replaced by S (None: a zero state with E columns)."""
    def leaf(i, node):
        if node.op == "state":
            if S is None:
                return torch.zeros(1, 1, node.shape[0], E, dtype=torch.float64)
            return S
        v = ev(i)
        return v[:, t] if isinstance(v, torch.Tensor) and v.dim() >= 2 else v

    inner = Evaluator(ir, leaf)
    for i, v in ev.memo.items():
        if ir.node(i).op != "state":
            inner.memo[i] = v[:, t] if isinstance(v, torch.Tensor) and v.dim() >= 2 else v
    return inner(out_id)
