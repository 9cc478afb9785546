"""Command line: `recdsl check`, `recdsl explain`, `recdsl graph`, `recdsl run`."""
from __future__ import annotations

import argparse
import sys

from .errors import RecError


def _params(pairs: list[str]) -> dict:
    out = {}
    for p in pairs or []:
        name, _, value = p.partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            raise SystemExit(f"recdsl: parameter {p!r} must be NAME=NUMBER") from None
    return out


def cmd_check(args) -> int:
    from . import load
    bad = 0
    for path in args.files:
        try:
            spec = load(path, **_params(args.param))
            print(f"ok    {path}: {spec.name} [{spec.family}: {spec.analysis.detail}], "
                  f"eigenvalues in {spec.analysis.eig_range}")
        except RecError as e:
            bad += 1
            print(f"error {e}", file=sys.stderr)
        except (OSError, FileNotFoundError) as e:
            bad += 1
            print(f"error {path}: {e}", file=sys.stderr)
    return 1 if bad else 0


def cmd_explain(args) -> int:
    from . import load
    try:
        print(load(args.file, **_params(args.param)).explain())
    except RecError as e:
        print(f"error {e}", file=sys.stderr)
        return 1
    return 0


def cmd_graph(args) -> int:
    from . import load
    from .draw import draw
    try:
        spec = load(args.file, **_params(args.param))
    except RecError as e:
        print(f"error {e}", file=sys.stderr)
        return 1
    draw(spec.ir, args.output)
    print(f"wrote {args.output}")
    return 0


def cmd_run(args) -> int:
    """Compile the spec's layer, run it on random input, check step() against forward, report."""
    import time

    import torch

    from . import compile as rec_compile
    from .module import shifted_output
    t0 = time.perf_counter()
    torch.manual_seed(0)     # the layer's initial weights too: the same report every run
    try:
        layer = rec_compile(args.file, **_params(args.param))
    except RecError as e:
        print(f"error {e}", file=sys.stderr)
        return 1
    print(layer)
    print(layer.spec.analysis.text())
    x = torch.randn(args.batch, args.length, layer.d_model)
    y, S = layer(x, output_final_state=True)
    y.square().mean().backward()
    err = 0.0
    if shifted_output(layer.spec.ir):    # step() refuses it: the state does not carry the last output
        compared = f"no step(): prev({layer.spec.output_name}, shift = 1) reads the previous token's output"
    else:
        state, ys = layer.init_state(args.batch), []
        with torch.no_grad():
            for t in range(args.length):
                yt, state = layer.step(x[:, t], state)
                ys.append(yt)
        err = (torch.stack(ys, 1) - y.detach()).norm() / y.detach().norm()
        compared = f"step() vs forward rel. error {err:.2e}"
    grads = sum(p.grad is not None for p in layer.parameters())
    print(f"forward {list(x.shape)} -> {list(y.shape)}, final state {list(S.shape)}; "
          f"{grads} parameter tensors got gradients; {compared}; {time.perf_counter() - t0:.2f} s")
    if layer.last_solve is not None:
        s = layer.last_solve
        print(f"fixed point: {s.iterations} iterations, residual {s.residual.max():.2e}, converged {s.converged}")
    return 0 if err < 1e-4 else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="recdsl", description="A compiler for linear recurrences.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("check", help="parse, lower, verify and analyse specs; non-zero exit on error")
    p.add_argument("files", nargs="+")
    p.add_argument("-p", "--param", action="append", help="override a parameter: NAME=VALUE")
    p.set_defaults(fn=cmd_check)
    p = sub.add_parser("explain", help="print AST, IR, family, eigenvalue range and what it implies, plan")
    p.add_argument("file")
    p.add_argument("-p", "--param", action="append")
    p.set_defaults(fn=cmd_explain)
    p = sub.add_parser("graph", help="draw the IR: -o out.png or out.dot")
    p.add_argument("file")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("-p", "--param", action="append")
    p.set_defaults(fn=cmd_graph)
    p = sub.add_parser("run", help="compile the layer and run it once on random input (forward, backward, step)")
    p.add_argument("file")
    p.add_argument("-p", "--param", action="append")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--length", type=int, default=16)
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("bench", help="side-by-side GPU timings (recdsl bench FILE --help)", add_help=False)
    p.set_defaults(fn=None)
    p = sub.add_parser("tasks", help="state-tracking tasks: list, train, eval (recdsl tasks --help)", add_help=False)
    p.set_defaults(fn=None)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from .bench import main as bench_main
        return bench_main(argv[1:])
    if argv[:1] == ["tasks"]:
        from .tasks.cli import main as tasks_main
        return tasks_main(argv[1:])
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
