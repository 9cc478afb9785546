"""Training and evaluating a spec on a task: embedding, L blocks of (norm, the compiled spec, residual;
norm, MLP, residual), norm, head. Deterministic given the seed: batch i is drawn from
default_rng([seed, i]), so a resumed run sees the batches an uninterrupted one would.

Runs on CUDA when there is one. A run's budget (steps done, training seconds, the device) is kept in its
checkpoint and written beside its results, so every number says what it cost; `max_seconds` stops
training early but cleanly (checkpointed, then evaluated like a finished run)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
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
from .graphed import GraphedStep, clip_gradients, graphable, set_capturable
from .metrics import headline, mean_headline, score


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
    precision: str = "fp32"                          # fp32 | bf16 (autocast; the recurrences stay in fp32)
    curriculum: int = 0                              # steps over which the longest train length ramps up
    lr_decay: str = "none"                           # none | cosine (after the warm-up, down to 1e-3 lr)
    block: str = "default"                           # default | fla (TaskModel says what each is)
    clip: float = 1.0                                # gradient-norm clipping; 0 turns it off
    val_every: int = 0                               # steps between validations (best.pt keeps the best); 0: none


PRECISIONS = ("fp32", "bf16")
LR_DECAYS = ("none", "cosine")
BLOCKS = ("default", "fla")


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """The learning rate of `step` over cfg.lr: a linear warm-up, then constant or a cosine decay that
    reaches 1e-3 at the last step (the xLSTM / Grazzi et al. recipe)."""
    if cfg.lr_decay not in LR_DECAYS:
        raise ValueError(f"lr_decay must be one of {LR_DECAYS}, got {cfg.lr_decay!r}")
    if cfg.warmup and step < cfg.warmup:
        return (step + 1) / cfg.warmup
    if cfg.lr_decay == "none":
        return 1.0
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return 1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * progress))


class TaskModel(nn.Module):
    """Embedding, `layers` pre-norm residual blocks (the compiled spec, then an MLP), a final norm and a
    linear head. cfg.block picks the blocks:
    - "default": LayerNorm, a GELU MLP of width 4 d_model, PyTorch's initialisation;
    - "fla": flash-linear-attention's language-model block as Grazzi et al. trained it (their copy of fla):
      RMSNorm (eps 1e-6), a SwiGLU MLP (`SwiGLU`) and a head without biases. Initialised as that copy
      does: the spec layer's linear maps Xavier-uniform with gain 2^-2.5 (biases at 0) and its short
      convolutions as PyTorch draws them; embedding, MLP and head std 0.02, the MLP's down map divided by
      sqrt(2 * layers), as GPT-2 does for residual branches."""

    def __init__(self, cfg: TrainConfig, vocab: int):
        super().__init__()
        if cfg.block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {cfg.block!r}")
        fla, d = cfg.block == "fla", cfg.d_model
        self.embed = nn.Embedding(vocab, d)
        params = {**dict(cfg.params), "d_model": d}
        self.cores = nn.ModuleList(recdsl.compile(cfg.spec, backend=cfg.backend, **params) for _ in range(cfg.layers))
        self.norms = nn.ModuleList((nn.RMSNorm(d, eps=1e-6) if fla else nn.LayerNorm(d))
                                   for _ in range(2 * cfg.layers + 1))
        self.mlps = nn.ModuleList((SwiGLU(d) if fla else nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)))
                                  for _ in range(cfg.layers))
        self.head = nn.Linear(d, vocab, bias=not fla)
        if fla:
            self._init_as_fla(cfg.layers)

    def _init_as_fla(self, layers: int) -> None:
        # fla's layers of that version initialise their own linears (and mark them done, so the model's
        # std-0.02 pass and its residual rescaling skip them); the convolutions keep PyTorch's draw
        with torch.no_grad():
            for m in self.cores.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight, gain=2 ** -2.5)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
            for part in (self.embed, self.mlps, self.head):
                for m in part.modules():
                    if isinstance(m, (nn.Linear, nn.Embedding)):
                        nn.init.normal_(m.weight, std=0.02)
                        if getattr(m, "bias", None) is not None:
                            nn.init.zeros_(m.bias)
            for mlp in self.mlps:
                mlp.down.weight /= math.sqrt(2 * layers)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for i, (core, mlp) in enumerate(zip(self.cores, self.mlps)):
            x = x + core(self.norms[2 * i](x))[0]
            x = x + mlp(self.norms[2 * i + 1](x))
        return self.head(self.norms[-1](x))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)) with a hidden width of 2/3 * 4 * d rounded up to a multiple of 256
    (flash-linear-attention's MLP: as many weights as a GELU MLP of width 4 d)."""

    def __init__(self, d: int):
        super().__init__()
        width = 256 * -(-int(d * 4 * 2 / 3) // 256)
        self.gate_up = nn.Linear(d, 2 * width, bias=False)
        self.down = nn.Linear(width, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


def train_lengths(cfg: TrainConfig, step: int) -> tuple[int, int]:
    """The length range of batch `step`: with a curriculum the upper bound grows linearly from the lower
    to cfg.train_len's upper over the first `curriculum` steps (short sequences first: easier to learn
    from, and cheaper where the recurrence runs token by token), then stays there."""
    lo, hi = cfg.train_len
    if cfg.curriculum <= 0 or step >= cfg.curriculum:
        return lo, hi
    return lo, lo + (hi - lo) * (step + 1) // cfg.curriculum


def _batch(task, cfg: TrainConfig, step: int):
    """Batch `step` of the run, on the host: the same whether a run was resumed or not."""
    return task.batch(cfg.batch, *train_lengths(cfg, step), np.random.default_rng([cfg.seed, step]))


def device_name(device) -> str:
    """What ran a job, for the records: the GPU's name, else the CPU's."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _autocast(cfg: TrainConfig, device, cache: bool = True):
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {cfg.precision!r}")
    # bf16 only where it pays: these models are small and bound by kernel launches, so fp32 is the default
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16",
                          cache_enabled=cache)


def padded_width(task, cfg: TrainConfig) -> int:
    """The widest batch the training lengths can draw (its examples at the longest length)."""
    lo, hi = cfg.train_len
    rng = np.random.default_rng(0)
    return max(len(task.sample(rng, n)[0]) for n in range(max(lo, task.min_length, hi - 1), hi + 1))


CUDA_GRAPH = ("auto", "on", "off")


def _save(path: Path, state: dict) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)        # a reader never sees half a checkpoint


BEST = "best.pt"


def _validate(model: TaskModel, cfg: TrainConfig, path: Path, best, budget: dict, log):
    """Score the model on the validation split of the test lengths; save it to `path` (as a checkpoint
    without optimiser) when it beats `best`, (score, step) of the one kept so far. Returns the best."""
    step = budget["steps_done"]
    model.eval()
    value = mean_headline(evaluate(model, cfg, validation_lengths(cfg), VALIDATION_SAMPLES, split="validation"))
    model.train()
    if best is None or value > best[0]:
        best = (value, step)
        _save(path, {"model": model.state_dict(), "step": step, "config": dataclasses.asdict(cfg),
                     "budget": budget, "validation": value})
    print(f"[{cfg.task} {Path(cfg.spec).stem}] {step}/{cfg.steps} validation {value:.4g} "
          f"(best {best[0]:.4g} at step {best[1]})", file=log, flush=True)
    return best


def train(cfg: TrainConfig, out_dir: str, resume: bool = False, device: str | None = None, log=sys.stderr,
          stop_at: int | None = None, max_seconds: float | None = None, cuda_graph: str = "auto") -> dict:
    """Train; checkpoints (model, optimiser, step, config, budget) to out_dir/checkpoint.pt, and with
    cfg.val_every the best model on the validation split so far to out_dir/best.pt. Returns the
    last training metrics and the budget. `stop_at` ends the run early at that step; `max_seconds` once
    this call has trained that long (checked after every step). Either way the run is checkpointed and
    a later resume goes on. `cuda_graph`: "auto" replays each step as a CUDA graph (graphed.py) where the
    model allows it, "on" insists, "off" runs eagerly; it changes speed, not what is computed."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    task = get_task(cfg.task)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pt"
    torch.manual_seed(cfg.seed)          # seeds the CPU and every CUDA device: the same initial weights
    model = TaskModel(cfg, len(task.vocab)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s))
    start, spent, best = 0, 0.0, None      # best: (validation score, step) of out_dir/best.pt
    if resume and ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        if saved_config(state["config"]) != cfg:
            raise ValueError(f"{ckpt}: written by another configuration; start a new --out or drop --resume")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        set_capturable(opt, False, device)     # as eager; a checkpoint may come from a graphed run
        start = state["step"]
        spent = state.get("budget", {}).get("train_seconds", 0.0)
        best = state.get("best")
    elif (out / BEST).exists():
        (out / BEST).unlink()                  # an earlier run's pick, not this run's
    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    where = device_name(device)
    if cuda_graph not in CUDA_GRAPH:
        raise ValueError(f"cuda_graph must be one of {CUDA_GRAPH}, got {cuda_graph!r}")
    can_graph, why_not = graphable(model, device)
    if cuda_graph == "on" and not can_graph:
        raise ValueError(f"cuda_graph='on': {why_not}")
    graphed = None
    if cuda_graph != "off" and can_graph:
        set_capturable(opt, True, device)
        graphed = GraphedStep(model, opt, cfg.batch, padded_width(task, cfg), device,
                              lambda: _autocast(cfg, device, cache=False), strict=cuda_graph == "on",
                              clip=cfg.clip)
    if start < end:
        limit = f", at most {max_seconds / 60:.3g} min" if max_seconds else ""
        mode = f", CUDA graph (batches padded to {graphed.width})" if graphed else ""
        print(f"[{cfg.task} {Path(cfg.spec).stem}] steps {start}->{end} on {where}{limit}{mode}", file=log, flush=True)
    metrics, t0, stopped, done = {}, time.perf_counter(), "steps", start
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    t_log, step_log = t0, start

    def budget() -> dict:
        return {"steps_done": done, "steps": cfg.steps, "train_seconds": round(spent + time.perf_counter() - t0, 2),
                "device": where, "stopped_by": stopped}

    for step in range(start, end):
        b = _batch(task, cfg, step)
        if graphed:
            loss, logits = graphed(b.tokens, b.labels)
            logits = logits[:, :b.tokens.shape[1]]
        else:
            with _autocast(cfg, device):
                logits = model(b.tokens.to(device))
                loss = F.cross_entropy(logits.float().flatten(0, 1), b.labels.to(device).flatten(),
                                       ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(model, cfg.clip)
            opt.step()
        sched.step()
        done = step + 1
        out_of_time = max_seconds is not None and time.perf_counter() - t0 >= max_seconds
        if out_of_time and done < end:
            stopped = "time"
        if done % max(1, cfg.steps // 50) == 0 or done == end or stopped == "time":
            metrics = {"step": done, "loss": loss.item(), **score(task, logits.argmax(-1).cpu(), b)}
            metrics.pop("prefix_accuracy", None)
            sync()   # the time per step includes the GPU's work, not only the launches
            now = time.perf_counter()
            ms = 1000 * (now - t_log) / max(1, done - step_log)
            t_log, step_log = now, done
            shown = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
            print(f"[{cfg.task} {Path(cfg.spec).stem}] {done}/{cfg.steps} {shown} ({ms:.1f} ms/step, "
                  f"{now - t0:.0f} s)", file=log, flush=True)
        if cfg.val_every and done % cfg.val_every == 0:
            best = _validate(model, cfg, out / BEST, best, budget(), log)
        if done % cfg.checkpoint_every == 0 or done == end or stopped == "time":
            _save(ckpt, {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                         "step": done, "config": dataclasses.asdict(cfg), "budget": budget(), "best": best})
        if stopped == "time":
            print(f"[{cfg.task} {Path(cfg.spec).stem}] stopped by the time limit after {done} of {cfg.steps} "
                  f"steps", file=log, flush=True)
            break
    if start >= end and ckpt.exists():    # nothing left to train: report the finished run's budget
        return {"budget": torch.load(ckpt, map_location="cpu", weights_only=False).get("budget", budget())}
    return {**metrics, "budget": budget()}


def saved_config(c: dict) -> TrainConfig:
    """The TrainConfig a checkpoint stored (as a dict); fields added since it was written take their
    defaults, which are what such a run did."""
    return TrainConfig(**{**c, "train_len": tuple(c["train_len"]), "test_len": tuple(c["test_len"]),
                          "params": tuple(tuple(p) for p in c["params"])})


def load_checkpoint(path: str, device: str | None = None) -> tuple[TaskModel, TrainConfig]:
    model, cfg, _ = load_run(path, device)
    return model, cfg


def load_run(path: str, device: str | None = None, params: tuple = ()) -> tuple[TaskModel, TrainConfig, dict]:
    """The model (in eval mode), its configuration and its budget (empty for older checkpoints).
    `params` override spec parameters that do not change the weights' shapes, for evaluation only: a
    fixed point's max_iter, say (Movahedi et al. iterate up to 1000 times at test time); the returned
    configuration carries them."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    state = torch.load(path, map_location=device, weights_only=False)
    cfg = saved_config(state["config"])
    if params:
        cfg = dataclasses.replace(cfg, params=tuple({**dict(cfg.params), **dict(params)}.items()))
    model = TaskModel(cfg, len(get_task(cfg.task).vocab)).to(device)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise ValueError(f"{path}: the evaluation parameters {dict(params)} change the model's weights; only "
                         f"settings such as max_iter or tol may differ from training ({e})") from None
    return model.eval(), cfg, state.get("budget", {})


SPLITS = {"test": 10**9, "validation": 2 * 10**9}     # each split's seed stream, apart from training's
VALIDATION_POINTS, VALIDATION_SAMPLES = 8, 256


def validation_lengths(cfg: TrainConfig) -> list[int]:
    """VALIDATION_POINTS lengths spread evenly over the test lengths."""
    lo, hi = cfg.test_len
    return sorted({round(lo + (hi - lo) * i / (VALIDATION_POINTS - 1)) for i in range(VALIDATION_POINTS)})


@torch.no_grad()
def evaluate(model: TaskModel, cfg: TrainConfig, lengths: list[int], samples: int = 256, log=None,
             split: str = "test") -> list[dict]:
    """The task's metric at each length (one batch of `samples` sequences of exactly that length). Tasks
    of odd lengths only (number op number ...) move an even length to the odd one above it, or below it
    at the top of the range; each row records the length it used. `split` "validation" draws other
    sequences than "test" does, so that a model picked on the one is scored on the other."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    task = get_task(cfg.task)
    device = next(model.parameters()).device
    top = max(lengths)
    rows = []
    for n in lengths:
        if task.odd_only and n % 2 == 0:
            n = n + 1 if n + 1 <= top else n - 1
        b = task.batch(samples, n, n, np.random.default_rng([cfg.seed, SPLITS[split], n]))
        with _autocast(cfg, device):
            pred = model(b.tokens.to(device)).argmax(-1).cpu()
        rows.append({"length": n, **score(task, pred, b)})
        if log is not None:
            shown = " ".join(f"{k} {v:.4g}" for k, v in rows[-1].items() if isinstance(v, float))
            print(f"[{cfg.task} {Path(cfg.spec).stem}] eval length {n}: {shown}", file=log, flush=True)
    return rows


def plot(rows: list[dict], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    key = headline(rows[0])
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["length"] for r in rows], [r[key] for r in rows], marker="o")
    ax.set_xlabel("sequence length")
    ax.set_ylabel(key.replace("_", " "))
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_eval(rows: list[dict], cfg: TrainConfig, out_dir: str, budget: dict | None = None,
               name: str = "eval") -> Path:
    """out_dir/<name>.json (config, rows, budget) and out_dir/<name>.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    record = {"config": dataclasses.asdict(cfg), "results": rows}
    if budget:
        record["budget"] = budget
    path.write_text(json.dumps(record, indent=1))
    plot(rows, str(out / f"{name}.png"), f"{Path(cfg.spec).stem} on {cfg.task}")
    return path
