"""Finite groups as permutation groups, for word problems (Merrill et al. 2024; Liu et al. 2023).

An element is a permutation of 0..n-1 stored as a tuple p (p[i] is the image of i). The product
a * b applies a first, then b: (a * b)[i] = b[a[i]], so a left fold x_1 * x_2 * ... * x_k is the
state after reading the word left to right. Elements are sorted with the identity first, and the
group keeps its Cayley table so prefix products of a batch of words are table lookups.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np


def compose(a: tuple, b: tuple) -> tuple:
    """a then b."""
    return tuple(b[i] for i in a)


def is_even(p: tuple) -> bool:
    seen, swaps = set(), 0
    for i in range(len(p)):
        j, length = i, 0
        while j not in seen:
            seen.add(j)
            j, length = p[j], length + 1
        swaps += max(0, length - 1)
    return swaps % 2 == 0


@dataclass(frozen=True)
class Group:
    name: str
    elements: tuple                      # permutations, identity first
    table: np.ndarray = field(repr=False, compare=False)   # table[i, j] = index of elements[i] * elements[j]

    @property
    def order(self) -> int:
        return len(self.elements)

    def prefix_products(self, words: np.ndarray) -> np.ndarray:
        """words [B, k] of element indices -> [B, k] indices of x_1 * ... * x_i for every i."""
        out = np.empty_like(words)
        acc = np.zeros(words.shape[0], dtype=words.dtype)      # the identity
        for i in range(words.shape[1]):
            acc = self.table[acc, words[:, i]]
            out[:, i] = acc
        return out

    def is_abelian(self) -> bool:
        return bool((self.table == self.table.T).all())

    def is_solvable(self) -> bool:
        """The derived series G > [G, G] > ... reaches the trivial group."""
        current = set(range(self.order))
        while len(current) > 1:
            inv = {i: int(np.flatnonzero(self.table[i] == 0)[0]) for i in current}
            comm = {int(self.table[self.table[inv[a], inv[b]], self.table[a, b]]) for a in current for b in current}
            derived = _closure(self.table, comm)
            if derived == current:
                return False
            current = derived
        return True


def _closure(table: np.ndarray, gens: set) -> set:
    out, frontier = set(gens) | {0}, set(gens)
    while frontier:
        new = {int(table[a, b]) for a in out for b in frontier} - out
        out |= new
        frontier = new
    return out


def from_permutations(name: str, perms) -> Group:
    elements = sorted(set(perms))
    n = len(elements[0])
    identity = tuple(range(n))
    if identity not in elements:
        raise ValueError(f"{name}: the identity is missing")
    elements.remove(identity)
    elements = [identity] + elements
    index = {p: i for i, p in enumerate(elements)}
    table = np.empty((len(elements), len(elements)), dtype=np.int64)
    for i, a in enumerate(elements):
        for j, b in enumerate(elements):
            c = compose(a, b)
            if c not in index:
                raise ValueError(f"{name}: not closed under composition")
            table[i, j] = index[c]
    return Group(name, tuple(elements), table)


def symmetric(n: int) -> Group:
    return from_permutations(f"S{n}", itertools.permutations(range(n)))


def alternating(n: int) -> Group:
    return from_permutations(f"A{n}", (p for p in itertools.permutations(range(n)) if is_even(p)))


def cyclic(n: int) -> Group:
    return from_permutations(f"Z{n}", (tuple((i + s) % n for i in range(n)) for s in range(n)))


def direct_product(g: Group, h: Group) -> Group:
    """Acting on disjoint points: g on the first len(g) points, h on the rest."""
    m = len(g.elements[0])
    perms = [a + tuple(m + x for x in b) for a in g.elements for b in h.elements]
    return from_permutations(f"{g.name}x{h.name}", perms)


GROUPS = {
    "S3": lambda: symmetric(3), "S4": lambda: symmetric(4), "S5": lambda: symmetric(5),
    "A4": lambda: alternating(4), "A5": lambda: alternating(5), "Z60": lambda: cyclic(60),
    "A4xZ5": lambda: direct_product(alternating(4), cyclic(5)),
}


def group(name: str) -> Group:
    if name not in GROUPS:
        raise ValueError(f"unknown group {name!r}; known: {sorted(GROUPS)}")
    return GROUPS[name]()
