"""Every core op against a loop written straight from its paper's equations (fp64, to 1e-10).

The loops below use only torch and the equations; they share nothing with recdsl's IR."""
import pytest
import torch
import torch.nn.functional as F

from conftest import example, random_args, small

TOL = 1e-10


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def unit(x):
    return F.normalize(x, dim=-1)


def delta_product_loop(q, k, v, beta, g=None, scale=None, h0=None):
    """Siems et al. 2025, per token: S <- exp(g) S; for j: S <- (I - b_j k_j k_j^T) S + b_j k_j v_j^T;
    o = scale S^T q. With n_h = 1 this is DeltaNet (Schlag et al. 2021), with g it is Gated DeltaNet."""
    B, T, H, n, K = k.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    S = torch.zeros(B, H, K, V, dtype=q.dtype) if h0 is None else h0.clone()
    eye = torch.eye(K, dtype=q.dtype)
    out = []
    for t in range(T):
        if g is not None:
            S = torch.exp(g[:, t])[..., None, None] * S
        for j in range(n):
            kj, bj = k[:, t, :, j], beta[:, t, :, j]
            A = eye - bj[..., None, None] * kj[..., :, None] * kj[..., None, :]
            S = A @ S + bj[..., None, None] * kj[..., :, None] * v[:, t, :, j][..., None, :]
        out.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(out, 1), S


def diag_loop(q, k, v, g, scale=None):
    """GLA (Yang et al. 2024) with g [B,T,H,K]; Mamba-2 / SSD (Dao & Gu 2024) with g [B,T,H]:
    S_t = diag(exp g_t) S_{t-1} + k_t v_t^T, o_t = scale S_t^T q_t."""
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    S = torch.zeros(B, H, K, v.shape[-1], dtype=q.dtype)
    out = []
    for t in range(T):
        decay = torch.exp(g[:, t])
        decay = decay[..., :, None] if decay.dim() == 3 else decay[..., None, None]
        S = decay * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        out.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(out, 1), S


def rwkv7_loop(r, w, k, v, a, b, scale=1.0):
    """RWKV-7 (Peng et al. 2025) in the DPLR form: S_t = (diag(exp w_t) + b_t a_t^T) S_{t-1} + k_t v_t^T."""
    B, T, H, K = r.shape
    S = torch.zeros(B, H, K, v.shape[-1], dtype=r.dtype)
    out = []
    for t in range(T):
        A = torch.diag_embed(torch.exp(w[:, t])) + b[:, t, :, :, None] * a[:, t, :, None, :]
        S = A @ S + k[:, t, :, :, None] * v[:, t, :, None, :]
        out.append(scale * torch.einsum("bhk,bhkv->bhv", r[:, t], S))
    return torch.stack(out, 1), S


def block_diagonal_loop(M, v):
    """Fan et al. 2024: h_t[i] = M_t[i] h_{t-1}[i] + v_t[i] for each block i; y_t = h_t."""
    B, T, NB, bs = v.shape
    h = torch.zeros(B, NB, bs, dtype=v.dtype)
    out = []
    for t in range(T):
        h = (M[:, t] @ h[..., None])[..., 0] + v[:, t]
        out.append(h)
    return torch.stack(out, 1), h


def fp_rnn_dense_loop(lam, u, alpha, x, c):
    """Movahedi et al. 2025: the fixed point of h = L h_{t-1} + (I - L)[Q x + (I - Q) h], solved exactly per
    token: (L + (I - L) Q) h_t = L h_{t-1} + (I - L) Q x_t, i.e. A_t = (I + (L^-1 - I) Q)^-1;
    Q_t = H_r ... H_1 with H_i = I - 2 alpha_i u_i u_i^T."""
    B, T, D = x.shape
    eye = torch.eye(D, dtype=x.dtype)
    h = torch.zeros(B, D, dtype=x.dtype)
    out = []
    for t in range(T):
        Q = eye.expand(B, D, D)
        for i in range(u.shape[2]):
            ui = u[:, t, i]
            Q = (eye - 2 * alpha[:, t, i, None, None] * ui[:, :, None] * ui[:, None, :]) @ Q
        L = torch.diag_embed(lam[:, t])
        lhs = L + (eye - L) @ Q
        rhs = (L @ h[..., None] + (eye - L) @ Q @ x[:, t, :, None])[..., 0]
        h = torch.linalg.solve(lhs, rhs)
        out.append(c[:, t] * h)
    return torch.stack(out, 1), h


@pytest.mark.parametrize("name", ["deltanet", "deltanet_negeig"])
def test_deltanet(name):
    spec = small(example(name))
    a = random_args(spec, T=9)
    o, S = spec.op(**a, output_final_state=True)
    lo, lS = delta_product_loop(unit(a["q"]), unit(a["k"])[:, :, :, None], a["v"][:, :, :, None], a["beta"][..., None])
    assert rel(o, lo) < TOL and rel(S, lS) < TOL


def test_gated_deltanet():
    spec = small(example("gated_deltanet"))
    a = random_args(spec, T=9)
    o, S = spec.op(**a, output_final_state=True)
    lo, lS = delta_product_loop(unit(a["q"]), unit(a["k"])[:, :, :, None], a["v"][:, :, :, None],
                                a["beta"][..., None], g=a["g"])
    assert rel(o, lo) < TOL and rel(S, lS) < TOL


@pytest.mark.parametrize("n_h", [1, 2, 3])
@pytest.mark.parametrize("gated", [True, False])
def test_deltaproduct(n_h, gated):
    spec = small(example("deltaproduct"), n_h=n_h)
    a = random_args(spec, T=7, seed=n_h)
    if not gated:
        del a["g"]   # the default g = 0 is the ungated DeltaProduct
    h0 = torch.randn(spec.state_shape(2), dtype=torch.float64)
    o, S = spec.op(**a, initial_state=h0, output_final_state=True)
    lo, lS = delta_product_loop(unit(a["q"]), unit(a["k"]), a["v"], a["beta"], g=a.get("g"), h0=h0)
    assert rel(o, lo) < TOL and rel(S, lS) < TOL


@pytest.mark.parametrize("name", ["gla", "mamba2"])
def test_gla_and_mamba2(name):
    spec = small(example(name))
    a = random_args(spec, T=9)
    o, S = spec.op(**a, output_final_state=True)
    lo, lS = diag_loop(a["q"], a["k"], a["v"], a["g"])
    assert rel(o, lo) < TOL and rel(S, lS) < TOL


def test_rwkv7():
    spec = small(example("rwkv7"))
    a = random_args(spec, T=9)
    a["a"], a["b"] = -unit(a["a"]), unit(a["a"]) * torch.rand_like(a["b"])   # RWKV-7's a = -kappa, b = kappa * iclr
    o, S = spec.op(**a, output_final_state=True)
    lo, lS = rwkv7_loop(a["r"], a["w"], a["k"], a["v"], a["a"], a["b"])
    assert rel(o, lo) < TOL and rel(S, lS) < TOL


def test_block_diagonal():
    spec = small(example("block_diagonal"))
    a = random_args(spec, T=9)
    o, S = spec.op(**a, output_final_state=True)
    lo, lS = block_diagonal_loop(a["M"], a["v"])
    assert rel(o, lo) < TOL and rel(S, lS) < TOL


def test_fp_rnn_reaches_the_dense_recurrence():
    spec = small(example("fp_rnn"), tol=1e-14)
    a = random_args(spec, T=8)
    o, S = spec.op(**a, output_final_state=True)
    lo, lS = fp_rnn_dense_loop(a["lam"], unit(a["u"]), a["alpha"], a["x"], a["c"])
    assert rel(o, lo) < TOL and rel(S, lS) < TOL
