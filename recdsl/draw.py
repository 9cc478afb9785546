"""Draw the IR: Graphviz .dot text, or a PNG/SVG/PDF through matplotlib."""
from __future__ import annotations

from pathlib import Path

import networkx as nx

from .ir import IR

COLORS = {"value": "#dbe9f6", "linmap": "#f6e3c8", "leaf": "#d9f2d9", "root": "#f4cccc"}


def _label(ir: IR, i: int) -> str:
    n = ir.node(i)
    head = n.op if not n.args or n.op in ("linear", "mlp", "shortconv") else f"{n.op} {n.args[0]}"
    if n.op == "const":
        head = f"{n.args[0]:g}"
    return f"{head}\\n{list(n.shape)}" if n.shape else head


def _kind(ir: IR, i: int) -> str:
    n = ir.node(i)
    return "leaf" if not ir.operands(i) and n.op != "identity" else n.kind


def to_dot(ir: IR) -> str:
    roots = {}
    for name, i in ir.roots:
        roots.setdefault(i, []).append(name)
    lines = [f'digraph "{ir.name}" {{', "  rankdir=LR;", '  node [shape=box, style="rounded,filled", fontname="Helvetica"];']
    for i in ir.order():
        color = COLORS["root"] if i in roots else COLORS[_kind(ir, i)]
        extra = ("\\n<" + ", ".join(roots[i]) + ">") if i in roots else ""
        lines.append(f'  n{i} [label="{_label(ir, i)}{extra}", fillcolor="{color}"];')
    for u, v in ir.graph.edges:
        lines.append(f"  n{u} -> n{v};")
    lines.append("}")
    return "\n".join(lines)


def draw(ir: IR, out: str) -> None:
    path = Path(out)
    if path.suffix == ".dot":
        path.write_text(to_dot(ir) + "\n")
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    g = ir.graph
    depth = {}
    for i in ir.order():
        depth[i] = 1 + max((depth[u] for u in ir.operands(i)), default=-1)
    layers: dict[int, list[int]] = {}
    for i, d in depth.items():
        layers.setdefault(d, []).append(i)
    pos = {i: (d, -k + len(nodes) / 2) for d, nodes in layers.items() for k, i in enumerate(nodes)}
    width = max(8, 1.6 * (max(layers) + 1))
    height = max(5, 0.7 * max(len(v) for v in layers.values()))
    fig, ax = plt.subplots(figsize=(width, height))
    nx.draw_networkx_edges(g, pos, ax=ax, arrows=True, arrowsize=8, edge_color="#888888", node_size=1400)
    roots = {i for _, i in ir.roots}
    for i, (x, y) in pos.items():
        color = COLORS["root"] if i in roots else COLORS[_kind(ir, i)]
        ax.text(x, y, _label(ir, i).replace("\\n", "\n"), ha="center", va="center", fontsize=7,
                bbox=dict(boxstyle="round,pad=0.3", fc=color, ec="#555555", lw=0.6))
    ax.set_title(f"{ir.name}: IR ({len(g)} nodes); roots in red, linear maps in orange, leaves in green")
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
