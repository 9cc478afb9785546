"""Training and evaluating a spec on a task: embedding, L blocks of (norm, the compiled spec, residual;
norm, MLP, residual), norm, head. Deterministic given the seed: batch i is drawn from
default_rng([seed, i]), so a resumed run sees the batches an uninterrupted one would."""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import recdsl

from .data import IGNORE, task as get_task
from .metrics import score


@dataclass(frozen=True)
class TrainConfig:
    spec: str
    task: str
    layers: int = 1
    d_model: int = 32
    steps: int = 1000
    lr: float = 1e-3
    batch: int = 64
    train_len: tuple[int, int] = (3, 40)
    test_len: tuple[int, int] = (40, 256)
    seed: int = 0
    backend: str = "auto"
    params: tuple[tuple[str, float], ...] = ()      # spec parameter overrides
    checkpoint_every: int = 200
    weight_decay: float = 0.0
    warmup: int = field(default=0)                   # linear warm-up steps


class TaskModel(nn.Module):
    def __init__(self, cfg: TrainConfig, vocab: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, cfg.d_model)
        params = {**dict(cfg.params), "d_model": cfg.d_model}
        self.cores = nn.ModuleList(recdsl.compile(cfg.spec, backend=cfg.backend, **params) for _ in range(cfg.layers))
        self.norms = nn.ModuleList(nn.LayerNorm(cfg.d_model) for _ in range(2 * cfg.layers + 1))
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(),
                                                nn.Linear(4 * cfg.d_model, cfg.d_model)) for _ in range(cfg.layers))
        self.head = nn.Linear(cfg.d_model, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for i, (core, mlp) in enumerate(zip(self.cores, self.mlps)):
            x = x + core(self.norms[2 * i](x))[0]
            x = x + mlp(self.norms[2 * i + 1](x))
        return self.head(self.norms[-1](x))


def _batch(task, cfg: TrainConfig, step: int, lengths: tuple[int, int], device):
    b = task.batch(cfg.batch, lengths[0], lengths[1], np.random.default_rng([cfg.seed, step]))
    return b, b.tokens.to(device), b.labels.to(device)


def _save(path: Path, state: dict) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)        # a reader never sees half a checkpoint


def train(cfg: TrainConfig, out_dir: str, resume: bool = False, device: str | None = None, log=sys.stderr,
          stop_at: int | None = None) -> dict:
    """Train; checkpoints (model, optimiser, step, config) to out_dir/checkpoint.pt. Returns the last
    training metrics. `stop_at` ends the run early at that step, checkpointed (a later resume goes on)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    task = get_task(cfg.task)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pt"
    torch.manual_seed(cfg.seed)
    model = TaskModel(cfg, len(task.vocab)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup) if cfg.warmup else 1.0)
    start = 0
    if resume and ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        if state["config"] != dataclasses.asdict(cfg):
            raise ValueError(f"{ckpt}: written by another configuration; start a new --out or drop --resume")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = state["step"]
    metrics, t0 = {}, time.perf_counter()
    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    for step in range(start, end):
        b, tokens, labels = _batch(task, cfg, step, cfg.train_len, device)
        logits = model(tokens)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        done = step + 1
        if done % max(1, cfg.steps // 50) == 0 or done == cfg.steps:
            metrics = {"step": done, "loss": loss.item(), **score(task, logits.argmax(-1).cpu(), b)}
            metrics.pop("prefix_accuracy", None)
            rate = (done - start) / (time.perf_counter() - t0)
            shown = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
            print(f"[{cfg.task} {Path(cfg.spec).stem}] {done}/{cfg.steps} {shown} ({rate:.1f} steps/s)", file=log,
                  flush=True)
        if done % cfg.checkpoint_every == 0 or done == end:
            _save(ckpt, {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                         "step": done, "config": dataclasses.asdict(cfg)})
    return metrics


def load_checkpoint(path: str, device: str | None = None) -> tuple[TaskModel, TrainConfig]:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    state = torch.load(path, map_location=device, weights_only=False)
    c = state["config"]
    cfg = TrainConfig(**{**c, "train_len": tuple(c["train_len"]), "test_len": tuple(c["test_len"]),
                         "params": tuple(tuple(p) for p in c["params"])})
    model = TaskModel(cfg, len(get_task(cfg.task).vocab)).to(device)
    model.load_state_dict(state["model"])
    return model.eval(), cfg


@torch.no_grad()
def evaluate(model: TaskModel, cfg: TrainConfig, lengths: list[int], samples: int = 256) -> list[dict]:
    """The task's metric at each length (one batch of `samples` sequences of exactly that length)."""
    task = get_task(cfg.task)
    device = next(model.parameters()).device
    rows = []
    for n in lengths:
        b = task.batch(samples, n, n, np.random.default_rng([cfg.seed, 10**9, n]))
        pred = model(b.tokens.to(device)).argmax(-1).cpu()
        rows.append({"length": n, **score(task, pred, b)})
    return rows


def plot(rows: list[dict], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    key = next(k for k in ("scaled_accuracy", "sequence_accuracy", "character_accuracy", "accuracy") if k in rows[0])
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["length"] for r in rows], [r[key] for r in rows], marker="o")
    ax.set_xlabel("sequence length")
    ax.set_ylabel(key.replace("_", " "))
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_eval(rows: list[dict], cfg: TrainConfig, out_dir: str) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "eval.json"
    path.write_text(json.dumps({"config": dataclasses.asdict(cfg), "results": rows}, indent=1))
    plot(rows, str(out / "eval.png"), f"{Path(cfg.spec).stem} on {cfg.task}")
    return path
