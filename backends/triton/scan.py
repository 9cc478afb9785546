"""Element-wise diagonal scans (hgrn, lru, any h_t = a_t * h_{t-1} + b_t over a vector state).

One program walks one sequence for a block of BD channels, BT tokens at a time: the IR's element-wise
expressions for a_t, b_t and the readout are generated into the kernel (inputs are read once), a
`tl.associative_scan` runs inside the block and the state is carried across blocks in registers.
The backward is the reverse scan dh_t = dy_t * dreadout/dh + a_{t+1} dh_{t+1}, with the expressions
differentiated in reverse mode inside the same kernel; h_{t-1} comes from the chunk-start states the
forward stored (the Plan's store-vs-recompute choice) and an exclusive scan.
"""
from __future__ import annotations

import networkx as nx

from recdsl.ir import IR

from .exprs import CHANNEL, SCALAR, SUPPORTED, TIME, Emitter


def eligible(ir: IR) -> str | None:
    """None when the element-wise scan can run this spec, else the reason it cannot."""
    S = ir.state[1]
    if len(S) != 1:
        return f"the state {list(S)} is not a vector"
    trans, write = ir.root("transition"), ir.root("write")
    if ir.node(trans).op != "diag" or ir.node(ir.operands(trans)[0]).shape != S:
        return "the transition is not one element-wise diag(...) over the whole state"
    out = ir.roots_with("output:")[0][1]
    if ir.node(out).shape != S:
        return "the readout is not element-wise"
    for root in (trans, write, out):
        for i in nx.ancestors(ir.graph, root) | {root}:
            n = ir.node(i)
            if n.op in ("diag",) and i == trans:
                continue
            if n.op not in SUPPORTED:
                return f"op {n.op} is not element-wise"
            if n.op in ("input", "weight", "state") and n.shape not in (S,):
                return f"{n.op} {n.args[0] if n.args else ''} has shape {list(n.shape)}, not the state's"
            if n.op in ("input", "weight") and any(c[0] == "l2norm" for c in n.args[1]):
                return f"{n.args[0]} is l2-normalised, not element-wise"
            if n.op == "pow" and ir.node(ir.operands(i)[1]).op != "const":
                return "a power with a non-constant exponent"
    return None


def _topo(ir: IR, roots: list[int]) -> list[int]:
    keep = set(roots)
    for r in roots:
        keep |= nx.ancestors(ir.graph, r)
    return [i for i in ir.order() if i in keep]


def generate(ir: IR, spec_args) -> str:
    """The Triton module text for this spec's forward and backward kernels."""
    trans, write = ir.root("transition"), ir.root("write")
    a_id = ir.operands(trans)[0]
    out_id = ir.roots_with("output:")[0][1]
    inputs = [a.name for a in spec_args if a.kind == "input"]
    weights = [a.name for a in spec_args if a.kind == "weight"]
    leaf = {}
    for i in ir.graph.nodes:
        n = ir.node(i)
        if n.op in ("input", "state"):
            leaf[i] = TIME
        elif n.op == "weight":
            leaf[i] = CHANNEL
        elif n.op in ("option", "const"):
            leaf[i] = SCALAR
    options = sorted(n.args[0] for n in ir.leaves("option"))
    gate_nodes = _topo(ir, [a_id, write])
    read_nodes = _topo(ir, [out_id])
    state_ids = [i for i in read_nodes if ir.node(i).op == "state"]

    def loads(nodes, suffix, rows, mask, prefetched=False):
        lines = []
        for i in nodes:
            n = ir.node(i)
            if n.op == "input" and prefetched:
                lines.append(f"v{i}{suffix} = nx{i}.to(tl.float32)  # input {n.args[0]}")
            elif n.op == "input":
                lines.append(f"v{i}{suffix} = tl.load(in_{n.args[0]} + (bos + {rows})[:, None] * C + o_c[None, :], "
                             f"mask={mask}, other=0.0).to(tl.float32)  # input {n.args[0]}")
            elif n.op == "weight":
                lines.append(f"v{i}{suffix} = w_{n.args[0]}_row")
            elif n.op == "option":
                lines.append(f"v{i}{suffix} = opt_{n.args[0]}")
        return lines

    def expr_block(nodes, suffix, rows, mask, prefetched=False):
        em = Emitter(ir, leaf, suffix)
        return loads(nodes, suffix, rows, mask, prefetched) + em.forward(nodes), em

    def v(i, suffix=""):
        n = ir.node(i)
        return repr(float(n.args[0])) if n.op == "const" else f"v{i}{suffix}"

    sig_in = ", ".join(f"in_{x}" for x in inputs)
    sig_w = ", ".join(f"w_{x}" for x in weights)
    sig_o = ", ".join(f"opt_{x}" for x in options)
    common = ", ".join(p for p in (sig_in, sig_w, sig_o) if p)
    w_rows = [f"w_{x}_row = tl.load(w_{x} + o_c, mask=m_c, other=0.0).to(tl.float32)[None, :]" for x in weights]
    head = [
        "i_c, i_n = tl.program_id(0), tl.program_id(1)",
        "if IS_VARLEN:",
        "    bos = tl.load(cu_seqlens + i_n).to(tl.int64)",
        "    L = tl.load(cu_seqlens + i_n + 1).to(tl.int64) - bos",
        "    c0 = tl.load(chunk_offsets + i_n).to(tl.int64)",
        "else:",
        "    bos = i_n.to(tl.int64) * T",
        "    L = T",
        "    c0 = i_n.to(tl.int64) * tl.cdiv(T, BT)",
        "o_c = i_c * BD + tl.arange(0, BD)",
        "m_c = o_c < C",
        "rows = tl.arange(0, BT)",
    ] + w_rows

    # ---- forward ------------------------------------------------------------------------------
    fwd_gate, _ = expr_block(gate_nodes, "", "o_t", "m", prefetched=True)
    fwd_read, _ = expr_block([i for i in read_nodes if i not in gate_nodes or ir.node(i).op == "state"], "", "o_t", "m",
                             prefetched=True)
    fwd_inputs = [i for i in dict.fromkeys(gate_nodes + read_nodes) if ir.node(i).op == "input"]

    def prefetch(row0: str) -> list[str]:
        # the next block's inputs are requested before this block is scanned, so the loads overlap the scan
        return [f"nx{i} = tl.load(in_{ir.node(i).args[0]} + (bos + {row0} + rows)[:, None] * C + o_c[None, :], "
                f"mask=(({row0} + rows) < L)[:, None] & m_c[None, :], other=0.0)" for i in fwd_inputs]
    fwd = head + [
        "h = tl.zeros([BD], dtype=tl.float32)",
        "if USE_H0:",
        "    h = tl.load(h0 + i_n * C + o_c, mask=m_c, other=0.0).to(tl.float32)",
        *prefetch("0"),
        "for i_t in range(0, tl.cdiv(L, BT)):",
        "    if STORE_HC:",
        "        tl.store(hc + (c0 + i_t) * C + o_c, h, mask=m_c)",
        "    o_t = i_t * BT + rows",
        "    m = (o_t < L)[:, None] & m_c[None, :]",
        f"    # a_t (IR %{a_id}, the diag of the transition) and b_t (IR %{write}, the write)",
        *["    " + l for l in fwd_gate],
        *["    " + l for l in fwd_read if l.startswith("v") and "nx" in l],
        *["    " + l for l in prefetch("(i_t + 1) * BT")],
        f"    a = tl.where(m, {v(a_id)}, 1.0)",
        f"    b = tl.where(m, {v(write)}, 0.0)",
        "    A, Bs = tl.associative_scan((a, b), 0, _combine)",
        "    hs = Bs + A * h[None, :]",
        f"    # readout (IR %{out_id})",
        *[f"    v{s} = hs" for s in state_ids],
        *["    " + l for l in fwd_read if "nx" not in l],
        f"    tl.store(out + (bos + o_t)[:, None] * C + o_c[None, :], ({v(out_id)} + tl.zeros([BT, BD], dtype=tl.float32)).to(out.dtype.element_ty), mask=m)",
        "    h = tl.sum(tl.where((rows == BT - 1)[:, None], hs, 0.0), axis=0)",
        "if STORE_HT:",
        "    tl.store(ht + i_n * C + o_c, h, mask=m_c)",
    ]

    # ---- backward ---------------------------------------------------------------------------------
    cur_gate, em_gate = expr_block(gate_nodes, "", "o_t", "m")
    prv_gate, _ = expr_block(gate_nodes, "_p", "o_t - 1", "m_p")
    nxt_gate, _ = expr_block(_topo(ir, [a_id]), "_n", "o_t + 1", "m_n")
    read_only = [i for i in read_nodes if i not in gate_nodes or ir.node(i).op == "state"]
    cur_read, em_read = expr_block(read_only, "", "o_t", "m")
    read_bw, read_leaves = em_read.backward(read_nodes, {out_id: "dy"}, "m")
    gate_bw, gate_leaves = em_gate.backward(gate_nodes, {a_id: "da", write: "db"}, "m")
    # separate gradient names per pass: readout grads get an "r" prefix
    read_bw = [_rename(l, "g", "gr") for l in read_bw]
    read_leaves = {i: _rename(g, "g", "gr") for i, g in read_leaves.items()}
    dh_direct = " + ".join(read_leaves[s] for s in state_ids) if state_ids else "0.0"
    grad_store = []
    for i in sorted(set(read_leaves) | set(gate_leaves)):
        n = ir.node(i)
        parts = [d[i] for d in (read_leaves, gate_leaves) if i in d]
        total = " + ".join(parts)
        if n.op == "input":
            grad_store.append(f"tl.store(d_{n.args[0]} + (bos + o_t)[:, None] * C + o_c[None, :], "
                              f"({total} + tl.zeros([BT, BD], dtype=tl.float32)).to(d_{n.args[0]}.dtype.element_ty), mask=m)")
        elif n.op == "weight":
            grad_store.append(f"dw_{n.args[0]}_acc += {total}")
    bwd = head + [
        "dh = tl.zeros([BD], dtype=tl.float32)  # dL/dh at the first row of the block after this one",
        "dh_final = tl.zeros([BD], dtype=tl.float32)",
        "if USE_DHT:",
        "    dh_final = tl.load(dht + i_n * C + o_c, mask=m_c, other=0.0).to(tl.float32)",
        *[f"dw_{x}_acc = tl.zeros([1, BD], dtype=tl.float32)" for x in weights],
        "a_first = tl.zeros([BD], dtype=tl.float32)",
        "NT = tl.cdiv(L, BT)",
        "for j in range(0, NT):",
        "    i_t = NT - 1 - j",
        "    h_start = tl.load(hc + (c0 + i_t) * C + o_c, mask=m_c, other=0.0)",
        "    o_t = i_t * BT + rows",
        "    m = (o_t < L)[:, None] & m_c[None, :]",
        "    m_p = ((o_t - 1 >= 0) & (o_t < L))[:, None] & m_c[None, :]",
        "    m_n = (o_t + 1 < L)[:, None] & m_c[None, :]",
        "    # h_{t-1}: an inclusive scan of the previous row's (a, b), the chunk's first row as the identity",
        *["    " + l for l in prv_gate],
        f"    first = (rows == 0)[:, None] | (m_p == 0)",
        f"    a_p = tl.where(first, 1.0, {v(a_id, '_p')})",
        f"    b_p = tl.where(first, 0.0, {v(write, '_p')})",
        "    Ap, Bp = tl.associative_scan((a_p, b_p), 0, _combine)",
        "    h_prev = Bp + Ap * h_start[None, :]",
        *["    " + l for l in cur_gate],
        f"    a = tl.where(m, {v(a_id)}, 1.0)",
        f"    b = tl.where(m, {v(write)}, 0.0)",
        "    hs = a * h_prev + b",
        *[f"    v{s} = hs" for s in state_ids],
        *["    " + l for l in cur_read],
        "    dy = tl.load(d_out + (bos + o_t)[:, None] * C + o_c[None, :], mask=m, other=0.0).to(tl.float32)",
        "    # reverse mode through the readout",
        *["    " + l for l in read_bw],
        f"    d = tl.where(m, {dh_direct}, 0.0)",
        "    d += tl.where((o_t == L - 1)[:, None], dh_final[None, :], 0.0)  # the final state's gradient",
        "    # a_{t+1} for the reverse scan dh_t = d_t + a_{t+1} dh_{t+1}",
        *["    " + l for l in nxt_gate],
        f"    c = tl.where(m_n, {v(a_id, '_n')}, 0.0)",
        "    Cr, Br = tl.associative_scan((c, d), 0, _combine, reverse=True)",
        "    dh_t = Br + Cr * dh[None, :]",
        "    da = tl.where(m, dh_t * h_prev, 0.0)",
        "    db = tl.where(m, dh_t, 0.0)",
        "    # reverse mode through a_t and b_t",
        *["    " + l for l in gate_bw],
        *["    " + l for l in grad_store],
        "    dh = tl.sum(tl.where((rows == 0)[:, None], dh_t, 0.0), axis=0)",
        "    a_first = tl.sum(tl.where((rows == 0)[:, None], a, 0.0), axis=0)",
        "if USE_H0:",
        "    tl.store(dh0 + i_n * C + o_c, dh * a_first, mask=m_c)",
        *[f"tl.store(dw_{x} + i_n * C + o_c[None, :], dw_{x}_acc, mask=m_c[None, :])" for x in weights],
    ]
    d_in = ", ".join(f"d_{x}" for x in inputs)
    d_w = ", ".join(f"dw_{x}" for x in weights)
    bwd_sig = ", ".join(p for p in (common, "h0, hc, d_out, dht", d_in, d_w, "dh0") if p)
    consts = "T, C, BT: tl.constexpr, BD: tl.constexpr, IS_VARLEN: tl.constexpr"
    src = [
        f'"""Generated by recdsl for `{ir.name}` (IR hash {ir.hash()}): element-wise diagonal scan."""',
        "import triton",
        "import triton.language as tl",
        "",
        "INPUTS = " + repr(inputs),
        "WEIGHTS = " + repr(weights),
        "OPTIONS = " + repr(options),
        "",
        "",
        "@triton.jit",
        "def _combine(a1, b1, a2, b2):",
        "    # (a1, b1) then (a2, b2): h -> a2 * (a1 * h + b1) + b2",
        "    return a1 * a2, a2 * b1 + b2",
        "",
        "",
        "@triton.jit",
        f"def scan_fwd({common}, h0, out, ht, hc, cu_seqlens, chunk_offsets, {consts},",
        "             USE_H0: tl.constexpr, STORE_HT: tl.constexpr, STORE_HC: tl.constexpr):",
        *["    " + l for l in fwd],
        "",
        "",
        "@triton.jit",
        f"def scan_bwd({bwd_sig}, cu_seqlens, chunk_offsets, {consts},",
        "             USE_H0: tl.constexpr, USE_DHT: tl.constexpr):",
        *["    " + l for l in bwd],
        "",
    ]
    return "\n".join(src)


def _rename(line: str, old: str, new: str) -> str:
    """Rename gradient variables g<id> to <new><id> (forward values v<id> are untouched)."""
    import re
    return re.sub(rf"\b{old}(\d+)", rf"{new}\1", line)
