"""`recdsl tasks suite`: every spec on every task with one configuration; a comparison table as
markdown and JSON, and a plot of each task's metric against length with one line per spec.

A spec entry is `PATH` or `PATH:NAME=VALUE,...`: the settings override spec parameters (`n_h=1`) or the
training settings in TRAIN_KEYS (`layers=2`, `lr=0.003`), so one suite can hold two variants of one file. Results accumulate in
--out: a later call into the same folder adds or replaces its own (task, spec) entries and keeps the
others, so each case can run as its own process (under its own `timeout`) and still share one table.
"""
from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

from .data import task as get_task
from .metrics import headline, mean_headline
from .papers import meets, reference
from .train import BEST, TrainConfig, evaluate, load_run, train, write_eval

TRAIN_KEYS = {"layers": int, "d_model": int, "steps": int, "batch": int, "warmup": int, "lr": float,
              "weight_decay": float, "clip": float, "val_every": int, "seed": int}


@dataclasses.dataclass(frozen=True)
class Entry:
    path: str
    settings: tuple[tuple[str, float], ...] = ()    # from PATH:NAME=VALUE,...

    @property
    def label(self) -> str:
        stem = Path(self.path).stem
        return stem + (f"({','.join(f'{k}={v:g}' for k, v in self.settings)})" if self.settings else "")

    @property
    def folder(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.label).strip("_")

    def config(self, base: TrainConfig, task_name: str) -> TrainConfig:
        s = dict(self.settings)
        train = {k: TRAIN_KEYS[k](s.pop(k)) for k in list(s) if k in TRAIN_KEYS}
        params = {**dict(base.params), **s}
        return dataclasses.replace(base, spec=self.path, task=task_name, params=tuple(params.items()), **train)


def parse_entry(text: str) -> Entry:
    path, sep, rest = text.partition(":")
    if sep and "=" not in rest:       # a colon inside the path itself
        path, sep, rest = text, "", ""
    settings = []
    for item in rest.split(",") if sep else ():
        name, eq, value = item.partition("=")
        try:
            settings.append((name.strip(), float(value)))
        except ValueError:
            eq = ""
        if not eq or not name.strip():
            raise ValueError(f"spec entry {text!r}: expected PATH or PATH:NAME=VALUE,..., got {item!r}")
    return Entry(path, tuple(settings))


def run_settings(cfg: TrainConfig) -> dict:
    """The settings a paper's entry is matched on: layers and every spec parameter (defaults included)."""
    import recdsl
    return {**dict(recdsl.load(cfg.spec).params), **dict(cfg.params), "layers": cfg.layers}


def run_suite(base: TrainConfig, specs: list, tasks: list[str], out_dir: str, lengths: list[int],
              samples: int = 256, log=sys.stderr, max_seconds: float | None = None, eval_params: tuple = (),
              cuda_graph: str = "auto") -> dict:
    """Train and evaluate each (spec, task) under out_dir/<task>/<spec>/ (resuming earlier runs);
    returns {task: {spec: eval rows}} of everything in out_dir and writes suite.json, suite.md and one
    suite_<task>.png per task. `max_seconds` limits each run's training (then it is evaluated);
    `eval_params` override spec parameters at evaluation (see load_run); `cuda_graph` as in train. Several
    suites may write into one out_dir at once."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = [s if isinstance(s, Entry) else parse_entry(s) for s in specs]
    for t in tasks:
        get_task(t)   # an unknown name fails before any training
    results = {}
    for t in tasks:
        for e in entries:
            cfg = e.config(base, t)
            run = out / t / e.folder
            print(f"== {e.label} on {t}", file=log, flush=True)
            train(cfg, str(run), resume=True, log=log, max_seconds=max_seconds, cuda_graph=cuda_graph)
            picks = [("checkpoint.pt", e.label, "eval")]
            if cfg.val_every and (run / BEST).exists():    # also the model the validation split picked
                picks.append((BEST, f"{e.label} picked", "eval_picked"))
            for ckpt, label, name in picks:
                model, run_cfg, budget = load_run(str(run / ckpt), params=eval_params)
                rows = evaluate(model, run_cfg, lengths, samples, log=log)
                write_eval(rows, run_cfg, str(run), budget, name=name)
                ref = reference(t, Path(run_cfg.spec).stem, run_settings(run_cfg))
                mean = mean_headline(rows)
                record = {
                    "config": dataclasses.asdict(run_cfg), "eval_params": dict(eval_params), "budget": budget,
                    "mean": mean, "checkpoint": ckpt,
                    "paper": None if ref is None else {"value": ref.value, "claim": ref.claim, "source": ref.source,
                                                       "target": ref.target, "passes": ref.passes(mean)}}
                results = _merge(out, base, lengths, t, label, rows, record)
    return results


def _merge(out: Path, base: TrainConfig, lengths: list[int], task_name: str, label: str, rows: list[dict],
           record: dict) -> dict:
    """Add one run to suite.json, suite.md and the task's plot, under a lock: suites running in parallel
    may share an output folder, each adding its own runs to what the others wrote."""
    import fcntl
    with open(out / ".suite.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        saved = out / "suite.json"
        previous = json.loads(saved.read_text()) if saved.exists() else {}
        results, runs = previous.get("results", {}), previous.get("runs", {})
        results.setdefault(task_name, {})[label] = rows
        runs.setdefault(task_name, {})[label] = record
        _write(saved, json.dumps({"config": previous.get("config", dataclasses.asdict(base)),
                                  "lengths": previous.get("lengths", lengths), "results": results, "runs": runs},
                                 indent=1))
        _write(out / "suite.md", table(results, runs))
        _plot(task_name, results[task_name], str(out / f"suite_{task_name}.png"))
    return results


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def table(results: dict, runs: dict | None = None) -> str:
    """Mean of each task's headline metric over the evaluated lengths, one row per spec, with the
    paper's number beside it where one is known; then each run's budget and the paper's source."""
    runs = runs or {}
    tasks = list(results)
    specs = sorted(dict.fromkeys(s for by in results.values() for s in by))
    def about(t):
        by = results[t]
        span = [r["length"] for rows in by.values() for r in rows]
        return f"{t}: {headline(next(iter(by.values()))[0])} over lengths {min(span)}-{max(span)}"
    lines = [f"Mean over the evaluated lengths of each task's metric ({'; '.join(about(t) for t in tasks)}).", "",
             "| spec | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for s in specs:
        cells = []
        for t in tasks:
            rows = results[t].get(s)
            paper = (runs.get(t, {}).get(s) or {}).get("paper")
            cell = f"{mean_headline(rows):.3f}" if rows else ""
            if rows and paper:
                cell += f" (paper {paper['value']:.3f})" if paper["value"] is not None else f" (paper: {paper['claim']})"
            cells.append(cell)
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    if any(runs.values()):
        sources: list[str] = []      # each paper once, below the table; the rows cite it by number
        lines += ["", "| task | spec | steps done | train s | device | target (issue 6) | paper |", "|---" * 7 + "|"]
        for t in tasks:
            for s, r in runs.get(t, {}).items():
                b, p = r.get("budget") or {}, r.get("paper") or {}
                steps = f"{b.get('steps_done', '?')}/{b.get('steps', '?')}" + (
                    " (time limit)" if b.get("stopped_by") == "time" else "")
                target = _target_text(p["target"], p["passes"]) if p.get("target") else ""
                cite = ""
                if p.get("source"):
                    if p["source"] not in sources:
                        sources.append(p["source"])
                    cite = f"[{sources.index(p['source']) + 1}]"
                lines.append(f"| {t} | {s} | {steps} | {b.get('train_seconds', '?')} | {b.get('device', '?')} | "
                             f"{target} | {cite} |")
        lines += [""] + [f"[{i + 1}] {src}" for i, src in enumerate(sources)]
    lines += _best_of_seeds(results, runs)
    return "\n".join(lines) + "\n"


def _target_text(target, met: bool) -> str:
    return f"{target[0]} {target[1]:g}: " + ("met" if met else "not met")


def _best_of_seeds(results: dict, runs: dict) -> list[str]:
    """Where a spec ran with several seeds: the best run's mean (the papers report the best of three)
    beside every seed's, and issue 6's target on the best."""
    lines = []
    for t, by in results.items():
        groups: dict[str, list[str]] = {}
        for label in sorted(by):
            groups.setdefault(_without_seed(label)[0], []).append(label)
        groups = {g: labels for g, labels in groups.items() if len(labels) > 1}
        if not groups:
            continue
        if not lines:
            lines = ["", "Best of the seeds (the papers' convention: best of three):", "",
                     "| task | spec | best | every seed | target (issue 6) |", "|---" * 5 + "|"]
        for g, labels in groups.items():
            means = {label: mean_headline(by[label]) for label in labels}
            best = max(means, key=means.get)
            paper = (runs.get(t, {}).get(best) or {}).get("paper") or {}
            target = (_target_text(paper["target"], meets(paper["target"], means[best]))
                      if paper.get("target") else "")
            every = ", ".join(f"{_without_seed(label)[1]}: {m:.3f}" for label, m in means.items())
            lines.append(f"| {t} | {g} | {means[best]:.3f} | {every} | {target} |")
    return lines


def _plot(task_name: str, by_spec: dict, path: str) -> None:
    """One line per run: a colour per spec (its label without the seed), a line style per seed, the
    legend outside the axes (a suite may hold a dozen runs)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    styles = ("-", (0, (5, 2)), ":", "-.")
    colours, seeds = {}, {}
    fig, ax = plt.subplots(figsize=(7, 3.4))
    key = None
    for label, rows in sorted(by_spec.items()):
        key = headline(rows[0])
        spec, seed = _without_seed(label)
        colour = colours.setdefault(spec, f"C{len(colours) % 10}")
        style = styles[seeds.setdefault(seed, len(seeds)) % len(styles)]
        ax.plot([r["length"] for r in rows], [r[key] for r in rows], marker="o", markersize=3, color=colour,
                linestyle=style, label=label)
    ax.set_xlabel("sequence length")
    ax.set_ylabel(key.replace("_", " "))
    ax.set_title(task_name, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), handlelength=3.5)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _without_seed(label: str) -> tuple[str, str]:
    """'deltanet(seed=1,n_h=2)' -> ('deltanet(n_h=2)', '1')."""
    seed = re.search(r"seed=([^,)]+)", label)
    if not seed:
        return label, ""
    rest = re.sub(r"seed=[^,)]+,?", "", label).replace(",)", ")").replace("()", "")
    return rest, seed.group(1)
