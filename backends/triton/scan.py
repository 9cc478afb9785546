"""Element-wise diagonal scans: h_t = a_t * h_{t-1} + b_t, entry by entry, over a vector state h[D]
(hgrn, lru) or a matrix state h[D, N] whose readout may contract N (mamba, mamba_negeig: a decay per
(channel, state) entry, y = h @ c).

One program walks one sequence (and head) for a block of BD rows of the state, BT tokens at a time:
the IR's expressions for a_t, b_t and the readout are generated into the kernel (inputs are read once,
each on the axes it varies along), a `tl.associative_scan` runs inside the block and the state is
carried across blocks in registers. Signed decays need nothing special here: the scan multiplies.
The backward is the reverse scan dh_t = dy_t * dreadout/dh + a_{t+1} dh_{t+1}, with the expressions
differentiated in reverse mode inside the same kernel; h_{t-1} comes from the chunk-start states the
forward stored (the Plan's store-vs-recompute choice), and h_{t-1}, a_{t+1} either from scans that
carry each row's exclusive prefix or from re-reading the neighbouring rows (a Plan choice). Gradients of inputs that
do not vary along D (mamba's b and c) are summed over the D blocks on the host.
"""
from __future__ import annotations

import networkx as nx

from recdsl.ir import IR

from .exprs import SUPPORTED, Emitter


def eligible(ir: IR) -> str | None:
    """None when the element-wise scan can run this spec, else the reason it cannot."""
    kinds = node_kinds(ir)
    return kinds if isinstance(kinds, str) else None


def node_kinds(ir: IR) -> dict[int, tuple] | str:
    """Each node's tile axes among T (varies per token), D and N (the state's axes), or the reason the
    spec does not fit the element-wise scan. Axes flow from the roots down: an element-wise operand
    of lower rank is aligned left (the IR's broadcasting), outer(a, b) puts a on D and b on N, and
    matmul(h, c) contracts N."""
    S = ir.state[1]
    if len(S) not in (1, 2):
        return f"the state {list(S)} is neither a vector nor a matrix"
    state_axes = ("D", "N")[:len(S)]
    trans, write = ir.root("transition"), ir.root("write")
    if ir.node(trans).op != "diag" or ir.node(ir.operands(trans)[0]).shape != S:
        return "the transition is not one element-wise diag(...) over the whole state"
    out = ir.roots_with("output:")[0][1]
    out_shape = ir.node(out).shape
    if len(out_shape) == 0 or out_shape != S[:len(out_shape)]:
        return "the readout is not element-wise over the state's rows"
    want = {ir.operands(trans)[0]: state_axes, write: state_axes, out: state_axes[:len(out_shape)]}
    nodes = _topo(ir, list(want))
    for i in reversed(nodes):
        n, ax = ir.node(i), want[i]
        if n.op not in SUPPORTED:
            return f"op {n.op} is not element-wise"
        if n.op in ("input", "weight"):
            if not n.shape:
                return f"{n.op} {n.args[0]} is one scalar per {'token' if n.op == 'input' else 'head'}"
            if any(c[0] == "l2norm" for c in n.args[1]):
                return f"{n.args[0]} is l2-normalised, not element-wise"
        if n.op == "state" and ax != state_axes:
            return "the state is read along other axes than its own"
        ops = ir.operands(i)
        if n.op == "pow" and ir.node(ops[1]).op != "const":
            return "a power with a non-constant exponent"
        if n.op == "outer":
            if ax != ("D", "N"):
                return "an outer product that is not laid out as the state"
            demands = [("D",), ("N",)]
        elif n.op == "matmul":
            if ax != ("D",) or len(ir.node(ops[0]).shape) != 2 or len(ir.node(ops[1]).shape) != 1:
                return "a matmul other than (state-shaped) @ (vector over N)"
            demands = [("D", "N"), ("N",)]
        else:
            demands = [ax[:len(ir.node(o).shape)] for o in ops]
        for o, d in zip(ops, demands):
            if want.setdefault(o, d) != d:
                return f"IR %{o} is used along both {want[o]} and {d}"
    kinds = {}
    for i in nodes:
        n = ir.node(i)
        varies = n.op in ("input", "state") or any("T" in kinds[o] for o in ir.operands(i))
        kinds[i] = (("T",) if varies else ()) + want[i]
    return kinds


def _topo(ir: IR, roots: list[int]) -> list[int]:
    keep = set(roots)
    for r in roots:
        keep |= nx.ancestors(ir.graph, r)
    return [i for i in ir.order() if i in keep]


class Tiles:
    """Index arithmetic for tiles over (T, D) or (T, D, N). Tensors are [tokens, H, *axes] row-major;
    the state and its chunk-start copies are [rows, H, D(, N)]."""

    def __init__(self, matrix: bool):
        self.axes = ("T", "D", "N") if matrix else ("T", "D")

    def expand(self, axis: str) -> str:
        return "[" + ", ".join(":" if a == axis else "None" for a in self.axes) + "]"

    def shape(self, kind: tuple) -> str:
        return "[" + ", ".join(f"B{a}" if a in kind else "1" for a in self.axes) + "]"

    def offset(self, kind: tuple, lead: str | None) -> str:
        """Element offsets of a tile of this kind; `lead` is the row (token or state) index, None for a
        weight ([H, *axes])."""
        off = "i_h" if lead is None else f"({lead}) * H + i_h"
        for a in ("D", "N"):
            if a in kind:
                off = f"({off}) * {a} + o{a.lower()}"
        return off

    def mask(self, kind: tuple, time_mask: str = "mt") -> str:
        parts = [time_mask if a == "T" else f"m{a.lower()}" for a in self.axes if a in kind]
        return " & ".join(parts) if parts else "True"


BACKWARDS = ("exclusive", "shifted")


def generate(ir: IR, spec_args, backward: str = "exclusive") -> str:
    """The Triton module text for this spec's forward and backward kernels. `backward` (a Plan choice):
    "exclusive" scans carry each row's exclusive prefix, so every input is read once per row;
    "shifted" re-reads the rows before and after instead, keeping half the values live per scan."""
    if backward not in BACKWARDS:
        raise ValueError(f"backward must be one of {BACKWARDS}, got {backward!r}")
    kinds = node_kinds(ir)
    assert not isinstance(kinds, str), kinds
    matrix = len(ir.state[1]) == 2
    tiles = Tiles(matrix)
    trans, write = ir.root("transition"), ir.root("write")
    a_id = ir.operands(trans)[0]
    out_id = ir.roots_with("output:")[0][1]
    state_kind = ("T", "D", "N")[:1 + len(ir.state[1])]
    out_kind = kinds[out_id]
    inputs = [a.name for a in spec_args if a.kind == "input"]
    weights = [a.name for a in spec_args if a.kind == "weight"]
    kind_of_arg = {ir.node(i).args[0]: kinds[i] for i in kinds if ir.node(i).op in ("input", "weight")}
    options = sorted(n.args[0] for n in ir.leaves("option"))
    gate_nodes = _topo(ir, [a_id, write])
    read_nodes = _topo(ir, [out_id])
    state_ids = [i for i in read_nodes if ir.node(i).op == "state"]
    full = tiles.shape(state_kind)
    no_time = tuple(a for a in state_kind if a != "T")

    def load_input(i, row, tmask):
        n = ir.node(i)
        return (f"tl.load(in_{n.args[0]} + {tiles.offset(kinds[i], row)}, "
                f"mask={tiles.mask(kinds[i], tmask)}, other=0.0)")

    def loads(nodes, suffix, row, tmask, prefetched=False):
        lines = []
        for i in nodes:
            n = ir.node(i)
            if n.op == "input":
                src = f"nx{i}" if prefetched else load_input(i, row, tmask)
                lines.append(f"v{i}{suffix} = {src}.to(tl.float32)  # input {n.args[0]} {list(kinds[i])}")
            elif n.op == "weight":
                lines.append(f"v{i}{suffix} = w_{n.args[0]}_tile")
            elif n.op == "option":
                lines.append(f"v{i}{suffix} = opt_{n.args[0]}")
        return lines

    def emitter(suffix="", tmask="mt"):
        return Emitter(ir, kinds, tiles.axes, {"T": tmask, "D": "md", "N": "mn"}, suffix)

    def expr_block(nodes, suffix, row, tmask, prefetched=False):
        em = emitter(suffix, tmask)
        return loads(nodes, suffix, row, tmask, prefetched) + em.forward(nodes), em

    def v(i, suffix=""):
        n = ir.node(i)
        return repr(float(n.args[0])) if n.op == "const" else f"v{i}{suffix}"

    def last_row(x):   # the state after the block's last row, as a [1, BD(, BN)] tile
        return f"tl.sum(tl.where(rows == BT - 1, {x}, 0.0), axis=0, keep_dims=True)"

    state_at = {name: tiles.offset(no_time, lead) for name, lead in
                (("seq", "i_n"), ("chunk", "c0 + i_t"))}
    state_mask = tiles.mask(no_time)
    sig_in = ", ".join(f"in_{x}" for x in inputs)
    sig_w = ", ".join(f"w_{x}" for x in weights)
    sig_o = ", ".join(f"opt_{x}" for x in options)
    common = ", ".join(p for p in (sig_in, sig_w, sig_o) if p)
    w_tiles = [f"w_{x}_tile = tl.load(w_{x} + {tiles.offset(kind_of_arg[x], None)}, "
               f"mask={tiles.mask(kind_of_arg[x])}, other=0.0).to(tl.float32)  # {list(kind_of_arg[x])}"
               for x in weights if x in kind_of_arg]
    head = [
        "i_c, i_nh = tl.program_id(0), tl.program_id(1)",
        "i_n, i_h = i_nh // H, i_nh % H",
        "if IS_VARLEN:",
        "    bos = tl.load(cu_seqlens + i_n).to(tl.int64)",
        "    L = tl.load(cu_seqlens + i_n + 1).to(tl.int64) - bos",
        "    c0 = tl.load(chunk_offsets + i_n).to(tl.int64)",
        "else:",
        "    bos = i_n.to(tl.int64) * T",
        "    L = T",
        "    c0 = i_n.to(tl.int64) * tl.cdiv(T, BT)",
        "o_d = i_c * BD + tl.arange(0, BD)",
        f"od, md = o_d{tiles.expand('D')}, (o_d < D){tiles.expand('D')}",
        *([f"on = tl.arange(0, BN){tiles.expand('N')}", "mn = on < N"] if matrix else []),
        f"rows = tl.arange(0, BT){tiles.expand('T')}",
    ] + w_tiles

    # ---- forward ------------------------------------------------------------------------------
    fwd_gate, _ = expr_block(gate_nodes, "", "bos + ot", "mt", prefetched=True)
    read_only = [i for i in read_nodes if i not in gate_nodes or ir.node(i).op == "state"]
    fwd_read_loads = loads([i for i in read_only if ir.node(i).op == "input"], "", "", "", prefetched=True)
    fwd_read = [l for l in expr_block(read_only, "", "bos + ot", "mt", prefetched=True)[0] if l not in fwd_read_loads]
    fwd_inputs = [i for i in dict.fromkeys(gate_nodes + read_nodes) if ir.node(i).op == "input"]

    def prefetch(row0: str) -> list[str]:
        # the next block's inputs are requested before this block is scanned, so the loads overlap the scan
        return [f"nx{i} = {load_input(i, f'bos + {row0} + rows', f'(({row0} + rows) < L)')}" for i in fwd_inputs]
    fwd = head + [
        f"h = tl.zeros({tiles.shape(no_time)}, dtype=tl.float32)",
        "if USE_H0:",
        f"    h = tl.load(h0 + {state_at['seq']}, mask={state_mask}, other=0.0).to(tl.float32)",
        *prefetch("0"),
        "for i_t in range(0, tl.cdiv(L, BT)):",
        "    if STORE_HC:",
        f"        tl.store(hc + {state_at['chunk']}, h, mask={state_mask})",
        "    ot = i_t * BT + rows",
        "    mt = ot < L",
        f"    m = {tiles.mask(state_kind)}",
        f"    # a_t (IR %{a_id}, the diag of the transition) and b_t (IR %{write}, the write)",
        *["    " + l for l in fwd_gate],
        *["    " + l for l in fwd_read_loads],
        *["    " + l for l in prefetch("(i_t + 1) * BT")],
        f"    a = tl.where(m, {v(a_id)}, 1.0)",
        f"    b = tl.where(m, {v(write)}, 0.0)",
        "    A, Bs = tl.associative_scan((a, b), 0, _combine)",
        "    hs = Bs + A * h",
        f"    # readout (IR %{out_id})",
        *[f"    v{s} = hs" for s in state_ids],
        *["    " + l for l in fwd_read],
        f"    tl.store(out + {tiles.offset(out_kind, 'bos + ot')}, ({v(out_id)} + tl.zeros({tiles.shape(out_kind)}, "
        f"dtype=tl.float32)).to(out.dtype.element_ty), mask={tiles.mask(out_kind)})",
        f"    h = {last_row('hs')}",
        "if STORE_HT:",
        f"    tl.store(ht + {state_at['seq']}, h, mask={state_mask})",
    ]

    # ---- backward ---------------------------------------------------------------------------------
    cur_gate, em_gate = expr_block(gate_nodes, "", "bos + ot", "mt")
    prv_gate, _ = expr_block(gate_nodes, "_p", "bos + ot - 1", "mt_p")
    nxt_gate, _ = expr_block(_topo(ir, [a_id]), "_n", "bos + ot + 1", "mt_n")
    cur_read, em_read = expr_block(read_only, "", "bos + ot", "mt")
    read_bw, read_leaves = em_read.backward(read_nodes, {out_id: "dy"})
    gate_bw, gate_leaves = em_gate.backward(gate_nodes, {a_id: "da", write: "db"})
    # separate gradient names per pass: readout grads get an "r" prefix
    read_bw = [_rename(l, "g", "gr") for l in read_bw]
    read_leaves = {i: _rename(g, "g", "gr") for i, g in read_leaves.items()}
    dh_direct = " + ".join(read_leaves[s] for s in state_ids) if state_ids else "0.0"
    grad_store, partial_inputs = [], []
    for i in sorted(set(read_leaves) | set(gate_leaves)):
        n, k = ir.node(i), kinds[i]
        total = " + ".join(d[i] for d in (read_leaves, gate_leaves) if i in d)
        value = f"({total} + tl.zeros({tiles.shape(k)}, dtype=tl.float32))"
        if n.op == "input" and "D" in k:
            grad_store.append(f"tl.store(d_{n.args[0]} + {tiles.offset(k, 'bos + ot')}, "
                              f"{value}.to(d_{n.args[0]}.dtype.element_ty), mask={tiles.mask(k)})")
        elif n.op == "input":   # one partial sum per D block, added up on the host
            partial_inputs.append(n.args[0])
            grad_store.append(f"tl.store(d_{n.args[0]} + i_c.to(tl.int64) * NTOK * H * N + "
                              f"{tiles.offset(k, 'bos + ot')}, {value}, mask={tiles.mask(k)})")
        elif n.op == "weight":
            grad_store.append(f"dw_{n.args[0]}_acc += {total}")
    w_store = []
    for x in (w for w in weights if w in kind_of_arg):
        k = kind_of_arg[x]
        # a weight's gradient per sequence (and per D block when it does not vary along D)
        row = "i_n" if "D" in k else "i_n * tl.num_programs(0) + i_c"
        w_store.append(f"tl.store(dw_{x} + {tiles.offset(k, row)}, dw_{x}_acc, mask={tiles.mask(k)})")
    if backward == "exclusive":
        # one scan per direction that also keeps each row's exclusive prefix: inputs read once per row
        state_pass = [
            *["    " + l for l in cur_gate],
            f"    a = tl.where(m, {v(a_id)}, 1.0)",
            f"    b = tl.where(m, {v(write)}, 0.0)",
            "    # h_t and h_{t-1} from one scan",
            "    A, Bs, P, Q = tl.associative_scan((a, b, one, zero), 0, _combine_excl)",
            "    hs = Bs + A * h_start",
            "    h_prev = Q + P * h_start",
        ]
        grad_pass = [
            "    # dh_t = d_t + e_{t+1} with e_t = a_t dh_t = a_t (d_t + e_{t+1}): a reverse scan of g -> a_t (g + d_t)",
            "    # whose exclusive suffix gives e_{t+1} without reading a_{t+1} (rows past L: a = 1, d = 0)",
            "    Ar, Br, Pr, Qr = tl.associative_scan((a, a * d, one, zero), 0, _combine_excl, reverse=True)",
            "    dh_t = d + Qr + Pr * carry",
        ]
        carry_out = "    carry = tl.sum(tl.where(rows == 0, Br + Ar * carry, 0.0), axis=0, keep_dims=True)"
        carry_doc, dh0 = "a_t dL/dh_t", "carry"
    else:
        # h_{t-1} and a_{t+1} re-read from the neighbouring rows: fewer live values per scan
        state_pass = [
            "    mt_p, mt_n = (ot >= 1) & (ot < L), ot + 1 < L",
            f"    m_p = {tiles.mask(state_kind, 'mt_p')}",
            f"    m_n = {tiles.mask(state_kind, 'mt_n')}",
            "    # h_{t-1}: an inclusive scan of the previous row's (a, b), the chunk's first row as the identity",
            *["    " + l for l in prv_gate],
            "    first = (rows == 0) | (m_p == 0)",
            f"    a_p = tl.where(first, 1.0, {v(a_id, '_p')})",
            f"    b_p = tl.where(first, 0.0, {v(write, '_p')})",
            "    Ap, Bp = tl.associative_scan((a_p, b_p), 0, _combine)",
            "    h_prev = Bp + Ap * h_start",
            *["    " + l for l in cur_gate],
            f"    a = tl.where(m, {v(a_id)}, 1.0)",
            f"    b = tl.where(m, {v(write)}, 0.0)",
            "    hs = a * h_prev + b",
        ]
        grad_pass = [
            "    # a_{t+1} for the reverse scan dh_t = d_t + a_{t+1} dh_{t+1}; rows from L - 1 on pass dh through",
            *["    " + l for l in nxt_gate],
            f"    c = tl.where(m_n, {v(a_id, '_n')}, 1.0)",
            "    Cr, Br = tl.associative_scan((c, d), 0, _combine, reverse=True)",
            "    dh_t = Br + Cr * carry",
        ]
        carry_out = ("    carry = tl.sum(tl.where(rows == 0, dh_t, 0.0), axis=0, keep_dims=True)\n"
                     "    a_first = tl.sum(tl.where(rows == 0, a, 0.0), axis=0, keep_dims=True)")
        carry_doc, dh0 = "dL/dh_t", "carry * a_first"
    bwd = head + [
        f"# carry: {carry_doc} at the next block's first row; past the sequence's end, the final state's gradient",
        f"carry = tl.zeros({tiles.shape(no_time)}, dtype=tl.float32)",
        "if USE_DHT:",
        f"    carry = tl.load(dht + {state_at['seq']}, mask={state_mask}, other=0.0).to(tl.float32)",
        *[f"dw_{x}_acc = tl.zeros({tiles.shape(kind_of_arg[x])}, dtype=tl.float32)" for x in weights if x in kind_of_arg],
        f"zero = tl.zeros({full}, dtype=tl.float32)",
        *([f"one = tl.full({full}, 1.0, tl.float32)"] if backward == "exclusive" else
          [f"a_first = tl.full({tiles.shape(no_time)}, 1.0, tl.float32)  # a_0 (1 for an empty sequence)"]),
        "NT = tl.cdiv(L, BT)",
        "for j in range(0, NT):",
        "    i_t = NT - 1 - j",
        f"    h_start = tl.load(hc + {state_at['chunk']}, mask={state_mask}, other=0.0)",
        "    ot = i_t * BT + rows",
        "    mt = ot < L",
        f"    m = {tiles.mask(state_kind)}",
        *state_pass,
        *[f"    v{s} = hs" for s in state_ids],
        *["    " + l for l in cur_read],
        f"    dy = tl.load(d_out + {tiles.offset(out_kind, 'bos + ot')}, mask={tiles.mask(out_kind)}, "
        "other=0.0).to(tl.float32)",
        "    # reverse mode through the readout",
        *["    " + l for l in read_bw],
        f"    d = tl.where(m, {dh_direct} + zero, 0.0)",
        *grad_pass,
        "    da = tl.where(m, dh_t * h_prev, 0.0)",
        "    db = tl.where(m, dh_t, 0.0)",
        "    # reverse mode through a_t and b_t",
        *["    " + l for l in gate_bw],
        *["    " + l for l in grad_store],
        *carry_out.split("\n"),
        "if USE_H0:",
        f"    tl.store(dh0 + {state_at['seq']}, {dh0}, mask={state_mask})",
        *w_store,
    ]
    d_in = ", ".join(f"d_{x}" for x in inputs)
    d_w = ", ".join(f"dw_{x}" for x in weights)
    bwd_sig = ", ".join(p for p in (common, "h0, hc, d_out, dht", d_in, d_w, "dh0") if p)
    consts = "T, NTOK, H, D, N, BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, IS_VARLEN: tl.constexpr"
    src = [
        f'"""Generated by recdsl for `{ir.name}` (IR hash {ir.hash()}): element-wise diagonal scan over a '
        f'{"matrix" if matrix else "vector"} state."""',
        "import triton",
        "import triton.language as tl",
        "",
        "INPUTS = " + repr(inputs),
        "WEIGHTS = " + repr(weights),
        "OPTIONS = " + repr(options),
        "KINDS = " + repr(kind_of_arg) + "  # the axes each argument the kernels read varies along",
        "OUT_KIND = " + repr(out_kind),
        "PARTIAL_INPUTS = " + repr(partial_inputs) + "  # gradients summed over D blocks on the host",
        "",
        "",
        "@triton.jit",
        "def _combine(a1, b1, a2, b2):",
        "    # (a1, b1) then (a2, b2): h -> a2 * (a1 * h + b1) + b2",
        "    return a1 * a2, a2 * b1 + b2",
        "",
        "",
        "@triton.jit",
        "def _combine_excl(a1, b1, p1, q1, a2, b2, p2, q2):",
        "    # _combine, carrying (p, q): the segment without its last element",
        "    return a1 * a2, a2 * b1 + b2, a1 * p2, p2 * b1 + q2",
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
