"""A training step (forward, loss, backward, clipping, AdamW) captured once as a CUDA graph and replayed.

The task models are small: an eager step on an H100 is a few hundred kernel launches of a few
microseconds each, so its time is the host's. A graph replays them with one launch. What a graph needs:

- fixed shapes: every batch is right-padded to the widest example the training lengths allow. The models
  are causal and padding is unsupervised, so the loss and the gradients are those of the unpadded batch;
- no host synchronisation inside the step: the recurrences of recdsl's Triton backend have none, except
  the fixed points (their driver reads residuals on the host) and varlen calls, hence `graphable`;
- device-side optimizer state and learning rate: AdamW with capturable=True and a tensor lr, which the
  scheduler updates in place;
- kernels compiled and optimizer state created before capture: the first WARM_STEPS steps run eagerly,
  on a side stream, on the same padded buffers (they are real training steps, counted as such).

A capture that fails (an op that cannot be captured) warns and leaves the run eager, unless the graph
was insisted on (`--cuda-graph on`).
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from .data import IGNORE

WARM_STEPS = 3


def graphable(model, device) -> tuple[bool, str]:
    """Whether a model's step can be captured, and why not."""
    if torch.device(device).type != "cuda":
        return False, "CUDA graphs need a CUDA device"
    for core in model.cores:
        if core.spec.family == "dense_fixed_point":
            return False, "a fixed point's driver reads residuals on the host between iterations"
        if core.backend == "reference":
            return False, "the reference backend's loops are not meant for capture"
    return True, ""


def set_capturable(opt: torch.optim.Optimizer, on: bool, device) -> None:
    """Switch an Adam-family optimizer (also one just loaded from a checkpoint written in the other mode)
    between host-side steps and lr (eager) and device-side ones (capturable, for a graph)."""
    for g in opt.param_groups:
        g["capturable"] = on
        lr = float(g["lr"])
        g["lr"] = torch.tensor(lr, dtype=torch.float32, device=device) if on else lr
        if "initial_lr" in g:
            g["initial_lr"] = float(g["initial_lr"])
    for s in opt.state.values():
        if "step" in s:
            s["step"] = s["step"].to(device=device if on else "cpu", dtype=torch.float32)


def clip_gradients(model: torch.nn.Module, max_norm: float) -> None:
    """Clip the gradients' global norm to max_norm (0: leave them; Grazzi et al.'s runs do not clip)."""
    if max_norm < 0:
        raise ValueError(f"clip must be >= 0 (0 turns clipping off), got {max_norm}")
    if max_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)


class GraphedStep:
    """Call with a batch's (tokens, labels) on the host; returns the device tensors (loss, logits) of that
    step, logits padded to `width`. The first WARM_STEPS calls run eagerly, the next captures and replays.
    A capture that fails raises when `strict`, else warns and leaves every later step eager."""

    def __init__(self, model, opt, batch: int, width: int, device, autocast, strict: bool = False,
                 clip: float = 1.0):
        self.model, self.opt, self.width, self.autocast, self.strict = model, opt, width, autocast, strict
        self.clip = clip
        self.eager = False       # set when the capture failed (and not strict): every step runs eagerly
        self.tokens = torch.zeros(batch, width, dtype=torch.long, device=device)
        self.labels = torch.full((batch, width), IGNORE, dtype=torch.long, device=device)
        self.host_tokens = torch.zeros(batch, width, dtype=torch.long).pin_memory()
        self.host_labels = torch.full((batch, width), IGNORE, dtype=torch.long).pin_memory()
        self.calls, self.graph, self.loss, self.logits = 0, None, None, None
        # waits for the previous step by sleeping, not spinning: runs share the host's cores
        self.done = torch.cuda.Event(blocking=True)

    def _step(self):
        with self.autocast():
            logits = self.model(self.tokens)
            loss = F.cross_entropy(logits.float().flatten(0, 1), self.labels.flatten(), ignore_index=IGNORE)
        loss.backward()
        clip_gradients(self.model, self.clip)
        self.opt.step()
        return loss, logits

    def _load(self, tokens: torch.Tensor, labels: torch.Tensor) -> None:
        B, L = tokens.shape
        if B != self.tokens.shape[0] or L > self.width:
            raise ValueError(f"batch of shape {list(tokens.shape)} does not fit the graph's [{self.tokens.shape[0]}, "
                             f"{self.width}]; train without --cuda-graph")
        self.done.synchronize()              # the previous step has read the pinned buffers
        self.host_tokens.zero_()
        self.host_labels.fill_(IGNORE)
        self.host_tokens[:, :L] = tokens
        self.host_labels[:, :L] = labels
        self.tokens.copy_(self.host_tokens, non_blocking=True)
        self.labels.copy_(self.host_labels, non_blocking=True)

    def __call__(self, tokens: torch.Tensor, labels: torch.Tensor):
        self._load(tokens, labels)
        self.calls += 1
        if self.eager or self.calls <= WARM_STEPS:
            return self._eager()
        if self.graph is None:
            self.opt.zero_grad(set_to_none=True)     # backward allocates the gradients in the graph's pool
            self.graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(self.graph):
                    self.loss, self.logits = self._step()
            except RuntimeError as e:                # an op that cannot be captured: nothing ran yet
                if self.strict:
                    raise
                self.graph, self.eager = None, True
                warnings.warn(f"the training step could not be captured as a CUDA graph ({e}); it runs "
                              f"eagerly from here on", RuntimeWarning, stacklevel=2)
                return self._eager()
        self.graph.replay()
        self.done.record()
        return self.loss, self.logits

    def _eager(self):
        """One step outside the graph, on a side stream (as capture requires of the steps before it)."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.opt.zero_grad(set_to_none=True)
            loss, logits = self._step()
            # detached: a live autograd graph would keep this step's gradient accumulators (and their
            # stream) for the capture
            self.loss, self.logits = loss.detach(), logits.detach()
        torch.cuda.current_stream().wait_stream(side)
        self.done.record()
        return self.loss, self.logits
