"""Host time per launch (issue 3, hgrn): Triton's fn[grid] against fast_launch.Launcher, for a kernel with
the scan's argument count; and the whole hgrn forward call at a tiny shape (host-bound). Run from the
repository root on a GPU: python benchmarks/launch_micro.py"""
import json, sys, time
import torch, triton, triton.language as tl
sys.path.insert(0, ".")
from backends.triton.fast_launch import Launcher
import recdsl
from recdsl.bench import elementwise_args

@triton.jit
def k(a, b, c, d, e, f, g, h, i, j, n, m, p, q, BT: tl.constexpr, BD: tl.constexpr, F1: tl.constexpr, F2: tl.constexpr):
    pid = tl.program_id(0)
    x = tl.load(a + pid)
    tl.store(b + pid, x + n + m + p + q)

t = [torch.zeros(1024, device="cuda") for _ in range(10)]
L = Launcher(k)
def via_triton():
    k[(1,)](*t, 3, 5, 7, 9, BT=32, BD=32, F1=True, F2=False, num_warps=1)
def via_launcher():
    L((1,), *t, 3, 5, 7, 9, BT=32, BD=32, F1=True, F2=False, num_warps=1)
def host_us(fn, n=3000):
    for _ in range(50): fn()
    torch.cuda.synchronize(); t0 = time.perf_counter()
    for _ in range(n): fn()
    t1 = time.perf_counter(); torch.cuda.synchronize()
    return 1e6 * (t1 - t0) / n
res = {}
for r in range(3):
    for name, fn in (("triton", via_triton), ("launcher", via_launcher)):
        res.setdefault(name, []).append(round(host_us(fn), 2))
print("engaged:", len(L.kernels))
spec = recdsl.load("examples/hgrn.rec", D=64)
args = elementwise_args(spec, 1, 64, "cuda", torch.bfloat16)
def fwd():
    with torch.no_grad():
        spec.op(**args, backend="triton")
res["hgrn_fwd_call"] = [round(host_us(fwd, 1000), 2) for _ in range(3)]
import cProfile, pstats, io
pr = cProfile.Profile(); pr.enable()
for _ in range(500): fwd()
pr.disable(); s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(25)
print(json.dumps({"gpu": torch.cuda.get_device_name(), "triton": triton.__version__, "host_us_per_call": res}))
print(s.getvalue()[:6000])
