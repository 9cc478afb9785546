"""State-tracking tasks of the seed papers, generated in the package (no downloads).

Every task draws one example of a given length as (tokens, labels) over its own vocabulary, token 0
being padding; a label is a token id, or IGNORE where a position is not supervised (PyTorch's
cross-entropy ignore_index). `scoring` says how a model is scored (metrics.py):

- "final":  xLSTM / Grazzi et al. format: the answer comes after the sequence, its input masked
            (padding), and only it is supervised; scaled accuracy over `num_classes`.
- "last":   Fan et al.: a label at every position, accuracy at the last one.
- "prefix": word problems: the prefix product at every position; all-prefix sequence accuracy.
- "chars":  copy: the copied characters after the delimiter, teacher forced; character accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .groups import group

IGNORE = -100


@dataclass(frozen=True)
class Task:
    name: str
    vocab: tuple[str, ...]           # token names; id = position; 0 is padding
    num_classes: int                 # answer classes (chance level 1 / num_classes)
    scoring: str                     # final | last | prefix | chars
    sample: Callable                 # (rng, length) -> (tokens, labels)
    min_length: int = 1
    odd_only: bool = False           # alternating number/op sequences have odd lengths
    about: str = ""
    sample_batch: Callable | None = None   # (rng, lengths) -> (tokens, labels) [B, L] arrays: `sample`
                                           # vectorised over the batch, where a per-example loop is slow

    def batch(self, batch_size: int, min_len: int, max_len: int, rng: np.random.Generator) -> "Batch":
        """Lengths uniform in [min_len, max_len], right-padded."""
        lo = max(min_len, self.min_length)
        if max_len < lo:
            raise ValueError(f"{self.name}: lengths must be at least {self.min_length}, got max {max_len}")
        lengths = rng.integers(lo, max_len + 1, size=batch_size)
        if self.odd_only:   # round up to odd, or down where that passes max_len
            if lo == max_len and lo % 2 == 0:
                raise ValueError(f"{self.name}: lengths are odd; [{lo}, {max_len}] holds none")
            lengths = lengths | 1
            lengths = np.where(lengths > max_len, lengths - 2, lengths)
        if self.sample_batch is not None:
            tokens, labels = self.sample_batch(rng, lengths)
        else:   # filled through numpy: a torch.tensor per example cost more than drawing the examples
            examples = [self.sample(rng, int(n)) for n in lengths]
            L = max(len(t) for t, _ in examples)
            tokens = np.zeros((batch_size, L), dtype=np.int64)
            labels = np.full((batch_size, L), IGNORE, dtype=np.int64)
            for b, (t, y) in enumerate(examples):
                tokens[b, :len(t)] = t
                labels[b, :len(y)] = y
        return Batch(torch.from_numpy(tokens), torch.from_numpy(labels), torch.as_tensor(lengths))


@dataclass(frozen=True)
class Batch:
    tokens: torch.Tensor     # [B, L] long, 0 = padding
    labels: torch.Tensor     # [B, L] long, IGNORE where not supervised
    lengths: torch.Tensor    # [B] the drawn task lengths


def _final(tokens: list[int], answer: int) -> tuple[list[int], list[int]]:
    """The answer after the sequence: its input is padding, only it is supervised."""
    return tokens + [0], [IGNORE] * len(tokens) + [answer]


# ---- regular and context-free languages (Deletang et al. 2023, in the xLSTM / Grazzi format) ----------

def _parity(rng, n):
    bits = rng.integers(0, 2, size=n)
    return _final(list(bits + 1), 1 + int(bits.sum() % 2))


def _final_batch(symbols: np.ndarray, lengths: np.ndarray, answers: np.ndarray):
    """_final for a batch: symbols [B, L] (token ids, row b valid below lengths[b]), answers [B]."""
    B, L = symbols.shape
    pos = np.arange(L + 1)[None, :]
    tokens = np.where(pos < lengths[:, None], np.pad(symbols, ((0, 0), (0, 1))), 0)
    labels = np.where(pos == lengths[:, None], answers[:, None], IGNORE)
    return tokens, labels


def _parity_batch(rng, lengths):
    bits = rng.integers(0, 2, size=(len(lengths), int(lengths.max())))
    inside = np.arange(bits.shape[1])[None, :] < lengths[:, None]
    return _final_batch(bits + 1, lengths, 1 + (bits * inside).sum(1) % 2)


def _even_pairs(rng, n):
    bits = rng.integers(0, 2, size=n)
    return _final(list(bits + 1), 3 + int(bits[0] == bits[-1]))


def _cycle_navigation(rng, n):
    moves = rng.integers(0, 3, size=n)                    # stay, +1, -1 on a 5-cycle from 0
    position = int((moves == 1).sum() - (moves == 2).sum()) % 5
    return _final(list(moves + 1), 4 + position)


MOD = 5
DIGITS = tuple(str(d) for d in range(MOD))
OPS = ("+", "-", "*")


def _expression_without_brackets(rng, n):
    """number op number ... (n odd) and the running values mod 5 at the numbers (standard precedence)."""
    nums = rng.integers(0, MOD, size=(n + 1) // 2)
    ops = rng.integers(0, 3, size=n // 2)
    total, term, sign, values = 0, int(nums[0]), 1, [int(nums[0])]
    for op, x in zip(ops, nums[1:]):
        if op == 2:
            term = term * int(x) % MOD
        else:
            total = (total + sign * term) % MOD
            sign, term = (1 if op == 0 else -1), int(x)
        values.append((total + sign * term) % MOD)
    tokens = []
    for i, x in enumerate(nums):
        tokens.append(1 + int(x))
        if i < len(ops):
            tokens.append(1 + MOD + int(ops[i]))
    return tokens, values


def _mod_arithmetic_batch(rng, lengths):
    """_mod_arithmetic for a batch (odd lengths): the same left-to-right evaluation with precedence, one
    position at a time over all rows; a row stops changing past its own length."""
    B = len(lengths)
    count = (lengths + 1) // 2                                # numbers per row
    nums = rng.integers(0, MOD, size=(B, int(count.max())))
    ops = rng.integers(0, 3, size=(B, max(1, int(count.max()) - 1)))
    total, term, sign = np.zeros(B, np.int64), nums[:, 0].copy(), np.ones(B, np.int64)
    for i in range(1, nums.shape[1]):
        live, op, x = i < count, ops[:, i - 1], nums[:, i]
        mul = op == 2
        total = np.where(live & ~mul, (total + sign * term) % MOD, total)
        sign = np.where(live & ~mul, np.where(op == 0, 1, -1), sign)
        term = np.where(live, np.where(mul, term * x % MOD, x), term)
    symbols = np.zeros((B, 2 * nums.shape[1]), np.int64)      # number op number ... "="
    symbols[:, 0::2] = 1 + nums
    symbols[:, 1:-1:2] = 1 + MOD + ops[:, :nums.shape[1] - 1]
    symbols[np.arange(B), lengths] = 1 + MOD + 3
    return _final_batch(symbols, lengths + 1, 1 + (total + sign * term) % MOD)


def _mod_arithmetic(rng, n):
    tokens, values = _expression_without_brackets(rng, n)
    return _final(tokens + [1 + MOD + 3], 1 + values[-1])          # ... "=" answer


def _bracketed(rng, n) -> tuple[list[str], int]:
    """Deletang's recursive expressions of exactly n symbols: d, -d, (d), (-d), (left op right)."""
    if n <= 4:
        d = int(rng.integers(0, MOD))
        return [[str(d)], ["-", str(d)], ["(", str(d), ")"], ["(", "-", str(d), ")"]][n - 1], (
            d if n in (1, 3) else -d) % MOD
    left = int(rng.integers(1, n - 3))
    a, va = _bracketed(rng, left)
    b, vb = _bracketed(rng, n - 3 - left)
    op = OPS[int(rng.integers(0, 3))]
    value = {"+": va + vb, "-": va - vb, "*": va * vb}[op] % MOD
    return ["("] + a + [op] + b + [")"], value


BRACKET_VOCAB = ("<pad>",) + DIGITS + OPS + ("(", ")", "=")


def _mod_arithmetic_brackets(rng, n):
    symbols, value = _bracketed(rng, n)
    ids = {s: i for i, s in enumerate(BRACKET_VOCAB)}
    return _final([ids[s] for s in symbols] + [ids["="]], ids[str(value)])


# ---- Fan et al. 2024: a label at every position, scored at the last ------------------------------------

def _sum_m(rng, n, M=MOD):
    x = rng.integers(0, M, size=n)
    return list(x + 1), list(np.cumsum(x) % M + 1)


def _even_pair_m(rng, n, M=MOD):
    x = rng.integers(0, M, size=n)
    return list(x + 1), list(M + 1 + (x == x[0]).astype(np.int64))


def _mod_arith_m(rng, n):
    tokens, values = _expression_without_brackets(rng, n)
    labels = [IGNORE] * len(tokens)
    labels[0::2] = [1 + v for v in values]
    return tokens, labels


# ---- group word problems and copying ------------------------------------------------------------------

def _word_problem(g):
    def sample(rng, n):
        word = rng.integers(0, g.order, size=(1, n))
        return list(word[0] + 1), list(g.prefix_products(word)[0] + 1)
    return sample


def _word_problem_batch(g):
    """The same distribution as _word_problem's, drawn for the whole batch at once: one table lookup per
    position over all rows instead of one per position and row."""
    def sample_batch(rng, lengths):
        L = int(lengths.max())
        words = rng.integers(0, g.order, size=(len(lengths), L))
        inside = np.arange(L)[None, :] < lengths[:, None]
        return np.where(inside, words + 1, 0), np.where(inside, g.prefix_products(words) + 1, IGNORE)
    return sample_batch


LETTERS = tuple(chr(ord("a") + i) for i in range(26))


def _copy(rng, n):
    """<bos> x_1..x_n | x_1..x_n, shifted for next-token prediction; the copied part is supervised."""
    x = list(rng.integers(1, 27, size=n))
    seq = [28] + x + [27] + x                              # 27 = delimiter, 28 = <bos>
    return seq[:-1], [IGNORE] * (n + 1) + x


def _word_task(name: str) -> Task:
    g = group(name)
    return Task(f"word_{name}", ("<pad>",) + tuple(f"g{i}" for i in range(g.order)), g.order, "prefix",
                _word_problem(g), about=f"prefix products over {name} (order {g.order})",
                sample_batch=_word_problem_batch(g))


_TASKS = {
    "parity": lambda: Task("parity", ("<pad>", "0", "1"), 2, "final", _parity,
                           about="parity of a bit string (xLSTM format, vocab 3)", sample_batch=_parity_batch),
    "even_pairs": lambda: Task("even_pairs", ("<pad>", "a", "b", "no", "yes"), 2, "final", _even_pairs,
                               about="first symbol equals the last"),
    "cycle_navigation": lambda: Task("cycle_navigation", ("<pad>", "stay", "+1", "-1") + tuple(f"p{i}" for i in range(5)),
                                     5, "final", _cycle_navigation, about="position on a 5-cycle"),
    "mod_arithmetic": lambda: Task("mod_arithmetic", ("<pad>",) + DIGITS + OPS + ("=",), MOD, "final", _mod_arithmetic,
                                   odd_only=True, about="+ - * mod 5 with precedence, no brackets (vocab 10)",
                                   sample_batch=_mod_arithmetic_batch),
    "mod_arithmetic_brackets": lambda: Task("mod_arithmetic_brackets", BRACKET_VOCAB, MOD, "final",
                                            _mod_arithmetic_brackets, about="bracketed + - * mod 5 (vocab 12)"),
    "sum_5": lambda: Task("sum_5", ("<pad>",) + DIGITS, MOD, "last", _sum_m, about="running sum mod 5 (Fan et al.)"),
    "even_pair_5": lambda: Task("even_pair_5", ("<pad>",) + DIGITS + ("no", "yes"), 2, "last", _even_pair_m,
                                about="token equals the first (Fan et al.)"),
    "mod_arith_5": lambda: Task("mod_arith_5", ("<pad>",) + DIGITS + OPS, MOD, "last", _mod_arith_m, odd_only=True,
                                about="running value of + - * mod 5 at every number (Fan et al.)"),
    "copy": lambda: Task("copy", ("<pad>",) + LETTERS + ("|", "<bos>"), 26, "chars", _copy,
                         about="reproduce a string after a delimiter (vocab 29)"),
    **{f"word_{g}": (lambda g=g: _word_task(g)) for g in ("S3", "S4", "A4xZ5", "A5", "S5", "Z60")},
}

TASK_NAMES = tuple(_TASKS)


def task(name: str) -> Task:
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASK_NAMES)}")
    return _TASKS[name]()
