"""Wall time of one eager training step on the A5 task at the paper's width (one layer, d_model 512, batch
512, every sequence of length 16, at most 24 fixed-point iterations), and its GPU time by kernel
(task_step_time.profile_step). RECDSL_FIXED_POINT picks the fixed-point path, RECDSL_FP_MATRIX_DECAY and
_WRITE how a matrix state's scan takes its decay and write (fixed_point_matrix.py). One JSON line, appended to OUT.

    RECDSL_FIXED_POINT=fused python benchmarks/a5_step_time.py OUT [--spec benchmarks/specs/fp_rnn_hdep.rec]
    python benchmarks/a5_step_time.py OUT --spec benchmarks/specs/fp_mamba_hdep.rec -p D=1024 -p N=16 --precision bf16
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from task_step_time import eager_step, profile_step  # noqa: E402

from recdsl.tasks.train import TrainConfig  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--spec", default="benchmarks/specs/fp_rnn_hdep.rec")
    ap.add_argument("--steps", type=int, default=10, help="timed steps, after 3 of warm-up")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                    help="a spec parameter (D=1024 -p N=16 for benchmarks/specs/fp_mamba_hdep.rec)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = ap.parse_args()
    warnings.simplefilter("ignore")      # 24 iterations often stop short of the tolerance, as in training
    params = {"D": 512.0, "max_iter": 24.0, "tol": 0.01}
    params.update((k, float(v)) for k, v in (p.split("=", 1) for p in args.param))
    cfg = TrainConfig(args.spec, "word_A5", 1, 512, batch=512, train_len=(1, 16), params=tuple(params.items()),
                      precision=args.precision)
    step = eager_step(cfg, lr=1e-4)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    row = {"mode": os.environ.get("RECDSL_FIXED_POINT", "auto"),
           "matrix_decay": os.environ.get("RECDSL_FP_MATRIX_DECAY", "factors"),
           "matrix_write": os.environ.get("RECDSL_FP_MATRIX_WRITE", "factors"),
           "scan_blocks": os.environ.get("RECDSL_SCAN_BLOCKS", "planned"), "spec": args.spec, "params": params,
           "precision": args.precision, "gpu": torch.cuda.get_device_name(),
           "wall_ms_per_step": round(1000 * (time.perf_counter() - t0) / args.steps, 2),
           "profile": profile_step(cfg, top=15)}
    print(json.dumps(row), flush=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
