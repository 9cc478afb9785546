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

from .exprs import SUPPORTED, Emitter, exp_function
from .look_back import LOOK_BACK


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

    def address(self, ptr: str, kind: tuple, row0: str, rows: str = "rows") -> str:
        """Pointers to a tile of this kind over token rows row0 + rows: the tile's first row as one 64-bit
        scalar added to the base pointer, the offsets within the tile in 32 bits (per-element 64-bit index
        arithmetic otherwise costs more instructions than the scan itself)."""
        first = f"(({row0}) * H + i_h)"
        within = []
        for a in ("D", "N"):
            if a in kind:
                first = f"{first} * {a}"
        step = "H" + "".join(f" * {a}" for a in ("D", "N") if a in kind)
        within.append(f"({rows}) * ({step})")
        if "D" in kind:
            within.append("od * N" if "N" in kind else "od")
        if "N" in kind:
            within.append("on")
        return f"({ptr} + {first}) + ({' + '.join(within)})"

    def mask(self, kind: tuple, time_mask: str = "mt") -> str:
        parts = [time_mask if a == "T" else f"m{a.lower()}" for a in self.axes if a in kind]
        return " & ".join(parts) if parts else "True"


BACKWARDS = ("exclusive", "shifted", "output")


def output_is_state(ir: IR) -> bool:
    """Whether the spec's readout is its state (o_t = h_t), so the output holds every h_{t-1} the backward needs."""
    return ir.node(ir.roots_with("output:")[0][1]).op == "state"


TILE_ROW0 = "bos + i_t * BT"   # the first token row of the block a kernel is on (its rows: ot = i_t * BT + rows)


def generate(ir: IR, spec_args, backward: str = "exclusive") -> str:
    """The Triton module text for this spec's forward and backward kernels. `backward` (a Plan choice):
    "exclusive" scans carry each row's exclusive prefix, so every input is read once per row;
    "shifted" re-reads the rows before and after instead, keeping half the values live per scan;
    "output" (where the readout is the state itself) reads h_{t-1} from the output the forward wrote, so the
    backward runs one reverse scan and the forward stores no chunk-start states."""
    if backward not in BACKWARDS:
        raise ValueError(f"backward must be one of {BACKWARDS}, got {backward!r}")
    kinds = node_kinds(ir)
    assert not isinstance(kinds, str), kinds
    if backward == "output" and not output_is_state(ir):
        raise ValueError(f"the 'output' backward needs a readout that is the state itself; {ir.name}'s is not")
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

    def load_input(i, row, tmask):   # row: (the first row, the rows within the tile)
        n = ir.node(i)
        return (f"tl.load({tiles.address(f'in_{n.args[0]}', kinds[i], *row)}, "
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
    coords = [
        "o_d = i_c * BD + tl.arange(0, BD)",
        f"od, md = o_d{tiles.expand('D')}, (o_d < D){tiles.expand('D')}",
        *([f"on = tl.arange(0, BN){tiles.expand('N')}", "mn = on < N"] if matrix else []),
        f"rows = tl.arange(0, BT){tiles.expand('T')}",
    ] + w_tiles
    walk_head = [
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
    ] + coords

    def tile_head(reverse: bool) -> list[str]:
        # tiles in program-id order: chunk after chunk (with equal lengths, every sequence's i-th chunk
        # together), heads and channel blocks within a chunk; the backward's chains start at the last chunk
        return [
            "NCB = tl.cdiv(D, BD)",
            "tile = tl.program_id(0)   # chunk-major, so a tile's predecessors have lower ids (look_back.py)",
            "i_c, r = tile % NCB, tile // NCB",
            "i_h, r = r % H, r // H",
            "if IS_VARLEN:",
            f"    g = {'NC - 1 - r' if reverse else 'r'}",
            "    i_n = tl.load(chunk_seq + g)",
            "    bos = tl.load(cu_seqlens + i_n).to(tl.int64)",
            "    L = tl.load(cu_seqlens + i_n + 1).to(tl.int64) - bos",
            "    c0i = tl.load(chunk_offsets + i_n)",
            "    NTS = tl.load(chunk_offsets + i_n + 1) - c0i   # tiles in this sequence (an empty one has one)",
            "    i_t = g - c0i",
            "    c0 = c0i.to(tl.int64)",
            "else:",
            "    NTS = tl.cdiv(T, BT)",
            "    i_n = r % (NC // NTS)",
            f"    i_t = {'NTS - 1 - r // (NC // NTS)' if reverse else 'r // (NC // NTS)'}",
            "    bos = i_n.to(tl.int64) * T",
            "    L = T",
            "    c0 = i_n.to(tl.int64) * NTS",
        ] + coords + [
            f"slot = {state_at['chunk']}  # this tile's chunk-state slot",
            f"sm = {state_mask}",
        ]

    def indent(lines):
        return ["    " + l for l in lines]

    def first_row(x):
        return f"tl.sum(tl.where(rows == 0, {x}, 0.0), axis=0, keep_dims=True)"

    # ---- forward ------------------------------------------------------------------------------
    fwd_gate, _ = expr_block(gate_nodes, "", (TILE_ROW0, "rows"), "mt", prefetched=True)
    read_only = [i for i in read_nodes if i not in gate_nodes or ir.node(i).op == "state"]
    read_inputs = [i for i in read_only if ir.node(i).op == "input"]
    fwd_read_loads = loads(read_inputs, "", "", "", prefetched=True)
    fwd_read = [l for l in expr_block(read_only, "", (TILE_ROW0, "rows"), "mt", prefetched=True)[0] if l not in fwd_read_loads]
    fwd_inputs = [i for i in dict.fromkeys(gate_nodes + read_nodes) if ir.node(i).op == "input"]
    cur_gate, em_gate = expr_block(gate_nodes, "", (TILE_ROW0, "rows"), "mt")

    def prefetch(row0: str) -> list[str]:
        # the next block's inputs are requested before this block is scanned, so the loads overlap the scan
        return [f"nx{i} = {load_input(i, (f'bos + {row0}', 'rows'), f'(({row0} + rows) < L)')}" for i in fwd_inputs]

    def scan_block(input_lines):
        return [
            "ot = i_t * BT + rows",
            "mt = ot < L",
            f"m = {tiles.mask(state_kind)}",
            f"# a_t (IR %{a_id}, the diag of the transition) and b_t (IR %{write}, the write)",
            *input_lines,
            f"a = tl.where(m, {v(a_id)}, 1.0)",
            f"b = tl.where(m, {v(write)}, 0.0)",
            "A, Bs = tl.associative_scan((a, b), 0, _combine)",
        ]
    fwd_finish = [
        "hs = Bs + A * h",
        f"# readout (IR %{out_id})",
        *[f"v{s} = hs" for s in state_ids],
        *fwd_read,
        f"tl.store({tiles.address('out', out_kind, TILE_ROW0)}, ({v(out_id)} + tl.zeros({tiles.shape(out_kind)}, "
        f"dtype=tl.float32)).to(out.dtype.element_ty), mask={tiles.mask(out_kind)})",
    ]
    h0_load = f"tl.load(h0 + {state_at['seq']}, mask={state_mask}, other=0.0).to(tl.float32)"
    fwd = walk_head + [
        f"h = tl.zeros({tiles.shape(no_time)}, dtype=tl.float32)",
        "if USE_H0:",
        f"    h = {h0_load}",
        *prefetch("0"),
        "for i_t in range(0, tl.cdiv(L, BT)):",
        "    if STORE_HC:",
        f"        tl.store(hc + {state_at['chunk']}, h, mask={state_mask})",
        *indent(scan_block(fwd_gate + fwd_read_loads + prefetch("(i_t + 1) * BT"))),
        *indent(fwd_finish),
        f"    h = {last_row('hs')}",
        "if STORE_HT:",
        f"    tl.store(ht + {state_at['seq']}, h, mask={state_mask})",
    ]
    fwd_tiles = tile_head(False) + [
        *scan_block(cur_gate + loads(read_inputs, "", (TILE_ROW0, "rows"), "mt")),
        f"agg_a, agg_b = {last_row('A')}, {last_row('Bs')}   # this tile as the map h -> agg_a * h + agg_b",
        f"h = tl.zeros({tiles.shape(no_time)}, dtype=tl.float32)",
        "if i_t > 0:   # the carry from the chunks before: decoupled look-back",
        "    h = _chain_link(words, slot, agg_a, agg_b, H * D * N, i_t, sm, stale, mark)",
        "elif USE_H0:",
        f"    h = {h0_load}",
        "_chain_close(words, slot, agg_b + agg_a * h, sm, mark)",
        "if STORE_HC:",
        "    tl.store(hc + slot, h, mask=sm)",
        *fwd_finish,
        "if STORE_HT:",
        "    if i_t == NTS - 1:",
        f"        tl.store(ht + {state_at['seq']}, agg_b + agg_a * h, mask={state_mask})",
    ]

    # ---- backward ---------------------------------------------------------------------------------
    prv_gate, _ = expr_block(gate_nodes, "_p", (TILE_ROW0, "rows - 1"), "mt_p")
    nxt_gate, _ = expr_block(_topo(ir, [a_id]), "_n", (TILE_ROW0, "rows + 1"), "mt_n")
    cur_read, em_read = expr_block(read_only, "", (TILE_ROW0, "rows"), "mt")
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
            grad_store.append(f"tl.store({tiles.address(f'd_{n.args[0]}', k, TILE_ROW0)}, "
                              f"{value}.to(d_{n.args[0]}.dtype.element_ty), mask={tiles.mask(k)})")
        elif n.op == "input":   # one partial sum per D block, added up on the host
            partial_inputs.append(n.args[0])
            block_ptr = f"d_{n.args[0]} + i_c.to(tl.int64) * NTOK * H * N"
            grad_store.append(f"tl.store({tiles.address(block_ptr, k, TILE_ROW0)}, {value}, mask={tiles.mask(k)})")
        elif n.op == "weight":
            grad_store.append(f"dw_{n.args[0]}_acc += {total}")

    def w_store(row: str) -> list[str]:
        # a weight's gradient per `row` (and per D block when it does not vary along D), summed on the host
        out = []
        for x in (w for w in weights if w in kind_of_arg):
            k = kind_of_arg[x]
            r = row if "D" in k else f"({row}) * tl.cdiv(D, BD) + i_c"
            out.append(f"tl.store(dw_{x} + {tiles.offset(k, r)}, dw_{x}_acc, mask={tiles.mask(k)})")
        return out

    if backward == "exclusive":
        # one scan per direction that also keeps each row's exclusive prefix: inputs read once per row
        state_pass = [
            *cur_gate,
            f"a = tl.where(m, {v(a_id)}, 1.0)",
            f"b = tl.where(m, {v(write)}, 0.0)",
            "# h_t and h_{t-1} from one scan",
            "A, Bs, P, Q = tl.associative_scan((a, b, one, zero), 0, _combine_excl)",
            "hs = Bs + A * h_start",
            "h_prev = Q + P * h_start",
        ]
        grad_scan = [
            "# dh_t = d_t + e_{t+1} with e_t = a_t dh_t = a_t (d_t + e_{t+1}): a reverse scan of g -> a_t (g + d_t)",
            "# whose exclusive suffix gives e_{t+1} without reading a_{t+1} (rows past L: a = 1, d = 0)",
            "Ar, Br, Pr, Qr = tl.associative_scan((a, a * d, one, zero), 0, _combine_excl, reverse=True)",
        ]
        dh_line, agg = "dh_t = d + Qr + Pr * carry", ("Ar", "Br")
        carry_doc, dh0 = "a_t dL/dh_t", "{0}"   # dL/dh0 from the carry out of the first row ({0}; {1}: a_0)
    else:
        # h_{t-1} and a_{t+1} from the neighbouring rows: fewer live values per scan
        if backward == "output":
            # the output at the row before (h0 at a sequence's first row), in the output's dtype
            prev = [f"h_prev = tl.load({tiles.address('out', state_kind, TILE_ROW0, 'rows - 1')}, mask=m_p, "
                    "other=0.0).to(tl.float32)",
                    "h_prev = tl.where(ot == 0, h_first, h_prev)"]
        else:
            prev = ["# h_{t-1}: an inclusive scan of the previous row's (a, b), the chunk's first row as the identity",
                    *prv_gate,
                    "first = (rows == 0) | (m_p == 0)",
                    f"a_p = tl.where(first, 1.0, {v(a_id, '_p')})",
                    f"b_p = tl.where(first, 0.0, {v(write, '_p')})",
                    "Ap, Bp = tl.associative_scan((a_p, b_p), 0, _combine)",
                    "h_prev = Bp + Ap * h_start"]
        state_pass = [
            "mt_p, mt_n = (ot >= 1) & (ot < L), ot + 1 < L",
            f"m_p = {tiles.mask(state_kind, 'mt_p')}",
            f"m_n = {tiles.mask(state_kind, 'mt_n')}",
            *prev,
            *cur_gate,
            f"a = tl.where(m, {v(a_id)}, 1.0)",
            f"b = tl.where(m, {v(write)}, 0.0)",
            "hs = a * h_prev + b",
        ]
        grad_scan = [
            "# a_{t+1} for the reverse scan dh_t = d_t + a_{t+1} dh_{t+1}; rows from L - 1 on pass dh through",
            *nxt_gate,
            f"c = tl.where(m_n, {v(a_id, '_n')}, 1.0)",
            "Cr, Br = tl.associative_scan((c, d), 0, _combine, reverse=True)",
        ]
        dh_line, agg = "dh_t = Br + Cr * carry", ("Cr", "Br")
        carry_doc, dh0 = "dL/dh_t", "{0} * {1}"
    bwd_block = [
        "ot = i_t * BT + rows",
        "mt = ot < L",
        f"m = {tiles.mask(state_kind)}",
        *state_pass,
        *[f"v{s} = hs" for s in state_ids],
        *cur_read,
        f"dy = tl.load({tiles.address('d_out', out_kind, TILE_ROW0)}, mask={tiles.mask(out_kind)}, "
        "other=0.0).to(tl.float32)",
        "# reverse mode through the readout",
        *read_bw,
        f"d = tl.where(m, {dh_direct} + zero, 0.0)",
        *grad_scan,
        f"agg_a, agg_b = {first_row(agg[0])}, {first_row(agg[1])}   # this tile as the map carry -> agg_a * carry + agg_b",
    ]
    bwd_finish = [
        dh_line,
        "da = tl.where(m, dh_t * h_prev, 0.0)",
        "db = tl.where(m, dh_t, 0.0)",
        "# reverse mode through a_t and b_t",
        *gate_bw,
        *grad_store,
    ]
    dht_load = f"tl.load(dht + {state_at['seq']}, mask={state_mask}, other=0.0).to(tl.float32)"
    # the output form's state before a sequence's first row (elsewhere h_(t-1) is the output)
    h_first_lines = ([f"h_first = tl.zeros({tiles.shape(no_time)}, dtype=tl.float32)", "if USE_H0:",
                     f"    h_first = {h0_load}"] if backward == "output" else [])
    bwd_init = [
        *h_first_lines,
        *[f"dw_{x}_acc = tl.zeros({tiles.shape(kind_of_arg[x])}, dtype=tl.float32)" for x in weights if x in kind_of_arg],
        f"zero = tl.zeros({full}, dtype=tl.float32)",
        *([f"one = tl.full({full}, 1.0, tl.float32)"] if backward == "exclusive" else []),
    ]
    bwd = walk_head + bwd_init + [
        f"# carry: {carry_doc} at the next block's first row; past the sequence's end, the final state's gradient",
        f"carry = tl.zeros({tiles.shape(no_time)}, dtype=tl.float32)",
        "if USE_DHT:",
        f"    carry = {dht_load}",
        "NT = tl.cdiv(L, BT)",
        "for j in range(0, NT):",
        "    i_t = NT - 1 - j",
        *([f"    h_start = tl.load(hc + {state_at['chunk']}, mask={state_mask}, other=0.0)"]
          if backward != "output" else []),
        *indent(bwd_block),
        *indent(bwd_finish),
        "    carry = agg_b + agg_a * carry",
        *(["    a_first = " + first_row("a")] if backward != "exclusive" else []),
        "if USE_H0:",
        f"    tl.store(dh0 + {state_at['seq']}, {dh0.format('carry', 'a_first')}, "
        f"mask={state_mask})",
        *w_store("i_n"),
    ]
    if backward != "exclusive":   # a_0 (1 for an empty sequence)
        bwd.insert(len(walk_head) + len(bwd_init), f"a_first = tl.full({tiles.shape(no_time)}, 1.0, tl.float32)")
    # The backward's tile never changes layout: it publishes from its own rows (stores masked to the first
    # row, which holds the aggregate and, once the carry is in, the inclusive value), and the carry, found
    # by the look-back in a [1, BD] layout of its own, reaches the tile's layout through memory (`bridge`,
    # a barrier between). Reducing the first row to [1, BD] instead made Triton move the scanned tiles and
    # the loaded inputs between layouts; on an H100 at B=4, T=4096, C=2048 the kernel took 0.237 ms that
    # way and 0.208 ms this way (benchmarks/results/2026-11-26zzm_h100_overhead_hgrn_*.jsonl). The
    # forward kept the reduction: 0.103 against 0.115 ms in the same runs.
    bwd_tiles = tile_head(True) + bwd_init + [
        *([f"h_start = tl.load(hc + slot, mask=sm, other=0.0)"] if backward != "output" else []),
        *bwd_block[:-1],
        f"first = (rows == 0) & sm   # ({agg[0]}, {agg[1]}) there: the tile as the map carry -> {agg[0]} carry + {agg[1]}",
        "at_first = slot + 0 * rows   # every row addresses the tile's slot; only the first stores",
        f"# carry: {carry_doc} at the next chunk's first row, from the chunks after it (decoupled look-back)",
        f"carry = tl.zeros({tiles.shape(no_time)}, dtype=tl.float32)",
        "if i_t < NTS - 1:",
        f"    tl.store(words + at_first, _agg_word({agg[0]}, {agg[1]}), mask=first)",
        "    carry = _chain_carry(words, slot, -(H * D * N), NTS - 1 - i_t, sm, stale, mark)",
        "elif USE_DHT:",
        f"    carry = {dht_load}",
        "tl.store(bridge + slot, carry, mask=sm)",
        "tl.debug_barrier()   # the carry, stored by the threads that found it, read by those holding the tile",
        "carry = tl.load(bridge + at_first, mask=sm, other=0.0)",
        f"closed = {agg[1]} + {agg[0]} * carry",
        "_chain_close(words, at_first, closed, first, mark)",
        *bwd_finish,
        "if USE_H0:",
        "    if i_t == 0:",
        f"        tl.store(dh0 + {state_at['seq']} + 0 * rows, {dh0.format('closed', 'a')}, mask=first)",
        *w_store("c0 + i_t"),
    ]
    d_in = ", ".join(f"d_{x}" for x in inputs)
    d_w = ", ".join(f"dw_{x}" for x in weights)
    bwd_sig = ", ".join(p for p in (common, "h0, hc, out, d_out, dht", d_in, d_w, "dh0") if p)
    consts = "T, NTOK, H, D, N, BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, IS_VARLEN: tl.constexpr"
    chain = "chunk_seq, words, stale, mark, NC"
    src = [
        f'"""Generated by recdsl for `{ir.name}` (IR hash {ir.hash()}): element-wise diagonal scan over a '
        f'{"matrix" if matrix else "vector"} state. scan_fwd/scan_bwd walk each sequence; the *_tiles kernels '
        'scan tiles in parallel, chained by a decoupled look-back."""',
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
        LOOK_BACK,
        "",
        exp_function(),
        "",
        "@triton.jit",
        f"def scan_fwd({common}, h0, out, ht, hc, cu_seqlens, chunk_offsets, {consts},",
        "             USE_H0: tl.constexpr, STORE_HT: tl.constexpr, STORE_HC: tl.constexpr):",
        *indent(fwd),
        "",
        "",
        "@triton.jit",
        f"def scan_bwd({bwd_sig}, cu_seqlens, chunk_offsets, {consts},",
        "             USE_H0: tl.constexpr, USE_DHT: tl.constexpr):",
        *indent(bwd),
        "",
        "",
        "@triton.jit",
        f"def scan_fwd_tiles({common}, h0, out, ht, hc, cu_seqlens, chunk_offsets, {chain}, {consts},",
        "                   USE_H0: tl.constexpr, STORE_HT: tl.constexpr, STORE_HC: tl.constexpr):",
        *indent(fwd_tiles),
        "",
        "",
        "@triton.jit",
        f"def scan_bwd_tiles({bwd_sig}, cu_seqlens, chunk_offsets, {chain}, bridge, {consts},",
        "                   USE_H0: tl.constexpr, USE_DHT: tl.constexpr):",
        *indent(bwd_tiles),
        "",
    ]
    return "\n".join(src)


def _rename(line: str, old: str, new: str) -> str:
    """Rename gradient variables g<id> to <new><id> (forward values v<id> are untouched)."""
    import re
    return re.sub(rf"\b{old}(\d+)", rf"{new}\1", line)
