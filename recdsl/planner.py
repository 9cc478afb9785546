"""The planner: which backend and algorithm runs a call, with which blocks, and why.

A Plan is frozen and hashable; `recdsl explain` prints it with the reason for each choice.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

BACKENDS = ("auto", "reference", "triton")


@dataclass(frozen=True)
class Plan:
    backend: str                       # reference | triton
    algorithm: str                     # sequential | fixed_point | elementwise_scan | chunk | delta_chunk |
                                       # fixed_point_scan | fixed_point_fused | fixed_point_one_launch |
                                       # fused_chunk | *_recurrent
    block_t: int = 0                   # tokens per block (scan chunk)
    block_d: int = 0                   # channels per program
    num_warps: int = 4
    store_chunk_states: bool = True    # forward keeps chunk-start states for the backward (vs recompute)
    reasons: tuple[str, ...] = ()
    scan_backward: str = ""            # element-wise scan: "exclusive" or "shifted" (backends/triton/scan.py)
    scan_schedule: str = ""            # element-wise scan: "walk" (a program per sequence walks the tokens)
                                       # or "look_back" (a program per tile, chained by a decoupled look-back)
    bwd_warps: int = 0                 # the backward kernel's warps where they differ from the forward's

    def text(self) -> str:
        head = f"backend {self.backend}, algorithm {self.algorithm}"
        if self.backend == "triton" and self.algorithm.endswith("recurrent") and self.block_t > 1:
            head += f", a chunkwise forward (BT={self.block_t}), one recurrent launch for the backward"
        elif self.backend == "triton" and self.algorithm.endswith("recurrent"):
            head += ", one launch over the tokens"
        elif self.backend == "triton" and self.algorithm == "fixed_point_scan":
            head += ", one scan launch per iteration"
        elif self.backend == "triton" and self.algorithm == "fixed_point_fused":
            head += ", one fused launch per iteration"
        elif self.backend == "triton" and self.algorithm == "fixed_point_one_launch":
            head += ", many iterations per launch"
        elif self.backend == "triton" and self.algorithm == "fused_chunk":
            head += f", BT={self.block_t}, one launch, no chunk states stored"
        elif self.backend == "triton":
            head += (f", BT={self.block_t}" + (f", BD={self.block_d}" if self.block_d else "") +
                     f", num_warps={self.num_warps}" + (f" (backward {self.bwd_warps})" if self.bwd_warps else ""))
            if self.scan_backward != "output":   # the output form keeps no chunk states: it reads the output
                head += f", {'store' if self.store_chunk_states else 'recompute'} chunk states"
            if self.scan_backward:
                head += f", {self.scan_backward} backward scans"
            if self.scan_schedule:
                head += f", {self.scan_schedule.replace('_', '-')} schedule"
        return head + "".join(f"\n  why: {r}" for r in self.reasons)


# the settings a plan reads from the environment, here and in what it calls (dplr.chunked_forward reads
# RECDSL_DPLR_FORWARD): every one of them is part of a kept plan's key
PLAN_ENV = ("RECDSL_FIXED_POINT", "RECDSL_CHUNK_INFERENCE", "RECDSL_DPLR_FORWARD", "RECDSL_SCAN_SCHEDULE",
            "RECDSL_SCAN_BLOCKS")
KEPT_PLANS = 256   # per spec: calls of many distinct shapes start over rather than grow without bound


def plan(spec, backend: str = "auto", batch_channels: int | None = None, on_cuda: bool | None = None,
         tokens: int | None = None, needs_grad: bool = True) -> Plan:
    """Choose how to run `spec`. `batch_channels` is sequences (B, or N packed ones) * channels of the
    call and `tokens` its T, when known; `needs_grad` whether the call records a backward. A spec keeps
    the plan of each call it has seen (same arguments, settings and device): building one took about a
    tenth of an element-wise scan call's host time."""
    key = (backend, batch_channels, on_cuda, tokens, needs_grad, _compiling(),
           tuple(os.environ.get(name) for name in PLAN_ENV), _sm_count() if on_cuda else None)
    kept = spec.memo.setdefault("plans", {})
    if key not in kept:
        if len(kept) >= KEPT_PLANS:
            kept.clear()
        kept[key] = _make_plan(spec, backend, batch_channels, on_cuda, tokens, needs_grad)
    return kept[key]


def _make_plan(spec, backend: str, batch_channels: int | None, on_cuda: bool | None, tokens: int | None,
               needs_grad: bool) -> Plan:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    ir = spec.ir
    if ir.solve:
        s = dict(ir.solve)
        why = (f"the spec reads prev(...): iterate until the relative change is below "
               f"{s['tol']:g} (at most {int(s['max_iter'])} iterations)",)
        reason = _fixed_point_reason(spec)
        if backend == "triton" and reason:
            raise ValueError(f"{spec.name}: no Triton kernel for this fixed point: {reason}; use backend='reference'")
        if backend == "triton" or (backend == "auto" and not reason and bool(on_cuda)):
            gradient = ("gradient: one more iteration at the fixed point, the previous iterate held constant "
                        "(Movahedi et al. 2025)",)
            size = math.prod(ir.state[1]) * (spec.heads or 1)
            sequences = None if batch_channels is None else batch_channels // size
            fused, why_not = _fixed_point_fused(spec, sequences)
            if fused == "one_launch":
                return Plan("triton", "fixed_point_one_launch", 0, 0, 4, False, why + (
                    (f"{FIXED_POINT_ENV}=one_launch: " if os.environ.get(FIXED_POINT_ENV) == "one_launch" else
                     f"{sequences} sequences, at least one per SM: ") +
                    "one program per sequence runs up to 32 iterations per launch, all of them on each block of "
                    "tokens before the next (the inputs read once for them, the carries on chip; "
                    "backends/triton/fp_one_launch.py)",
                    "on an H100 at the A5 task's shape (B=256, T=16, D=64, r=2, 24 iterations) the solve took "
                    "1.89 ms against 4.55 ms with one fused launch per iteration; with 8 sequences (B=8, T=2048, "
                    "D=512) 20.2 ms against 3.5 ms, so fewer sequences take the per-iteration launches",
                ) + gradient + ("the step's write is one token-parallel kernel with its own backward "
                                "(backends/triton/fp_fused_step.py)",))
            if fused:
                varying = spec.memo["fp_fused_pattern"].varying
                return Plan("triton", "fixed_point_fused", 0, 0, 4, False, why + (
                    "diag(a) transition and write g * (mix(householder products, x - prev(h)) + prev(h)): each "
                    "iteration is one generated launch that applies the reflections on chip, scans, and writes the "
                    "damped iterate, the residual and the next iteration's dot products (backends/triton/fp_fused.py)",
                    f"{_VARYING}: where the reflection vectors are [l2norm](u_in + W @ prev(h, shift = 1)), two "
                    "generated kernels give them with their norms, dot products and coefficients "
                    "(backends/triton/fp_reflections.py); other weight products of the iterate as addmm, narrow "
                    "ones as one Triton launch (backends/triton/fp_products.py); the rest in torch "
                    "(backends/triton/fp_shifted.py); a training call's step at the fixed point and its backward "
                    "replayed as CUDA graphs (backends/triton/fp_tail_graph.py)"
                    if varying else
                    "the reflections' coefficients (their Gram matrix) are set once per solve",
                    "the driver reads the residuals once per 4 launches (RECDSL_FP_PER_CALL): 3.6 ms against "
                    "4.3 ms one by one for the solve below",
                    "measured faster than the unfused path on an H100 (B=8, T=2048, D=512, r=2, 17 iterations, "
                    "fp32, one process: " + ("with the authors' dependence, benchmarks/specs/fp_rnn_mixer_hdep.rec, "
                                             "6.5 ms (3xTF32 products) against 22.4 ms" if varying
                                             else "3.6 ms against 11.4 ms") +
                    f"); {FIXED_POINT_ENV}=unfused runs that instead",
                ) + gradient + ("the step's write is one token-parallel kernel with its own backward "
                                "(backends/triton/fp_fused_step.py)",
                                "calls without a gradient close with fused iterations too",))
            return Plan("triton", "fixed_point_scan", 0, 0, 4, False, why + (
                "each iteration: the write from the previous iterate in PyTorch (the mixer), then one generated "
                "element-wise scan launch (the unfused path)",
                *_matrix_scan_operands(spec),
                f"fused iteration: {why_not}",
            ) + gradient)
        return Plan("reference", "fixed_point", reasons=why + ((f"Triton: {reason}",) if reason else ()))
    algorithm, reason = triton_route(spec)
    if algorithm == "blockdiag_recurrent" and _compiling():
        reason = "torch.compile traces the reference loop for block-diagonal states (the kernel is eager-only)"
    if algorithm == "dplr_recurrent" and _compiling():
        reason = "torch.compile traces the reference loop for diagonal-plus-low-rank states (the kernel is eager-only)"
    if algorithm == "delta_recurrent" and needs_grad and _delta_chunk_reason(spec) and _compiling():
        reason = "torch.compile traces the reference loop for this gate's training route (the DPLR kernels are eager-only)"
    if backend == "triton" and reason:
        raise ValueError(f"{spec.name}: the Triton backend cannot run this spec yet: {reason}")
    use_triton = backend == "triton" or (backend == "auto" and not reason and bool(on_cuda))
    if not use_triton:
        why = ([] if on_cuda or backend == "reference" else ["inputs are not on a CUDA device"]) + \
            ([f"Triton: {reason}"] if reason else [])
        return Plan("reference", "sequential", reasons=tuple(why) + ("the reference loop handles every family",))
    if algorithm == "chunk":
        if tokens is not None and tokens <= RECURRENT_MAX_T and not needs_grad:
            return _recurrent_plan(spec, tokens)
        fused_reason = _fused_chunk_reason(spec, batch_channels)   # also said in a training call's plan
        if not needs_grad and fused_reason is None:
            return _fused_chunk_plan(spec)
        return _chunk_plan(spec, fused_reason)
    if algorithm == "delta_recurrent":
        n_h = spec.memo["delta_pattern"].n_h
        short = tokens is not None and tokens * n_h <= DELTA_RECURRENT_MAX_STEPS and not needs_grad \
            and not _compiling()
        if _delta_chunk_reason(spec):
            return _delta_dplr_plan(spec) if needs_grad else _delta_plan(spec, tokens)
        return _delta_plan(spec, tokens) if short else _delta_chunk_plan(spec)
    if algorithm == "dplr_recurrent":
        return _dplr_plan(spec, tokens)
    if algorithm == "blockdiag_recurrent":
        NB, b = spec.ir.state[1]
        return Plan("triton", "blockdiag_recurrent", 1, 0, 4, False, (
            f"{NB} dense {b} x {b} blocks per token: one fused recurrent launch, the state in fp32 registers, "
            "one small matrix-vector product per block and token",
            "the readout is the state, so the forward's output holds every h_t and the backward reads "
            "h_(t-1) from it (nothing recomputed, nothing extra stored)",
        ))
    return _scan_plan(spec, batch_channels, tokens)


def _matrix_scan_operands(spec) -> tuple[str, ...]:
    """For a matrix state's fixed point: what its per-iteration scan takes (fixed_point_matrix.py)."""
    ir = spec.ir
    if len(ir.state[1]) != 2:
        return ()
    from recdsl.backends.triton.fixed_point_matrix import decay_factors, readout_product, write_factors
    decay, write = decay_factors(ir, ir.operands(ir.root("transition"))[0]), write_factors(ir, ir.root("write"))
    formed = [f"the {what} from {form}'s factors" for what, form, f in
              (("decay", "exp(s * M)", decay), ("write", "outer(p, q)", write)) if f]
    whole = [what for what, f in (("decay", decay), ("write", write)) if not f]
    reasons = ([f"the scan forms {' and '.join(formed)} in registers"] if formed else []) + \
        ([f"the {whole[0]} passes to the scan as a [B, T, D, N] tensor" if len(whole) == 1 else
          "the decay and the write pass to the scan as [B, T, D, N] tensors"] if whole else [])
    if readout_product(ir) != ir.roots_with("output:")[0][1]:
        reasons.append("the rest of the readout around H @ c in PyTorch after each scan")
    return tuple(reasons)


def _fixed_point_reason(spec) -> str | None:
    """Why no Triton path runs this fixed point (a vector state's, or a matrix state's iterated readout)."""
    try:
        from recdsl.backends.triton.fixed_point import eligible
        from recdsl.backends.triton.fixed_point_matrix import eligible as eligible_matrix
    except ImportError:   # triton is an optional dependency
        return "triton is not installed"
    vector, matrix = eligible(spec.ir), eligible_matrix(spec.ir)
    return None if vector is None or matrix is None else f"{vector}; as a matrix state: {matrix}"


FIXED_POINT_ENV = "RECDSL_FIXED_POINT"
FIXED_POINT_MODES = ("auto", "fused", "unfused", "one_launch")


_VARYING = ("operands read prev(h, shift = 1), so they are evaluated again between iterations (one launch "
            "per iteration)")

ONE_LAUNCH_MIN_SEQUENCES = 132   # one program per sequence: at least one per SM of an H100


def _fixed_point_fused(spec, sequences: int | None = None) -> tuple[bool | str, str]:
    """(whether the fused iteration runs the fixed point, why not): wherever the spec fits it, unless
    RECDSL_FIXED_POINT=unfused; =fused insists (an error where the spec does not fit it); =one_launch
    asks for many iterations per launch ("one_launch" instead of True), which auto takes for calls of at
    least ONE_LAUNCH_MIN_SEQUENCES sequences whose state fits it."""
    mode = os.environ.get(FIXED_POINT_ENV, "auto") or "auto"
    if mode not in FIXED_POINT_MODES:
        raise ValueError(f"{FIXED_POINT_ENV}={mode!r}: expected one of {FIXED_POINT_MODES}")
    if "fp_fused_pattern" not in spec.memo:
        from recdsl.backends.triton.fp_fused import match
        spec.memo["fp_fused_pattern"] = match(spec.ir)
    pattern = spec.memo["fp_fused_pattern"]
    if isinstance(pattern, str):
        if mode in ("fused", "one_launch"):
            raise ValueError(f"{spec.name}: {FIXED_POINT_ENV}={mode}, but the spec does not fit the fused "
                             f"iteration: {pattern}")
        return False, pattern
    if mode == "unfused":
        return False, f"{FIXED_POINT_ENV}=unfused"
    if mode == "one_launch":
        from recdsl.backends.triton.fp_one_launch import fits
        reason = fits(spec.ir.state[1][0]) or (pattern.varying and _VARYING)
        if reason:
            raise ValueError(f"{spec.name}: {FIXED_POINT_ENV}=one_launch, but {reason}")
        return "one_launch", ""
    if mode == "auto" and sequences is not None and sequences >= ONE_LAUNCH_MIN_SEQUENCES and not pattern.varying:
        from recdsl.backends.triton.fp_one_launch import fits
        if fits(spec.ir.state[1][0]) is None:
            return "one_launch", ""
    return True, ""


def _compiling() -> bool:
    import torch
    return torch.compiler.is_compiling()


def triton_route(spec) -> tuple[str | None, str | None]:
    """(algorithm, None) when a generated kernel family fits the spec, else (None, the reasons)."""
    if "triton_route" not in spec.memo:
        try:
            from recdsl.backends.triton.blockdiag import BlockDiagPattern, match as match_blockdiag
            from recdsl.backends.triton.delta import DeltaPattern, match as match_delta
            from recdsl.backends.triton.dplr import DplrPattern, match as match_dplr
            from recdsl.backends.triton.matrix import MatrixPattern, match
            from recdsl.backends.triton.scan import eligible
        except ImportError:  # triton is an optional dependency
            spec.memo["triton_route"] = (None, "triton is not installed")
            return spec.memo["triton_route"]
        scan_reason = eligible(spec.ir)
        pattern = match(spec.ir, spec.analysis.eig_range.lo)
        delta = match_delta(spec.ir)
        blockdiag = match_blockdiag(spec.ir)
        dplr = match_dplr(spec.ir)
        if scan_reason is None:
            spec.memo["triton_route"] = ("elementwise_scan", None)
        elif isinstance(pattern, MatrixPattern):
            spec.memo["triton_route"] = ("chunk", None)
            spec.memo["matrix_pattern"] = pattern
        elif isinstance(delta, DeltaPattern):
            spec.memo["triton_route"] = ("delta_recurrent", None)
            spec.memo["delta_pattern"] = delta
        elif isinstance(blockdiag, BlockDiagPattern):
            spec.memo["triton_route"] = ("blockdiag_recurrent", None)
            spec.memo["blockdiag_pattern"] = blockdiag
        elif isinstance(dplr, DplrPattern):
            spec.memo["triton_route"] = ("dplr_recurrent", None)
            spec.memo["dplr_pattern"] = dplr
        else:
            spec.memo["triton_route"] = (None, f"element-wise scan: {scan_reason}; chunked: {pattern}; "
                                               f"Householder product: {delta}; block diagonal: {blockdiag}; "
                                               f"diagonal plus low rank: {dplr}")
    return spec.memo["triton_route"]


def _chunk_plan(spec, why_not_fused: str | None = None) -> Plan:
    p = spec.memo["matrix_pattern"]
    return Plan("triton", "chunk", 64, 0, 4, True, _chunk_reasons(p) + (
        "chunk states are stored by the forward for the backward",
        f"calls of at most {RECURRENT_MAX_T} tokens that need no gradient take one fused recurrent launch instead",
    ) + ((f"longer calls without a gradient keep these two launches: {why_not_fused}",) if why_not_fused else (
        "longer calls without a gradient take one launch that keeps the state in registers (fused chunk) when "
        "their sequences x heads x value blocks fill the SMs",)))


def _chunk_reasons(p) -> tuple[str, ...]:
    gate = {"none": "no decay", "scalar": "a scalar decay per head", "perkey": "a per-key decay"}[p.decay]
    return (
        f"matrix state with {gate}: S_t = diag(a_t) S_(t-1) + k v^T, the chunkwise form with tl.dot",
        "chunks of 64 tokens: intra-chunk masked products, inter-chunk state passing in fp32",
        "decays in log space" + (", carried as (log|a|, sign) because the analysis allows a_t < 0"
                                 if p.signed else ""),
    )


FUSED_CHUNK_MAX_K = 128      # chunk_fwd_fused holds [BT, K] queries and keys and a [K, BV] state in registers
INFERENCE_ENV = "RECDSL_CHUNK_INFERENCE"


def _fused_chunk_reason(spec, batch_channels: int | None) -> str | None:
    """None when a call without a gradient may take the one-launch chunked forward, else why not."""
    p = spec.memo["matrix_pattern"]
    K, V = spec.ir.state[1]
    forced = os.environ.get(INFERENCE_ENV)
    if forced not in (None, "", "chunk", "fused"):
        raise ValueError(f"{INFERENCE_ENV}={forced!r}: expected 'chunk' or 'fused'")
    if p.decay == "perkey":
        return ("the per-key decay's exact intra-chunk split over every key at once spills registers "
                "(sm_90, K = 128; 3.0 ms against 0.79 ms on an H100 at (4, 4096, 16, 128)): its key blocks "
                "go through the chunk states instead")
    if forced == "chunk":
        return f"{INFERENCE_ENV}=chunk"
    if forced == "fused":
        return None
    if _compiling():
        return "torch.compile traces the chunked custom op (the fused forward is eager-only)"
    if K > FUSED_CHUNK_MAX_K:
        return f"K = {K} > {FUSED_CHUNK_MAX_K}: every key of the state must fit in registers"
    if batch_channels is not None:
        from recdsl.backends.triton.chunk_launch import configs
        BV = configs(p.decay, K, V, 64)["chunk_fwd_fused"][1]
        programs = batch_channels // (K * V) * -(-V // BV)
        sms = _sm_count()
        if programs < sms:
            # measured on an H100 at (8, 1024, 8, 64), bf16: 128 programs took 0.039 ms against the two
            # launches' 0.034 ms; at (4, 4096, 16, 128) 256 took 0.211 against 0.275 ms
            # (benchmarks/results/2026-11-26zw_h100_sweep_fused_mamba2*.jsonl)
            return (f"one launch would run only {programs} programs (sequences x heads x value blocks of {BV}) "
                    f"for {sms} SMs")
    return None


def _sm_count() -> int:
    """Streaming multiprocessors of the current CUDA device (an H100's 132 without one)."""
    try:
        import torch
        if torch.cuda.is_available():
            return _sms(torch.cuda.current_device())
    except (ImportError, RuntimeError):
        pass
    return 132


@functools.lru_cache(maxsize=None)
def _sms(device: int) -> int:
    """A device's SM count, asked of torch once per device: every call's plan key reads it."""
    import torch
    return torch.cuda.get_device_properties(device).multi_processor_count


def _fused_chunk_plan(spec) -> Plan:
    return Plan("triton", "fused_chunk", 64, 0, 4, False, _chunk_reasons(spec.memo["matrix_pattern"]) + (
        "no gradient is needed, so no chunk states are kept: one launch walks each sequence's chunks per value "
        "block with the [K, BV] state in fp32 registers, reading q and k once per value block, v once and "
        "writing o once",
        "calls that record a backward take the two chunked launches and store chunk states",
    ))


RECURRENT_MAX_T = 64   # the chunk size: below it a chunk is mostly padding
# The delta rule's fused recurrent kernel walks tokens * n_h reflections one after another; the chunked
# WY kernels cost about 0.07-0.09 ms at any short length (five launches). On an H100 (16 heads, K = V = 128,
# bf16, batch 1 and 8; benchmarks/results/2026-11-26z_h100_delta_short.jsonl) the walk wins up to about
# 64 steps: n_h = 1 to 64 tokens, n_h = 2 to 32, n_h = 3 to 16-32, and loses beyond.
DELTA_RECURRENT_MAX_STEPS = 64


def _recurrent_plan(spec, tokens: int) -> Plan:
    return Plan("triton", "recurrent", 1, 0, 4, False, (
        f"{tokens} token(s) and no gradient (decoding, step(), short inference calls): one fused recurrent "
        "launch walks the tokens with the state in fp32 registers",
        f"up to {RECURRENT_MAX_T} tokens; longer calls or calls that need a backward take the chunked kernels",
    ))


def _delta_chunk_reason(spec) -> str | None:
    """Why the chunked WY kernels cannot run a delta-family spec (memoised), or None."""
    if "delta_chunk_reason" not in spec.memo:
        from recdsl.backends.triton.delta import chunk_reason
        spec.memo["delta_chunk_reason"] = chunk_reason(spec.ir, spec.memo["delta_pattern"])
    return spec.memo["delta_chunk_reason"]


def _delta_what(spec) -> str:
    p = spec.memo["delta_pattern"]
    gate = {"none": "no gate", "scalar": "a scalar gate", "perkey": "a per-key gate"}[p.gate]
    return f"{p.n_h} generalized Householder reflection(s) per token with delta-rule writes and {gate}"


def _delta_plan(spec, tokens: int | None) -> Plan:
    why = _delta_chunk_reason(spec)
    return Plan("triton", "delta_recurrent", 1, 0, 4, False, (
        _delta_what(spec),
        f"no gradient needed and {tokens} token(s) (inference, step()): one fused recurrent launch, the [K, V] "
        "state in fp32 registers" if not why else
        f"one fused recurrent launch, the [K, V] state in fp32 registers ({why}; calls that record a backward "
        "take the diagonal-plus-low-rank kernels)",
    ))


def _delta_dplr_plan(spec) -> Plan:
    p = spec.memo["delta_pattern"]
    return Plan("triton", "delta_dplr", 1, 0, 4, True, (
        _delta_what(spec),
        f"this call records a backward and {_delta_chunk_reason(spec)}",
        "each reflection with the gate before it is one diagonal-plus-low-rank step, (I - beta k k^T) diag(a) = "
        "diag(a) + (-beta k)(a * k)^T, so the DPLR kernels (backends/triton/dplr.py) run it forward and backward"
        + (f"; the {p.n_h} reflections of a token as {p.n_h} consecutive steps" if p.n_h > 1 else ""),
        "states checkpointed every 64 steps by the forward for the backward's reverse walk",
    ))


def _delta_chunk_plan(spec) -> Plan:
    p = spec.memo["delta_pattern"]
    steps = (f"the {p.n_h} reflections of a token run as {p.n_h} consecutive steps of a sequence {p.n_h}x as "
             "long, read in place from k, v, beta [B, T, H, n_h, ..] (the query on the last step, the gate on the "
             "first; no output for the others)") if p.n_h > 1 else "one step per token"
    return Plan("triton", "delta_chunk", 64, 0, 4, True, (
        _delta_what(spec),
        "the chunkwise WY form with tl.dot: per chunk of 64 steps the strictly lower part of diag(beta) k k^T, "
        "its unit lower-triangular inverse T by forward substitution, w and u; the state passed chunk to chunk "
        "forming the new values v' = u - w S",
        steps,
        "chunk states, T, w and v' are stored by the forward for the backward",
        f"calls of at most {DELTA_RECURRENT_MAX_STEPS // p.n_h} tokens ({DELTA_RECURRENT_MAX_STEPS} reflections, "
        "where the walk was measured faster) that need no gradient take the fused recurrent kernel instead",
    ))


def _dplr_plan(spec, tokens: int | None) -> Plan:
    from recdsl.backends.triton.dplr import CHECKPOINT_T, DPLR_FORWARD_ENV, chunk_fits, chunked_forward
    p = spec.memo["dplr_pattern"]
    diag = {"none": "I", "plain": "diag(d)", "exp": "diag(exp(w))"}[p.decay]
    K = spec.ir.state[1][0]
    chunk_t = 1   # tokens per block of the forward: 1 for the recurrent walk
    if not chunk_fits(p.decay, K):
        why = "a decay given directly (it may be negative)" if p.decay == "plain" else f"K = {K} > 128"
        forward = f"forward: one fused recurrent launch (the chunkwise forward takes log decays and K <= 128; {why})"
    elif tokens is not None and not chunked_forward(p.decay, K, tokens):
        why = (f"{DPLR_FORWARD_ENV}=recurrent" if os.environ.get(DPLR_FORWARD_ENV) == "recurrent"
               else f"{tokens} tokens, at most one chunk")
        forward = f"forward: one fused recurrent launch ({why})"
    else:
        chunk_t = CHECKPOINT_T
        forward = (f"forward: chunkwise for calls longer than {CHECKPOINT_T} tokens (dplr_chunk.py): per chunk "
                   "the rank-one reads solved through T = (I - Mab)^-1, the state passed chunk to chunk; "
                   f"{DPLR_FORWARD_ENV}=recurrent keeps the fused walk")
    return Plan("triton", "dplr_recurrent", chunk_t, 0, 4, True, (
        f"diagonal plus low rank, S_t = ({diag} + b a^T) S_(t-1) + k v^T",
        forward,
        "the recurrent walk (short calls, and the backward in reverse): each program a [K, BV] block of the "
        "state in fp32 registers (the value columns evolve independently)",
        f"either forward stores the state every {CHECKPOINT_T} tokens when a backward is recorded; the backward "
        "recomputes each segment from its checkpoint and walks it in reverse",
        "gradients over the key axis (dr, dk, da, db, dw) are summed over value blocks",
        "a chunkwise backward (fla's chunk_dplr) is not generated yet: the backward runs one token at a time",
    ))


def prepare(spec) -> None:
    """Do every graph walk and kernel registration a call may need, ahead of time, so that calls
    inside torch.compile(fullgraph=True) only read memoised results."""
    if triton_route(spec)[0] == "elementwise_scan":
        from recdsl.backends.triton.launch import scan_op
        for bc, t in ((None, None), (0, None), (None, 1), (0, 1)):   # many programs or few; long or short calls
            p = _scan_plan(spec, bc, t)
            scan_op(spec, p.block_t, p.block_d, p.num_warps, p.scan_backward, p.scan_schedule, p.bwd_warps)


SHORT_T = 16   # calls of at most this many tokens (decoding, step()) scan one small block


def _scan_plan(spec, batch_channels: int | None, tokens: int | None = None) -> Plan:
    S = spec.ir.state[1]
    if len(S) == 2:
        return _matrix_scan_plan(spec, S)
    from recdsl.backends.triton.scan import output_is_state
    short = tokens is not None and tokens <= SHORT_T
    from_output = output_is_state(spec.ir)
    target = 2 * 132                           # two walking programs per SM on an H100
    few = batch_channels is not None and batch_channels // 16 < target
    # with the backward from the output the look-back's tiles beat the walk at any width; without it, only
    # where too few walking programs fill the GPU
    schedule = _schedule_override() or ("look_back" if (few or from_output) and not short else "walk")
    if schedule == "look_back":
        BT, BD, warps, bwd_warps = _blocks_override((32, 32, 1, 1))
        how = (f"tiles of BT={BT} tokens x BD={BD} channels, each its own program, chained along the tokens by a "
               "decoupled look-back (backends/triton/look_back.py): inputs are read once and the tiles stream in "
               "parallel however few sequences and channels the call has",
               (f"B*C={batch_channels} gives only {batch_channels // 16} walking programs of 16 channels "
                f"(aim: >= {target}); " if few else "") +
               "on an H100 at B=1, T=65536, C=256 the look-back took 0.167 / 0.637 ms forward / forward+backward "
               "against 1.40 / 7.06 ms for the best walk (benchmarks/results/2026-11-25d_h100_sweep_hgrn_long.jsonl)",
               *(("at B=4, T=4096, C=2048 with the backward from the output, replayed from CUDA graphs on an H100, "
                  "one warp each took 0.1075 ms forward and 0.2988 ms forward+backward; two backward warps 0.3054, "
                  "two forward warps 0.1122 / 0.3021, 64-row tiles 0.1063 / 0.3181 at their best and 64 channels "
                  "0.1088 / 0.3221 (benchmarks/results/2026-11-26zzy_h100_sweep_hgrn_graphs.jsonl)",)
                 if from_output else ()))
    else:
        # one program per (sequence, BD channels) walks T; enough programs keep every SM streaming
        BT, BD, warps = 128, 16, 2
        why_t = (f"one program per sequence and BD={BD} channels walks the tokens: tl.associative_scan inside a "
                 f"block of BT={BT} tokens, the state carried across blocks in registers")
        why_d = ("the fastest blocks on an H100 at B=4, T=4096, C=2048 (benchmarks/results/*sweep_hgrn*): 0.139 ms "
                 "forward, 1.9x a device copy of the same bytes; the look-back's best took 0.143 ms there")
        if batch_channels is not None and not few:
            why_d = f"B*C={batch_channels} gives {batch_channels // BD} walking programs (>= {target}); " + why_d
        if short:
            BT = SHORT_T
            why_t = (f"a call of {tokens} token(s) (decoding, step()): one block of BT={BT} rows, a single launch "
                     "with the state in registers and no look-back workspace")
        BT, BD, warps, bwd_warps = _blocks_override((BT, BD, warps))
        how = (why_t, why_d)
    return Plan("triton", "elementwise_scan", BT, BD, warps, True, (
        "vector state with an element-wise diagonal transition: h_t = a_t * h_{t-1} + b_t per channel",
        *how,
        *_vector_backward_reasons(from_output),
    ), scan_backward="output" if from_output else "exclusive", scan_schedule=schedule, bwd_warps=bwd_warps)


def _vector_backward_reasons(from_output: bool) -> tuple[str, ...]:
    if from_output:
        return ("the readout is the state, so the backward reads h_(t-1) from the output (saved for it anyway) "
                "and runs one reverse scan; the forward stores no chunk-start states",)
    return ("chunk-start states are stored (T/BT x C floats) so the backward recomputes only inside a block",
            "backward scans keep each row's exclusive prefix (inputs read once per row): on an H100 at B=4, "
            "T=4096, C=2048 its kernel took 0.44 ms against 0.49 ms re-reading the neighbouring rows")


def _schedule_override() -> str | None:
    """RECDSL_SCAN_SCHEDULE=walk|look_back replaces the vector scan's schedule (for sweeps and tests)."""
    text = os.environ.get("RECDSL_SCAN_SCHEDULE")
    if text and text not in ("walk", "look_back"):
        raise ValueError(f"RECDSL_SCAN_SCHEDULE={text!r}: expected 'walk' or 'look_back'")
    return text or None


def _blocks_override(blocks: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(BT, BD, warps, backward warps) from `blocks`, or from RECDSL_SCAN_BLOCKS="BT,BD,warps[,backward warps]"
    (for sweeps on a GPU); backward warps are 0 where they equal the forward's (Plan.bwd_warps)."""
    text = os.environ.get("RECDSL_SCAN_BLOCKS")
    if text:
        try:
            blocks = tuple(map(int, text.split(",")))
        except ValueError:
            blocks = ()
        if len(blocks) not in (3, 4):
            raise ValueError(f"RECDSL_SCAN_BLOCKS={text!r}: expected 'BT,BD,warps' or 'BT,BD,warps,backward warps' "
                             "(integers)")
    return (*blocks[:3], blocks[3] if len(blocks) == 4 and blocks[3] != blocks[2] else 0)


def _matrix_scan_plan(spec, S) -> Plan:
    BN = 1 << (S[1] - 1).bit_length()
    # a [BT, BD, BN] tile per value of 4096 elements with 4 warps: fastest in the H100 sweep
    # (benchmarks/results/*sweep_mamba*: BT=16, BD=16, N=16)
    BT, warps = 16, 4
    BD = max(1, min(32, 4096 // (BT * BN)))
    BT, BD, warps, bwd_warps = _blocks_override((BT, BD, warps))
    signed = spec.analysis.eig_range.lo < 0
    return Plan("triton", "elementwise_scan", BT, BD, warps, True, (
        f"matrix state h[{S[0]}, {S[1]}] with a decay per entry: h_t = a_t * h_(t-1) + b_t entry by entry, "
        "the readout contracting N inside the kernel",
        f"tiles of BT={BT} tokens x BD={BD} rows x BN={BN} columns: 4096 values per tile was fastest on an "
        "H100 (mamba, N=16: 9.3 ms forward+backward against 11.2 ms with 2048)",
        "inputs along N (shared by every row) are read once per program; their gradients summed over D blocks",
        "signed decays multiply directly in the scan (no log space), so a_t < 0 costs nothing extra"
        if signed else "decays multiply directly in the scan",
        f"chunk-start states are stored (T/{BT} x D x N floats) so the backward recomputes only inside a block",
        "the backward re-reads the neighbouring rows for h_(t-1) and a_(t+1): on an H100 (mamba, B=4, T=4096, "
        "D=2048, N=16) forward+backward took 9.3 ms this way against 12.4 ms with exclusive-prefix scans, "
        "whose [BT, BD, BN] tuples of four spill registers",
    ), scan_backward="shifted", scan_schedule="walk", bwd_warps=bwd_warps)
