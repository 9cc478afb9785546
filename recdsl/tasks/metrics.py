"""Metrics as the seed papers define them, from predicted token ids and a Batch's labels."""
from __future__ import annotations

import torch

from .data import IGNORE, Batch, Task


HEADLINE = ("scaled_accuracy", "sequence_accuracy", "character_accuracy", "accuracy")


def headline(row: dict) -> str:
    """The metric a task is judged by, among those a row of `evaluate` holds."""
    return next(k for k in HEADLINE if k in row)


def mean_headline(rows: list[dict]) -> float:
    """The headline metric averaged over evaluated lengths: what tables and targets quote."""
    return sum(r[headline(r)] for r in rows) / len(rows)


def scaled_accuracy(accuracy: float, num_classes: int) -> float:
    """(acc - 1/C) / (1 - 1/C): 1 is perfect, 0 is chance (Deletang et al.; Grazzi et al. Table 3)."""
    chance = 1.0 / num_classes
    return (accuracy - chance) / (1.0 - chance)


def last_labels(labels: torch.Tensor) -> torch.Tensor:
    """Index of each row's last supervised position."""
    pos = torch.arange(labels.shape[1], device=labels.device).expand_as(labels)
    return torch.where(labels != IGNORE, pos, -1).amax(1)


def prefix_accuracy(pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[L]: the fraction of sequences whose first l supervised predictions are all correct, l = 1..L
    (word problems; a sequence shorter than l counts only among those that reach l)."""
    sup = labels != IGNORE
    wrong = (sup & (pred != labels)).long().cumsum(1)
    reach = sup.long().cumsum(1)
    L = int(reach[:, -1].max())
    out = torch.empty(L)
    for l in range(1, L + 1):
        at = reach == l
        has = at.any(1)
        idx = at.float().argmax(1)
        ok = wrong.gather(1, idx[:, None])[:, 0] == 0
        out[l - 1] = (ok & has).sum() / has.sum().clamp_min(1)
    return out


def score(task: Task, pred: torch.Tensor, batch: Batch) -> dict:
    """The task's metric; `pred` [B, L] predicted token ids aligned with batch.labels."""
    labels = batch.labels
    if task.scoring in ("final", "last"):
        i = last_labels(labels)
        rows = torch.arange(labels.shape[0])
        acc = (pred[rows, i] == labels[rows, i]).float().mean().item()
        out = {"accuracy": acc}
        if task.scoring == "final":
            out["scaled_accuracy"] = scaled_accuracy(acc, task.num_classes)
        return out
    sup = labels != IGNORE
    token_acc = ((pred == labels) & sup).sum().item() / max(1, sup.sum().item())
    if task.scoring == "chars":
        return {"character_accuracy": token_acc}
    curve = prefix_accuracy(pred, labels)
    return {"token_accuracy": token_acc, "sequence_accuracy": float(curve[-1]), "prefix_accuracy": curve.tolist()}
