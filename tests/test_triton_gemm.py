"""The fp32 tensor-core products of a fixed-point training call's tail (backends/triton/gemm.py) under the
Triton interpreter, against fp64: odd shapes, strided operands, the evaluator's weight products with their
gradients; an sm_90 build. The interpreter multiplies TF32 inputs in
full fp32, so the passes' accuracy is checked on a GPU (test_gpu_fixed_point.py)."""
import pytest
import torch

from conftest import compile_sm90

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(),
                                reason="interpreter tier; GPU runs in test_gpu_fixed_point.py")


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("M,K,N,b_exact,a_transposed,b_transposed", [
    (70, 48, 65, False, False, False),    # no dimension a multiple of a tile
    (33, 200, 70, True, True, False),     # a read through its transpose's strides
    (130, 32, 96, False, False, True),    # b [K, N] row-major (the input gradient's weight), laid out K-major
    (16, 16, 64, True, False, True),
])
def test_mm_matches_fp64(M, K, N, b_exact, a_transposed, b_transposed):
    from recdsl.backends.triton.gemm import mm
    g = torch.Generator().manual_seed(M + K + N)
    a = torch.randn(K, M, generator=g).t() if a_transposed else torch.randn(M, K, generator=g)
    b = torch.randn(K, N, generator=g) if b_transposed else torch.randn(N, K, generator=g).t()
    if b_exact:
        b = b.bfloat16().float()
    c = mm(a, b, b_exact=b_exact)
    assert c.shape == (M, N) and c.dtype == torch.float32
    assert rel(c, a.double() @ b.double()) < 1e-6


def test_mm_of_empty_operands():
    """No tokens (an empty batch), or a contraction of length 0: empty or zero products, nothing launched."""
    from recdsl.backends.triton.gemm import mm
    assert mm(torch.randn(0, 16), torch.randn(16, 64)).shape == (0, 64)
    assert torch.equal(mm(torch.randn(5, 0), torch.randn(0, 64)), torch.zeros(5, 64))


def test_mm_names_bad_operands():
    from recdsl.backends.triton.gemm import mm
    with pytest.raises(ValueError, match=r"gemm.mm: expected fp32 a \[M, K\] and b \[K, N\].*\(4, 3\).*\(4, 5\)"):
        mm(torch.randn(4, 3), torch.randn(4, 5))
    with pytest.raises(ValueError, match="torch.float64"):
        mm(torch.randn(4, 3, dtype=torch.float64), torch.randn(3, 5))


@pytest.mark.parametrize("w_exact, half", [(False, None), (True, None), (True, torch.bfloat16)])
def test_weight_product_matches_evaluate_matmul_with_gradients(w_exact, half):
    """Wu [r, D, K] broadcast over [B, T, 1] (as the fixed-point evaluator holds a weight) times vectors
    [B, T, 1, K]: the value and both gradients of evaluate.matmul's einsum, in fp64; with half inputs the
    weight gradient is the product of its operands in their dtype."""
    from recdsl.backends.triton.gemm import weight_product
    from recdsl.evaluate import matmul
    B, T, r, D, K = 2, 9, 2, 40, 24
    g = torch.Generator().manual_seed(1)
    w = torch.randn(r, D, K, generator=g)
    if w_exact:
        w = w.bfloat16().float()
    w.requires_grad_(True)
    x = torch.randn(B, T, 1, K, generator=g).requires_grad_(True)
    y = weight_product(w.expand(B, T, 1, r, D, K), x, 3, 1, w_exact, half)
    assert y.shape == (B, T, 1, r, D)
    w64, x64 = w.detach().double().requires_grad_(True), x.detach().double().requires_grad_(True)
    ref = matmul(w64.expand(B, T, 1, r, D, K), x64, 3, 1)
    assert rel(y, ref) < 1e-6
    dy = torch.randn(y.shape, generator=g)
    gw, gx = torch.autograd.grad(y, (w, x), dy)
    rw, rx = torch.autograd.grad(ref, (w64, x64), dy.double())
    assert rel(gx, rx) < 1e-6
    if half is None:
        assert rel(gw, rw) < 1e-6
    else:
        dy2, x2 = dy.reshape(-1, r * D).to(half), x.detach().reshape(-1, K).to(half)
        assert torch.equal(gw, (dy2.t() @ x2).float().reshape(r, D, K)) and rel(gw, rw) < 1e-2


def test_weight_product_leaves_other_products_to_evaluate():
    """Narrow weights (Wa @ h, 2 columns), vector-vector products, two per-token operands and non-fp32 data
    return None: evaluate.matmul takes them."""
    from recdsl.backends.triton.gemm import weight_product
    x = torch.randn(2, 5, 1, 16)
    assert weight_product(torch.randn(2, 16).expand(2, 5, 1, 2, 16), x, 2, 1, False) is None
    assert weight_product(torch.randn(2, 5, 1, 16), x, 1, 1, False) is None
    assert weight_product(torch.randn(2, 5, 1, 64, 16), x, 2, 1, False) is None
    assert weight_product(torch.randn(64, 16).double().expand(2, 5, 1, 64, 16), x.double(), 2, 1, False) is None
    assert weight_product(torch.randn(64, 16).expand(2, 5, 1, 64, 16), x, 2, 1, False).shape == (2, 5, 1, 64)


def test_gemm_builds_for_sm90():
    """gemm_fp32 at each pass count's tiles as real sm_90 builds, spill-free."""
    res = compile_sm90("recdsl.backends.triton.gemm", "aot_jobs", with_shared=True)
    assert len(res) == 3 and all(row[1] > 0 and row[3] <= 227 * 1024 and not row[4] for row in res)
