"""`recdsl tasks suite`: every spec on every task with one configuration; a comparison table as
markdown and JSON, and a plot of each task's metric against length with one line per spec."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from .data import task as get_task
from .train import TrainConfig, evaluate, load_checkpoint, train, write_eval

HEADLINE = ("scaled_accuracy", "sequence_accuracy", "character_accuracy", "accuracy")


def headline(row: dict) -> str:
    return next(k for k in HEADLINE if k in row)


def run_suite(base: TrainConfig, specs: list[str], tasks: list[str], out_dir: str, lengths: list[int],
              samples: int = 256, log=sys.stderr) -> dict:
    """Train and evaluate each (spec, task) under out_dir/<task>/<spec>/ (resuming finished runs);
    returns {task: {spec: eval rows}} and writes suite.json, suite.md and one suite_<task>.png per task."""
    out = Path(out_dir)
    results: dict = {}
    for t in tasks:
        get_task(t)   # an unknown name fails before any training
    for t in tasks:
        for spec in specs:
            cfg = dataclasses.replace(base, spec=spec, task=t)
            run = out / t / Path(spec).stem
            print(f"== {Path(spec).stem} on {t}", file=log, flush=True)
            train(cfg, str(run), resume=True, log=log)
            model, cfg = load_checkpoint(str(run / "checkpoint.pt"))
            rows = evaluate(model, cfg, lengths, samples)
            write_eval(rows, cfg, str(run))
            results.setdefault(t, {})[Path(spec).stem] = rows
    (out / "suite.json").write_text(json.dumps({"config": dataclasses.asdict(base), "lengths": lengths,
                                                "results": results}, indent=1))
    (out / "suite.md").write_text(table(results, lengths))
    for t, by_spec in results.items():
        _plot(t, by_spec, str(out / f"suite_{t}.png"))
    return results


def table(results: dict, lengths: list[int]) -> str:
    """Mean of each task's headline metric over the evaluated lengths, one row per spec."""
    tasks = list(results)
    specs = list(dict.fromkeys(s for by in results.values() for s in by))
    lines = [f"Mean over lengths {lengths[0]}-{lengths[-1]} of each task's metric "
             f"({', '.join(f'{t}: {headline(next(iter(results[t].values()))[0])}' for t in tasks)}).", "",
             "| spec | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for s in specs:
        cells = []
        for t in tasks:
            rows = results[t].get(s)
            cells.append(f"{sum(r[headline(r)] for r in rows) / len(rows):.3f}" if rows else "")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(task_name: str, by_spec: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.2))
    key = None
    for spec, rows in by_spec.items():
        key = headline(rows[0])
        ax.plot([r["length"] for r in rows], [r[key] for r in rows], marker="o", label=spec)
    ax.set_xlabel("sequence length")
    ax.set_ylabel(key.replace("_", " "))
    ax.set_title(task_name, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
