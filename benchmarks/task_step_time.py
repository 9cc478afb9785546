"""Time per training step of the issue-6 models, eager against one CUDA graph per step (recdsl tasks
train --cuda-graph), in one process. JSON lines to --out.

    python benchmarks/task_step_time.py --out benchmarks/results/<tag>_task_step_time.jsonl
"""
from __future__ import annotations

import argparse
import io
import json
import re
import statistics
import sys
import tempfile

import torch

from recdsl.tasks.train import TrainConfig, train

DELTA_32 = (("H", 2.0), ("K", 16.0), ("V", 16.0))
DELTA_128 = (("H", 4.0), ("K", 32.0), ("V", 32.0))
CASES = {   # name: the configuration of a reproduction in reproduce_tasks.sh
    "parity mamba_negeig d32": TrainConfig("examples/mamba_negeig.rec", "parity", 2, 32, batch=128,
                                           params=(("D", 32.0), ("N", 8.0))),
    "parity deltanet_negeig d32": TrainConfig("examples/deltanet_negeig.rec", "parity", 2, 32, batch=128,
                                              params=DELTA_32),
    "mod_arithmetic deltanet_negeig d128": TrainConfig("examples/deltanet_negeig.rec", "mod_arithmetic", 2, 128,
                                                       batch=256, params=DELTA_128),
    "word_S3 deltaproduct n_h=2 d32": TrainConfig("benchmarks/specs/deltaproduct_nogate.rec", "word_S3", 1, 32,
                                                  batch=256, train_len=(16, 128),
                                                  params=DELTA_32 + (("n_h", 2.0),)),
}


def step_ms(cfg: TrainConfig, steps: int, mode: str) -> float:
    """Median of the run's own logged ms/step (each over steps // 50 steps, synchronised), past the first
    fifth of the run (compilation, warm-up and capture happen there)."""
    log = io.StringIO()
    with tempfile.TemporaryDirectory() as d:
        train(TrainConfig(**{**cfg.__dict__, "steps": steps, "checkpoint_every": 10**9}), d, log=log,
              cuda_graph=mode)
    rows = [(int(m.group(1)), float(m.group(2))) for m in re.finditer(r"\] (\d+)/\d+ .*?\(([\d.]+) ms/step", log.getvalue())]
    later = [ms for step, ms in rows if step > steps // 5]
    return statistics.median(later)


def eager_step(cfg: TrainConfig, lr: float = 1e-3):
    """A function running one eager training step (forward, loss, backward, AdamW) of a fresh model on one
    fixed batch at the longest training length, on CUDA, under cfg.precision's autocast."""
    import numpy as np
    import torch.nn.functional as F
    from recdsl.tasks.data import IGNORE, task as get_task
    from recdsl.tasks.train import TaskModel, _autocast
    task = get_task(cfg.task)
    model = TaskModel(cfg, len(task.vocab)).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    n = cfg.train_len[1] - int(task.odd_only and cfg.train_len[1] % 2 == 0)
    b = task.batch(cfg.batch, n, n, np.random.default_rng(0))
    tokens, labels = b.tokens.cuda(), b.labels.cuda()

    def step():
        with _autocast(cfg, "cuda"):     # cfg.precision's, as training runs it
            loss = F.cross_entropy(model(tokens).float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def profile_step(cfg: TrainConfig, top: int = 12) -> dict:
    """The GPU time of one eager training step (eager_step) by kernel, in ms."""
    from overhead import kernel_times
    per = kernel_times(eager_step(cfg), iters=5)
    return {"total_ms": round(sum(per.values()), 3), "kernels": {k[:90]: round(v, 4) for k, v in list(per.items())[:top]}}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--profile", action="store_true", help="also the GPU time by kernel of one step at the longest length")
    args = ap.parse_args()
    gpu = torch.cuda.get_device_name()
    with open(args.out, "a") as f:
        for name, cfg in CASES.items():
            row = {"case": name, "gpu": gpu, "batch": cfg.batch, "train_len": cfg.train_len, "steps": args.steps}
            if args.steps:
                for mode in ("off", "on"):
                    row[f"ms_per_step_graph_{mode}"] = round(step_ms(cfg, args.steps, mode), 3)
                row["speedup"] = round(row["ms_per_step_graph_off"] / row["ms_per_step_graph_on"], 2)
            if args.profile:
                row["profile"] = profile_step(cfg)
            print(json.dumps(row), flush=True)
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
