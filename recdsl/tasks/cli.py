"""`recdsl tasks ...`: list the tasks, train a spec on one, evaluate a checkpoint against length, run a
suite of specs x tasks."""
from __future__ import annotations

import argparse
import json

from .data import TASK_NAMES, task
from .train import BLOCKS, CUDA_GRAPH, LR_DECAYS, PRECISIONS


def _span(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    try:
        span = (int(lo), int(hi or lo))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LENGTH or MIN-MAX, got {text!r}") from None
    if span[0] < 1 or span[1] < span[0]:
        raise argparse.ArgumentTypeError(f"expected 1 <= MIN <= MAX, got {text!r}")
    return span


def _params(items) -> tuple:
    out = []
    for item in items or ():
        name, _, value = item.partition("=")
        if not value:
            raise SystemExit(f"--param expects NAME=VALUE, got {item!r}")
        out.append((name, float(value)))
    return tuple(out)


def _eval_lengths(span: tuple[int, int], points: int) -> list[int]:
    lo, hi = span
    step = max(1, (hi - lo) // max(1, points - 1))
    return sorted(set(list(range(lo, hi + 1, step)) + [hi]))


def _train_options(p) -> None:
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--train-len", type=_span, default=(3, 40))
    p.add_argument("--test-len", type=_span, default=(40, 256))
    p.add_argument("--warmup", type=int, default=0, help="linear learning-rate warm-up steps")
    p.add_argument("--curriculum", type=int, default=0, metavar="STEPS",
                   help="grow the longest train length from its lower bound to its upper over STEPS steps")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--val-every", type=_count, default=0, metavar="STEPS",
                   help="score a validation set of the test lengths every STEPS steps and keep the best model "
                        "(best.pt); a suite then also reports that model, as '<spec> picked'")
    p.add_argument("--clip", type=_non_negative, default=1.0,
                   help="clip the gradients' norm to this (0: no clipping)")
    p.add_argument("--lr-decay", choices=LR_DECAYS, default="none",
                   help="after the warm-up: constant, or a cosine decay to 1e-3 of --lr at the last step")
    p.add_argument("--cuda-graph", choices=CUDA_GRAPH, default="auto",
                   help="replay each training step as one CUDA graph (auto: where the spec allows it)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16 autocasts the layers around the recurrence (which computes in fp32)")
    p.add_argument("--block", choices=BLOCKS, default="default",
                   help="the residual blocks: default (LayerNorm, GELU MLP) or fla (flash-linear-attention's: "
                        "RMSNorm, SwiGLU MLP, initialised as Grazzi et al.'s copy of fla)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto")
    p.add_argument("-p", "--param", action="append", help="override a spec parameter: NAME=VALUE")
    p.add_argument("--max-minutes", type=_minutes, default=None,
                   help="stop training after this long (per run), checkpointed; a suite still evaluates it")
    p.add_argument("--out", required=True, help="output folder (checkpoints, eval.json, plots)")


def _number(text: str, ok, expected: str) -> float:
    """float(text) when ok(value), else an argparse error saying what was expected (NaN is never ok)."""
    try:
        x = float(text)
    except ValueError:
        x = float("nan")
    if not ok(x):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return x


def _non_negative(text: str) -> float:
    return _number(text, lambda x: x >= 0, "a number >= 0")


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def _minutes(text: str) -> float:
    return _number(text, lambda x: x > 0, "a positive number of minutes")


def _config(args, spec: str, task_name: str):
    from .train import TrainConfig
    return TrainConfig(spec, task_name, args.layers, args.d_model, args.steps, args.lr, args.batch,
                       args.train_len, args.test_len, args.seed, args.backend, _params(args.param),
                       weight_decay=args.weight_decay, warmup=args.warmup, precision=args.precision,
                       curriculum=args.curriculum, lr_decay=args.lr_decay, block=args.block,
                       clip=args.clip, val_every=args.val_every)


def main(argv) -> int:
    ap = argparse.ArgumentParser(prog="recdsl tasks", description="State-tracking tasks of the seed papers.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the tasks, their vocabularies and metrics")
    p = sub.add_parser("train", help="train a spec on a task (checkpoints to --out, --resume continues)")
    p.add_argument("--spec", required=True)
    p.add_argument("--task", required=True, choices=TASK_NAMES)
    _train_options(p)
    p.add_argument("--resume", action="store_true")
    p = ev = sub.add_parser("eval", help="accuracy against length for a checkpoint: eval.json and eval.png")
    p.add_argument("checkpoint")
    p.add_argument("--test-len", type=_span, default=None, help="default: the training run's")
    p.add_argument("--points", type=int, default=8)
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--out", default=None, help="default: the checkpoint's folder")
    p = sub.add_parser("suite", help="every spec on every task: suite.md, suite.json, one plot per task")
    p.add_argument("--specs", nargs="+", required=True,
                   help="PATH or PATH:NAME=VALUE,... (spec parameters, or layers/d_model/lr/steps/batch/warmup/"
                        "weight_decay/clip/val_every for this spec only), e.g. examples/deltaproduct.rec:n_h=1")
    p.add_argument("--tasks", nargs="+", required=True, choices=TASK_NAMES)
    _train_options(p)
    p.add_argument("--points", type=int, default=8)
    p.add_argument("--samples", type=int, default=256)
    for p in (p, ev):
        p.add_argument("--eval-param", action="append", metavar="NAME=VALUE",
                       help="override a spec parameter for evaluation only (e.g. a fixed point's max_iter)")
    args = ap.parse_args(argv)
    if args.cmd == "list":
        for name in TASK_NAMES:
            t = task(name)
            print(f"{name:24s} vocab {len(t.vocab):3d}  {t.scoring:6s}  {t.about}")
        return 0
    from pathlib import Path

    from .train import evaluate, load_run, train, write_eval
    seconds = args.max_minutes * 60 if getattr(args, "max_minutes", None) else None
    if args.cmd == "train":
        metrics = train(_config(args, args.spec, args.task), args.out, resume=args.resume, max_seconds=seconds,
                        cuda_graph=args.cuda_graph)
        print(json.dumps(metrics))
        return 0
    if args.cmd == "suite":
        from .suite import parse_entry, run_suite
        try:
            entries = [parse_entry(s) for s in args.specs]
        except ValueError as e:
            raise SystemExit(f"recdsl tasks suite: {e}") from None
        run_suite(_config(args, entries[0].path, args.tasks[0]), entries, args.tasks, args.out,
                  _eval_lengths(args.test_len, args.points), args.samples, max_seconds=seconds,
                  eval_params=_params(args.eval_param), cuda_graph=args.cuda_graph)
        print((Path(args.out) / "suite.md").read_text())
        return 0
    model, cfg, budget = load_run(args.checkpoint, params=_params(args.eval_param))
    rows = evaluate(model, cfg, _eval_lengths(args.test_len or cfg.test_len, args.points), args.samples)
    for r in rows:
        print(json.dumps({k: v for k, v in r.items() if k != "prefix_accuracy"}))
    path = write_eval(rows, cfg, args.out or str(Path(args.checkpoint).parent), budget)
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0
