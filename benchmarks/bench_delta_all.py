"""Issue 4's table in one process (fla's autotuning is paid once per kernel, not once per spec):
deltanet, gated_deltanet, deltaproduct n_h = 2 and 3 (gated and not) at (4,4096,16,128) and (8,1024,8,64)
against fla, each row appended to --out as it is measured (a time limit loses nothing measured).

    python benchmarks/bench_delta_all.py --out benchmarks/results/DATE_h100_delta.jsonl
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CASES = [("deltanet", {}, None), ("gated_deltanet", {}, None),
         ("deltaproduct", {"n_h": 2}, False), ("deltaproduct", {"n_h": 2}, True),
         ("deltaproduct", {"n_h": 3}, False), ("deltaproduct", {"n_h": 3}, True)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", default="4,4096,16,128;8,1024,8,64")
    ap.add_argument("--cases", default=None, help="a subset, e.g. deltaproduct (names of CASES)")
    ap.add_argument("--n-h", default=None, help="DeltaProduct's n_h values to run, e.g. 3")
    a = ap.parse_args()
    from recdsl.bench import environment
    from recdsl.bench_delta import delta_case
    env = environment()
    for sh in a.shapes.split(";"):
        B, T, H, D = map(int, sh.split(","))
        for name, params, gated in CASES:
            if a.cases and name not in a.cases.split(","):
                continue
            if a.n_h and "n_h" in params and str(params["n_h"]) not in a.n_h.split(","):
                continue
            try:
                rows = delta_case(str(ROOT / "examples" / f"{name}.rec"), B, T, H, D, params, gated=gated)
            except Exception as e:    # one failing case must not lose the others
                rows = [{"case": name, **params, "gated": gated, "B": B, "T": T, "H": H, "D": D,
                         "error": f"{type(e).__name__}: {e}"[:300]}]
                print(rows[0], file=sys.stderr, flush=True)
            with open(a.out, "a") as f:
                for r in rows:
                    f.write(json.dumps({**env, **r}) + "\n")
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
