"""Prototype: where the element-wise scan's look-back schedule loses time (hgrn, h_t = exp(g_t) h_{t-1} + x_t,
inputs [B, T, D] with T and D multiples of the blocks).

Hand-written kernels, timed beside the generated ones (`generated ...` rows: whatever scan.py emits at the
time of the run), fla's chunk_hgrn and a device copy of the same bytes:
  packed   each published value and its status in one 64-bit word (look_back.py took this form after
           this measurement), with window 0 (predecessors read one by one), K (K predecessors per read)
           or 1 (no look-back at all: a wrong result, timed as the bound the look-back leaves);
  bwd from the output
           the backward as one reverse scan, h_{t-1} read from the output (scan.py's "output" form).
Tiles are ordered by one atomic counter, by program ids (no look-back only: start order is not
guaranteed), or by a counter per chain (its place in the chain claimed in start order).
A persistent forward (programs taking tiles in start order, loading the next tile during the look-back)
is not here: Triton 3.6 rejects its loop-carried tiles (a layout pass fails).

    python benchmarks/proto_scan_look_back.py --out results.jsonl
"""
import argparse
import hashlib
import json

import torch
import triton
import triton.language as tl
from triton.testing import do_bench

from recdsl.backends.triton.cache import load_module
from recdsl.backends.triton.look_back import EMPTY, LOOK_BACK

# the generated modules' look-back device functions, as the kernels below call them
_LB = load_module("proto_look_back_" + hashlib.sha256(LOOK_BACK.encode()).hexdigest()[:16],
                  "import triton\nimport triton.language as tl\n" + LOOK_BACK)
_any, _word, _word_hi, _word_lo, _chain_link, _chain_close = (
    _LB._any, _LB._word, _LB._word_hi, _LB._word_lo, _LB._chain_link, _LB._chain_close)


@triton.jit
def _carry_in_window(agg_ws, inc_ws, slot, agg_a, agg_b, step, n_back, m, K: tl.constexpr):
    """look_back._chain_link, reading K predecessors at once: one round trip per K tiles instead of one per tile."""
    tl.store(agg_ws + slot, _word(agg_a, agg_b), mask=m)
    kk = tl.arange(0, K)[:, None] + 1                       # [K, 1]: 1..K tiles back from `base`
    acc_a = tl.full(agg_a.shape, 1.0, tl.float32)         # the windows before, nearest first
    acc_b = tl.zeros(agg_a.shape, dtype=tl.float32)
    carry = tl.zeros(agg_a.shape, dtype=tl.float32)
    base = tl.zeros(agg_a.shape, dtype=tl.int32)
    pending = m
    while _any(pending):
        back = base + kk                                      # [K, BD]
        look = pending & (back <= n_back)
        src = slot - back.to(tl.int64) * step
        inc = tl.load(inc_ws + src, mask=look, other=-1, volatile=True)
        agg = tl.load(agg_ws + src, mask=look, other=-1, volatile=True)
        found = look & (inc != -1)
        near = tl.min(tl.where(found, back, 1 << 30), axis=0, keep_dims=True)   # nearest inclusive value
        need = look & (back < near)
        missing = tl.max(tl.where(need & (agg == -1), 1, 0), axis=0, keep_dims=True) > 0
        # the window as one map, farthest tile first: rows past the inclusive value are the identity,
        # the inclusive row is the constant map h -> value
        wa = tl.where(need, _word_hi(agg), tl.where(back == near, 0.0, 1.0))
        wb = tl.where(need, _word_lo(agg), tl.where(back == near, _word_hi(inc), 0.0))
        Wa, Wb = tl.associative_scan((wa, wb), 0, _combine, reverse=True)
        ma = tl.sum(tl.where(kk == 1, Wa, 0.0), axis=0, keep_dims=True)
        mb = tl.sum(tl.where(kk == 1, Wb, 0.0), axis=0, keep_dims=True)
        advance = pending & (missing == 0)
        done = advance & (near < (1 << 30))
        carry = tl.where(done, acc_a * mb + acc_b, carry)
        acc_b = tl.where(advance, acc_a * mb + acc_b, acc_b)
        acc_a = tl.where(advance, acc_a * ma, acc_a)
        base = tl.where(advance, base + K, base)
        pending = pending & ~done
    return carry


@triton.jit
def _combine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _tile_coords(tile, B, NTS, NCB, BT: tl.constexpr, BD: tl.constexpr):
    i_c = tile % NCB
    r = tile // NCB
    return i_c, r % B, r // B


@triton.jit
def _tile(x, g, o, agg_ws, inc_ws, xv, gv, i_c, i_n, i_t, T, D, NTS, BT: tl.constexpr, BD: tl.constexpr,
          WINDOW: tl.constexpr = 0, AGG_ONLY: tl.constexpr = False):
    rows = tl.arange(0, BT)[:, None]
    od = i_c * BD + tl.arange(0, BD)[None, :]
    a = tl.exp(gv.to(tl.float32))
    b = xv.to(tl.float32)
    A, Bs = tl.associative_scan((a, b), 0, _combine)
    agg_a = tl.sum(tl.where(rows == BT - 1, A, 0.0), axis=0, keep_dims=True)
    agg_b = tl.sum(tl.where(rows == BT - 1, Bs, 0.0), axis=0, keep_dims=True)
    slot = (i_n * NTS + i_t).to(tl.int64) * D + od
    m = od < D
    h = tl.zeros([1, BD], dtype=tl.float32)
    if i_t > 0:
        if WINDOW == 0:
            h = _chain_link(agg_ws, inc_ws, slot, agg_a, agg_b, D, i_t, m)
        elif WINDOW > 1:
            h = _carry_in_window(agg_ws, inc_ws, slot, agg_a, agg_b, D, i_t, m, WINDOW)
        # WINDOW == 1: no look-back at all (a wrong result, timed to bound the look-back's cost)
    # AGG_ONLY (a test): only the first tiles publish carries, so look-backs compose every aggregate
    tl.store(inc_ws + slot, _word(agg_b + agg_a * h, tl.zeros([1, BD], dtype=tl.float32)), mask=m & (((od * 0 + i_t) == 0) | (not AGG_ONLY)))
    hs = Bs + A * h
    first = (i_n.to(tl.int64) * T + i_t * BT) * D
    tl.store(o + first + rows * D + od, hs.to(o.dtype.element_ty))


@triton.jit
def scan_packed(x, g, o, agg_ws, inc_ws, counter, B, T, D, NTS, NCB, BT: tl.constexpr, BD: tl.constexpr,
                WINDOW: tl.constexpr, AGG_ONLY: tl.constexpr = False, CLAIM: tl.constexpr = 0):
    # CLAIM 0: one counter orders all tiles; 1: program ids (no atomics; start order not guaranteed, timed
    # only as a bound); 2: one counter per chain (sequence, channel block), each tile's chain fixed by its
    # program id and its place in the chain claimed in start order
    if CLAIM == 0:
        i_c, i_n, i_t = _tile_coords(tl.atomic_add(counter, 1), B, NTS, NCB, BT, BD)
    elif CLAIM == 1:
        i_c, i_n, i_t = _tile_coords(tl.program_id(0), B, NTS, NCB, BT, BD)
    else:
        i_c, i_n, _ = _tile_coords(tl.program_id(0), B, NTS, NCB, BT, BD)
        i_t = tl.atomic_add(counter + i_n * NCB + i_c, 1)
    rows = tl.arange(0, BT)[:, None]
    od = i_c * BD + tl.arange(0, BD)[None, :]
    first = (i_n.to(tl.int64) * T + i_t * BT) * D
    xv = tl.load(x + first + rows * D + od)
    gv = tl.load(g + first + rows * D + od)
    _tile(x, g, o, agg_ws, inc_ws, xv, gv, i_c, i_n, i_t, T, D, NTS, BT, BD, WINDOW, AGG_ONLY)


@triton.jit
def _bwd_tile(g, o, do, dx, dg, agg_ws, inc_ws, i_c, i_n, i_t, T, D, NTS, BT: tl.constexpr, BD: tl.constexpr):
    # dh_t = do_t + a_{t+1} dh_{t+1}; dx_t = dh_t; dg_t = dh_t a_t h_{t-1}, h_{t-1} read from the output
    rows = tl.arange(0, BT)[:, None]
    od = i_c * BD + tl.arange(0, BD)[None, :]
    first = (i_n.to(tl.int64) * T + i_t * BT) * D
    ot = i_t * BT + rows
    ptr = first + rows * D + od
    d = tl.load(do + ptr).to(tl.float32)
    a = tl.exp(tl.load(g + ptr).to(tl.float32))
    c = tl.exp(tl.load(g + ptr + D, mask=(ot + 1 < T) & (od < D), other=float("-inf")).to(tl.float32))
    h_prev = tl.load(o + ptr - D, mask=(ot >= 1) & (od < D), other=0.0).to(tl.float32)
    Cr, Br = tl.associative_scan((c, d), 0, _combine, reverse=True)
    agg_a = tl.sum(tl.where(rows == 0, Cr, 0.0), axis=0, keep_dims=True)
    agg_b = tl.sum(tl.where(rows == 0, Br, 0.0), axis=0, keep_dims=True)
    slot = (i_n * NTS + i_t).to(tl.int64) * D + od
    m = od < D
    carry = tl.zeros([1, BD], dtype=tl.float32)
    if i_t < NTS - 1:
        carry = _chain_link(agg_ws, inc_ws, slot, agg_a, agg_b, -D, NTS - 1 - i_t, m)
    tl.store(inc_ws + slot, _word(agg_b + agg_a * carry, tl.zeros([1, BD], dtype=tl.float32)), mask=m)
    dh = Br + Cr * carry
    tl.store(dx + ptr, dh.to(dx.dtype.element_ty))
    tl.store(dg + ptr, (dh * a * h_prev).to(dg.dtype.element_ty))


@triton.jit
def scan_bwd_persist(g, o, do, dx, dg, agg_ws, inc_ws, counter, B, T, D, NTS, NCB, N_TILES,
                     BT: tl.constexpr, BD: tl.constexpr, CLAIM: tl.constexpr = 0):
    if CLAIM == 2:   # one program per tile, its place in its chain claimed from the chain's counter
        i_c, i_n, _ = _tile_coords(tl.program_id(0), B, NTS, NCB, BT, BD)
        r_t = tl.atomic_add(counter + i_n * NCB + i_c, 1)
        _bwd_tile(g, o, do, dx, dg, agg_ws, inc_ws, i_c, i_n, NTS - 1 - r_t, T, D, NTS, BT, BD)
        return
    tile = tl.atomic_add(counter, 1)
    while tile < N_TILES:
        i_c, i_n, r_t = _tile_coords(tile, B, NTS, NCB, BT, BD)
        _bwd_tile(g, o, do, dx, dg, agg_ws, inc_ws, i_c, i_n, NTS - 1 - r_t, T, D, NTS, BT, BD)
        tile = tl.atomic_add(counter, 1)


def run_bwd(g, o, do, BT, BD, warps, resident, claim=0):
    B, T, D = g.shape
    NTS, NCB = T // BT, D // BD
    n_tiles = B * NTS * NCB
    dx, dg = torch.empty_like(g), torch.empty_like(g)
    ws = torch.full((2, B * NTS * D), EMPTY, dtype=torch.int64, device=g.device)
    counter = torch.zeros(B * NCB if claim == 2 else 1, dtype=torch.int32, device=g.device)
    n_sm = torch.cuda.get_device_properties(g.device).multi_processor_count
    grid = n_tiles if resident == 0 else min(n_tiles, n_sm * resident)
    scan_bwd_persist[(grid,)](g, o, do, dx, dg, ws[0], ws[1], counter, B, T, D, NTS, NCB, n_tiles,
                              BT=BT, BD=BD, CLAIM=claim, num_warps=warps)
    return dx, dg


def run_proto(kind, x, g, BT, BD, warps, resident, window=0, agg_only=False, claim=0):
    """The packed-word forward at these blocks; window: 0 the one-by-one look-back, K > 1 K predecessors
    per read, 1 no look-back at all (a wrong result, timed as a bound)."""
    B, T, D = x.shape
    NTS, NCB = T // BT, D // BD
    n_tiles = B * NTS * NCB
    o = torch.empty_like(x)
    ws = torch.full((2, B * NTS * D), EMPTY, dtype=torch.int64, device=x.device)
    counter = torch.zeros(B * NCB if claim == 2 else 1, dtype=torch.int32, device=x.device)
    scan_packed[(n_tiles,)](x, g, o, ws[0], ws[1], counter, B, T, D, NTS, NCB, BT=BT, BD=BD, WINDOW=window,
                            AGG_ONLY=agg_only, CLAIM=claim, num_warps=warps)
    return o


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    import recdsl
    from recdsl.backends.triton.launch import scan_op
    B, T, D = a.batch, a.length, a.width
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(B, T, D, device="cuda", generator=gen).bfloat16()
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, D, device="cuda", generator=gen)).bfloat16()
    want = recdsl.load("examples/hgrn.rec", D=D).op(x, g, backend="triton")
    want = want[0] if isinstance(want, tuple) else want
    do = torch.randn_like(x)
    xr, gr = x.float().requires_grad_(True), g.float().requires_grad_(True)
    o32 = recdsl.load("examples/hgrn.rec", D=D).op(xr, gr, backend="triton")
    o32 = o32[0] if isinstance(o32, tuple) else o32
    want_dx, want_dg = torch.autograd.grad(o32, [xr, gr], do.float())
    moved = 3 * x.numel() * x.element_size()
    src = torch.empty(moved // 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    bench = lambda f: do_bench(f, warmup=25, rep=100, return_mode="median")
    copy_ms = bench(lambda: dst.copy_(src))
    fill = torch.empty(2, B * (T // 32) * D, dtype=torch.int64, device="cuda")
    rows = [{"contestant": "device copy", "ms": copy_ms, "bytes": moved},
            {"contestant": "workspace fill (BT=32)", "ms": bench(lambda: fill.fill_(EMPTY))}]
    try:
        from fla.ops.hgrn import chunk_hgrn
        xs = [x.detach().requires_grad_(True), g.detach().requires_grad_(True)]

        def fla_fb():
            chunk_hgrn(*xs)[0].backward(do)
        rows.append({"contestant": "fla chunk_hgrn", "ms": bench(lambda: chunk_hgrn(x, g))})
        rows.append({"contestant": "fla chunk_hgrn", "mode": "fwd+bwd", "ms": bench(fla_fb)})
        print(rows[-2:], flush=True)
    except ImportError:
        pass
    spec = recdsl.load("examples/hgrn.rec", D=D)
    for sched, BT, BD, w in (("walk", 128, 16, 2), ("look_back", 32, 64, 2), ("look_back", 64, 32, 4)):
        op = scan_op(spec, BT, BD, w, "exclusive", sched)
        rows.append({"contestant": f"generated {sched}", "BT": BT, "BD": BD, "warps": w,
                     "ms": bench(lambda: op([x, g], [], [], None, None, False))})
        xs = [x.detach().requires_grad_(True), g.detach().requires_grad_(True)]

        def fb():
            out, _, _ = op(xs, [], [], None, None, False)
            out.backward(do.view_as(out))
        rows.append({"contestant": f"generated {sched}", "mode": "fwd+bwd", "BT": BT, "BD": BD, "warps": w,
                     "ms": bench(fb)})
        print(rows[-2:], flush=True)
    configs = [("packed", BT, BD, w, claim, win) for BT, BD, w in ((64, 32, 1), (32, 32, 1), (64, 32, 2))
               for claim, win in ((0, 0), (2, 0), (0, 1), (1, 1))]
    for kind, BT, BD, w, claim, win in configs:
        f = lambda: run_proto(kind, x, g, BT, BD, w, 0, win, claim=claim)
        try:
            err = ((f().float() - want.float()).norm() / want.float().norm()).item()
            ms = bench(f)
        except Exception as e:
            print(kind, BT, BD, w, claim, win, type(e).__name__, str(e)[-300:], flush=True)
            continue
        rows.append({"contestant": kind if win != 1 else "packed, no look-back (wrong result, a bound)", "BT": BT,
                     "BD": BD, "warps": w, "window": win, "claim": ("one counter", "program ids", "a counter per chain")[claim],
                     "ms": ms, "rel_err": err})
        print(rows[-1], f"{ms / copy_ms:.2f}x copy", flush=True)
    for BT, BD, w, r, claim in ((32, 64, 2, 0, 0), (32, 64, 2, 0, 2), (32, 32, 1, 0, 0), (32, 32, 1, 0, 2),
                                (64, 32, 2, 0, 2), (32, 64, 2, 4, 0)):
        f = lambda: run_bwd(g, want, do, BT, BD, w, r, claim)
        try:
            dx, dg = f()
            err = max(((dx.float() - want_dx).norm() / want_dx.norm()).item(),
                      ((dg.float() - want_dg).norm() / want_dg.norm()).item())
            ms = bench(f)
        except Exception as e:
            print("bwd", BT, BD, w, r, type(e).__name__, str(e)[:200], flush=True)
            continue
        rows.append({"contestant": "bwd from the output", "mode": "bwd", "BT": BT, "BD": BD, "warps": w,
                     "resident": r, "claim": ("one counter", "program ids", "a counter per chain")[claim], "ms": ms,
                     "rel_err": err})
        print(rows[-1], f"{ms / copy_ms:.2f}x copy of the forward's bytes", flush=True)
    env = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "B": B, "T": T, "D": D, "dtype": "bfloat16"}
    if a.out:
        with open(a.out, "a") as fh:
            for r in rows:
                fh.write(json.dumps({**env, **r}) + "\n")


if __name__ == "__main__":
    main()
