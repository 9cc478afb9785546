"""Validation score against training step, one line per run, from the logs `recdsl tasks` writes with
--val-every (lines '[task spec] STEP/STEPS validation VALUE (best ...)').

    python benchmarks/plot_validation.py RUN.log ... --out validation.png [--labels a b c]

A run resumed in a later call appends to the same log; repeated steps keep the last value."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

LINE = re.compile(r"\] (\d+)/(\d+) validation (-?[\d.e+-]+) ")


def read(log: str) -> list[tuple[int, float]]:
    """(step, validation score) pairs of one log, in step order."""
    by_step = {}
    for line in Path(log).read_text().splitlines():
        m = LINE.search(line)
        if m:
            by_step[int(m.group(1))] = float(m.group(3))
    if not by_step:
        raise ValueError(f"{log}: no validation lines (was the run trained with --val-every?)")
    return sorted(by_step.items())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("logs", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--labels", nargs="*", help="one per log (default: the log's name)")
    ap.add_argument("--title", default="validation during training")
    args = ap.parse_args(argv)
    labels = args.labels or [Path(p).stem for p in args.logs]
    if len(labels) != len(args.logs):
        ap.error(f"{len(args.logs)} logs but {len(labels)} labels")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for log, label in zip(args.logs, labels):
        steps, values = zip(*read(log))
        ax.plot(steps, values, label=label, lw=1)
    ax.set_xlabel("training step")
    ax.set_ylabel("validation score (headline metric)")
    ax.set_title(args.title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
