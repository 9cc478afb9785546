"""Short causal convolutions in a spec's layer (`shortconv`): the convolution against a plain loop, packed
sequences against separate calls, and a layer with convolutions carrying its state across calls and
token by token (fp64, reference backend)."""
import os

import pytest
import torch
from hypothesis import given, settings, strategies as st

import recdsl
from recdsl.short_conv import LayerState, short_conv

from conftest import ROOT, step_through

FAST = settings(max_examples=12, deadline=None, derandomize=True)
SPEC = os.path.join(ROOT, "benchmarks", "specs", "deltanet_negeig_conv.rec")
LAYER = dict(H=2, K=4, V=3, d_model=8)


def conv_loop(x, weight, tail):
    """y_t = sum_i w_i x_(t - k + 1 + i), one token at a time, over [tail; x]."""
    k = weight.shape[-1]
    hist = torch.cat([tail, x], dim=1)
    y = torch.stack([sum(weight[:, 0, i] * hist[:, t + i] for i in range(k)) for t in range(x.shape[1])], dim=1)
    return y, hist[:, hist.shape[1] - (k - 1):]


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


@FAST
@given(B=st.integers(1, 3), T=st.integers(1, 9), C=st.integers(1, 5), k=st.integers(2, 5), seed=st.integers(0, 99))
def test_short_conv_equals_loop(B, T, C, k, seed):
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(B, T, C, generator=g, dtype=torch.float64), torch.randn(C, 1, k, generator=g, dtype=torch.float64)
    tail = torch.randn(B, k - 1, C, generator=g, dtype=torch.float64)
    for t in (tail, None):
        y, new_tail = short_conv(x, w, t)
        want_y, want_tail = conv_loop(x, w, torch.zeros_like(tail) if t is None else t)
        assert rel(y, want_y) < 1e-12 and torch.equal(new_tail, want_tail)


@FAST
@given(lens=st.lists(st.integers(1, 7), min_size=1, max_size=4), k=st.integers(2, 5), seed=st.integers(0, 99))
def test_packed_sequences_equal_separate_calls(lens, k, seed):
    # sequences shorter than the window take the rest of it from their own tail, never from a neighbour
    g = torch.Generator().manual_seed(seed)
    C, N = 3, len(lens)
    cu = torch.tensor([0] + lens).cumsum(0)
    x = torch.randn(1, sum(lens), C, generator=g, dtype=torch.float64)
    w = torch.randn(C, 1, k, generator=g, dtype=torch.float64)
    tails = torch.randn(N, k - 1, C, generator=g, dtype=torch.float64)
    y, new_tails = short_conv(x, w, tails, cu)
    for n in range(N):
        s, e = cu[n].item(), cu[n + 1].item()
        want_y, want_tail = conv_loop(x[:, s:e], w, tails[n:n + 1])
        assert rel(y[:, s:e], want_y) < 1e-12 and torch.equal(new_tails[n], want_tail[0])


def test_short_conv_gradcheck():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 6, 2, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 1, 3, generator=g, dtype=torch.float64, requires_grad=True)
    tail = torch.randn(2, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    cu = torch.tensor([0, 1, 6])
    assert torch.autograd.gradcheck(lambda a, b, c: short_conv(a, b, c, cu), (x, w, tail))
    assert torch.autograd.gradcheck(lambda a, b, c: short_conv(a, b, c[:1]), (x, w, tail))


def layer():
    torch.manual_seed(0)
    return recdsl.compile(SPEC, backend="reference", dtype=torch.float64, **LAYER)


def test_layer_state_carries_the_convolutions():
    m = layer()
    # q and k: H * K = 8 channels, v: H * V = 6, each over 4 tokens
    assert sorted(tuple(c.weight.shape) for c in m.convs.values()) == [(6, 1, 4), (8, 1, 4), (8, 1, 4)]
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    y, S = m(x, output_final_state=True)
    assert isinstance(S, LayerState) and sorted(tuple(t.shape) for t in S.convs) == [(2, 3, 6), (2, 3, 8), (2, 3, 8)]
    y1, S1 = m(x[:, :2], output_final_state=True)      # a cut shorter than the convolutions' window
    y2, S2 = m(x[:, 2:], initial_state=S1, output_final_state=True)
    assert rel(torch.cat([y1, y2], 1), y) < 1e-12 and rel(S2.core, S.core) < 1e-12
    assert all(torch.equal(a, b) for a, b in zip(S2.convs, S.convs))
    assert rel(step_through(m, x), y) < 1e-12


def test_layer_packed_sequences_equal_separate_calls():
    m = layer()
    lens = [3, 1, 5]
    x = torch.randn(1, sum(lens), 8, dtype=torch.float64)
    cu = torch.tensor([0, 3, 4, 9])
    y, S = m(x, output_final_state=True, cu_seqlens=cu)
    for n in range(3):
        s, e = cu[n].item(), cu[n + 1].item()
        yn, Sn = m(x[:, s:e], output_final_state=True)
        assert rel(y[:, s:e], yn) < 1e-12 and rel(S.core[n:n + 1], Sn.core) < 1e-12
        assert all(rel(a[n:n + 1], b) < 1e-12 for a, b in zip(S.convs, Sn.convs))


def test_layer_without_convolution_state_is_refused():
    m = layer()
    x = torch.randn(1, 4, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="LayerState"):
        m(x, initial_state=m.init_state(1).core)
    with pytest.raises(ValueError, match=r"initial_state: a convolution's last inputs must have shape \[N=1"):
        m(x, initial_state=m.init_state(2)._replace(core=m.init_state(1).core))
    assert isinstance(m.init_state(1), recdsl.LayerState)


@pytest.mark.parametrize("expr, words", [
    ("shortconv(linear(hidden), size = 1)", "integer k in [2, 64], got 1"),
    ("shortconv(linear(hidden), size = 2.5)", "integer k in [2, 64], got 2.5"),
    ("shortconv(linear(hidden), width = 4)", "no argument 'width'"),
])
def test_shortconv_errors_name_the_place(expr, words):
    text = open(SPEC).read().replace("shortconv(linear(hidden), size = 4)", expr, 1)
    with pytest.raises(recdsl.RecSemanticError, match=words.replace("[", r"\[").replace("]", r"\]")) as e:
        recdsl.load(text)
    assert e.value.line == text.splitlines().index(next(ln for ln in text.splitlines() if expr in ln)) + 1


def test_shortconv_belongs_in_the_layer():
    text = open(SPEC).read().replace("output o = q @ S * scale", "output o = shortconv(q) @ S * scale")
    with pytest.raises(recdsl.RecSemanticError, match="unknown function 'shortconv'"):
        recdsl.load(text)


def test_layer_on_the_triton_backend_matches_the_reference():
    # the Triton kernels (the interpreter without a GPU) behind a layer with convolutions, output and a
    # convolution's weight gradient, against the reference backend with the same weights
    torch.manual_seed(1)
    m = recdsl.compile(SPEC, backend="triton", H=2, K=8, V=8, d_model=16)
    r = recdsl.compile(SPEC, backend="reference", H=2, K=8, V=8, d_model=16)
    r.load_state_dict(m.state_dict())
    x = torch.randn(2, 20, 16)
    y, S = m(x, output_final_state=True)
    yr, Sr = r(x, output_final_state=True)
    assert rel(y, yr) < 1e-5 and rel(S.core, Sr.core) < 1e-5
    y.square().sum().backward()
    yr.square().sum().backward()
    assert rel(m.convs["k_2"].weight.grad, r.convs["k_2"].weight.grad) < 1e-4
