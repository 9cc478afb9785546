"""Evaluate IR values and apply IR linear maps with torch: shared by the reference backend and the layer.

Every value is a tensor [*batch, *node.shape]: the batch part ([B, T, H] or [B, H]) is the same for all
values of one evaluation, so an op only needs the per-token shapes recorded on its nodes. Left-aligned
broadcasting (the language's rule) becomes trailing unsqueezes of the shorter per-token shape.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .ir import IR

UNARY = {
    "neg": torch.neg, "exp": torch.exp, "log": torch.log, "sigmoid": torch.sigmoid, "logsigmoid": F.logsigmoid,
    "softplus": F.softplus, "silu": F.silu, "tanh": torch.tanh, "relu": torch.relu, "sqrt": torch.sqrt,
    "abs": torch.abs,
}
BINARY = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "pow": torch.pow}


def align(x, rank: int, out_rank: int):
    """Left-aligned broadcast: append singleton axes so a per-token rank `rank` meets `out_rank`."""
    if not isinstance(x, torch.Tensor) or rank == out_rank:
        return x
    return x.reshape(x.shape + (1,) * (out_rank - rank))


def shift_tokens(x: torch.Tensor, first: torch.Tensor | None, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """x [B, T, ...] one token later: y_t = x_(t-1), and `first` [N, ...] (zeros when None) at the start of
    each sequence (one per batch row, or packed by cu_seqlens with B == 1): prev(h, shift = 1)."""
    if cu_seqlens is None:
        fill = torch.zeros_like(x[:, :1]) if first is None else first.to(x.dtype).unsqueeze(1)
        return torch.cat([fill, x[:, :-1]], dim=1)
    y = torch.cat([x[:, :1], x[:, :-1]], dim=1)
    cu = cu_seqlens.long()
    real = cu[1:] > cu[:-1]                           # empty sequences start nowhere
    fill = x.new_zeros((len(real),) + tuple(x.shape[2:])) if first is None else first.to(x.dtype)
    return y.index_put((torch.zeros_like(cu[:-1][real]), cu[:-1][real]), fill[real])


def l2norm(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1, eps=1e-12)


class Evaluator:
    """Memoised evaluation of value nodes. `leaf(i, node)` supplies leaves; `layer_op(i, node, x)`
    the layer's parametrised ops (linear, mlp, norms); `kernels` {op: fn(*operand values)} replaces the
    torch expression of an op (a backend's kernel for it); a "matmul" kernel takes (a, b, ra, rb) as matmul()."""

    def __init__(self, ir: IR, leaf, layer_op=None, kernels: dict | None = None):
        self.ir, self.leaf, self.layer_op, self.kernels = ir, leaf, layer_op, kernels or {}
        self.memo: dict[int, torch.Tensor] = {}

    def __call__(self, i: int):
        if i in self.memo:
            return self.memo[i]
        ir, n = self.ir, self.ir.node(i)
        ops = ir.operands(i)
        if not ops and n.op != "const":
            v = self.leaf(i, n)
        elif n.op == "const":
            v = n.args[0]
        elif n.op == "matmul":    # a kernel for it takes the ranks too
            v = self.kernels.get("matmul", matmul)(self(ops[0]), self(ops[1]), len(ir.node(ops[0]).shape),
                                                   len(ir.node(ops[1]).shape))
        elif n.op in self.kernels:
            v = self.kernels[n.op](*(self(o) for o in ops))
        elif n.op in UNARY:
            v = UNARY[n.op](self(ops[0]))
        elif n.op in BINARY:
            a, b = self(ops[0]), self(ops[1])
            ra, rb, r = len(ir.node(ops[0]).shape), len(ir.node(ops[1]).shape), len(n.shape)
            a, b = align(a, ra, r), align(b, rb, r)
            if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
                v = BINARY[n.op](torch.tensor(a), torch.tensor(b)).item()
            else:
                v = BINARY[n.op](a, b)
        elif n.op == "l2norm":
            v = l2norm(self(ops[0]))
        elif n.op == "outer":
            v = self(ops[0]).unsqueeze(-1) * self(ops[1]).unsqueeze(-2)
        elif n.op == "delta":  # as a plain value: sum_j beta_j k_j v_j^T (the interleaving lives in the loop)
            k, vv, beta = (self(o) for o in ops)
            if k.dim() and len(ir.node(ops[0]).shape) == 2:
                v = torch.einsum("...jk,...jv->...kv", k * beta.unsqueeze(-1), vv)
            else:
                v = (k * beta.unsqueeze(-1)).unsqueeze(-1) * vv.unsqueeze(-2)
        elif n.op == "mix":
            x = self(ops[1])
            v = apply_linmap(ir, ops[0], x, self)
            if n.args:   # contractive: I - s (I - Q)
                v = x - n.args[0] * (x - v)
        elif self.layer_op is not None:
            v = self.layer_op(i, n, [self(o) for o in ops])
        else:
            raise ValueError(f"cannot evaluate IR op {n.op!r} here")
        self.memo[i] = v
        return v


def matmul(a, b, ra: int, rb: int):
    """a @ b for IR ranks ra, rb: a's last axis contracted with b's first; leading (batch, head) axes broadcast."""
    left, right = "ijk"[:ra - 1], "pq"[:rb - 1]
    return torch.einsum(f"...{left}n,...n{right}->...{left}{right}", _unexpanded(a, ra), _unexpanded(b, rb))


def _unexpanded(x: torch.Tensor, rank: int) -> torch.Tensor:
    """x with its broadcast (stride-0) leading axes cut to length 1. A weight comes expanded over the tokens;
    einsum would take each token as a batch of its own (a weight [D, D] applied to B vectors, T times over)
    where the cut leaves one product over every token."""
    if not isinstance(x, torch.Tensor):
        return x
    cut = tuple(slice(0, 1) if x.stride(k) == 0 and x.shape[k] > 1 else slice(None) for k in range(x.dim() - rank))
    return x[cut] if any(c.stop == 1 for c in cut) else x


def apply_linmap(ir: IR, i: int, S: torch.Tensor, value, steps: slice | None = None) -> torch.Tensor:
    """A_i S for linmap node i; S is [*batch, *ir.node(i).shape]; `value(j)` evaluates operand values
    (already at the right time step). `steps` restricts a householder product to some of its reflections."""
    n, ops = ir.node(i), ir.operands(i)
    rank = len(n.shape)
    if n.op == "identity":
        return S
    if n.op == "diag":
        return S * align(value(ops[0]), len(ir.node(ops[0]).shape), rank)
    if n.op == "householder":
        k, beta = value(ops[0]), value(ops[1])
        if len(ir.node(ops[0]).shape) == 1:
            return reflect(S, k, beta, rank)
        for j in range(k.shape[-2])[steps or slice(None)]:
            S = reflect(S, k[..., j, :], beta[..., j], rank)
        return S
    if n.op == "rank1":
        a, b = value(ops[0]), value(ops[1])
        return align(a, 1, rank) * contract_first(b, S, rank).unsqueeze(-rank)
    if n.op == "blockdiag":
        M = value(ops[0])
        return (M @ S.unsqueeze(-1)).squeeze(-1) if rank == 2 else M @ S
    if n.op == "kron":
        A, Bm = value(ops[0]), value(ops[1])
        if n.args[0]:   # normalised by its spectral norm, ||A (x) B||_2 = ||A||_2 ||B||_2
            A = A / torch.linalg.matrix_norm(A, ord=2).unsqueeze(-1).unsqueeze(-1)
            Bm = Bm / torch.linalg.matrix_norm(Bm, ord=2).unsqueeze(-1).unsqueeze(-1)
        n1, n2 = A.shape[-1], Bm.shape[-1]
        lead, rest = S.shape[:S.dim() - rank], S.shape[S.dim() - rank + 1:]
        X = S.reshape(*lead, n1, n2, -1)                     # the first state axis as [n1, n2]
        Y = torch.einsum("...ij,...lm,...jmr->...ilr", A, Bm, X)
        return Y.reshape(*Y.shape[:-3], n1 * n2, *rest)   # the batch axes broadcast with A's and B's
    if n.op == "compose":
        a, b = ops
        return apply_linmap(ir, a, apply_linmap(ir, b, S, value), value)
    if n.op == "lsum":
        a, b = ops
        return apply_linmap(ir, a, S, value) + apply_linmap(ir, b, S, value)
    raise ValueError(f"{n.op!r} is not a linear map")


def contract_first(k: torch.Tensor, S: torch.Tensor, rank: int) -> torch.Tensor:
    """k^T S over the state's first axis: [*b, K] x [*b, K, *rest] -> [*b, *rest]."""
    return (align(k, 1, rank) * S).sum(dim=-rank)


def reflect(S, k, beta, rank: int):
    """(I - beta k k^T) S on the state's first axis."""
    kS = contract_first(k, S, rank)
    beta = beta if not isinstance(beta, torch.Tensor) else align(beta, 0, rank)
    return S - beta * align(k, 1, rank) * kS.unsqueeze(-rank)
