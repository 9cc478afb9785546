"""Where the first call's seconds go: cProfile of recdsl.load + the first op call in this process."""
import cProfile
import pstats
import sys
import time

import torch

torch.zeros(1, device="cuda")
torch.cuda.synchronize()
import recdsl  # noqa: E402

path = sys.argv[1] if len(sys.argv) > 1 else "examples/hgrn.rec"
t = time.perf_counter()
prof = cProfile.Profile()
prof.enable()
s = recdsl.load(path)
args = {a.name: torch.rand((2, 64) + a.shape if a.kind == "input" else a.shape, device="cuda") for a in s.args}
o, _ = s.op(**args, backend="triton")
torch.cuda.synchronize()
prof.disable()
print(f"first call {time.perf_counter() - t:.3f} s")
pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
