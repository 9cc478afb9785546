"""Benchmarks of state tracking from the seed papers: task generators, groups and metrics."""
from .data import IGNORE, TASK_NAMES, Batch, Task, task
from .groups import Group, group
from .metrics import prefix_accuracy, scaled_accuracy, score

__all__ = ["IGNORE", "TASK_NAMES", "Batch", "Task", "task", "Group", "group", "prefix_accuracy",
           "scaled_accuracy", "score"]
