"""Task generators, groups and metrics (recdsl.tasks): checked against independent computations."""
import itertools

import numpy as np
import pytest
import torch

from recdsl.tasks import IGNORE, TASK_NAMES, group, prefix_accuracy, scaled_accuracy, score, task


@pytest.mark.parametrize("name,order,abelian,solvable", [
    ("S3", 6, False, True), ("S4", 24, False, True), ("A4xZ5", 60, False, True), ("A5", 60, False, False),
    ("S5", 120, False, False), ("Z60", 60, True, True)])
def test_groups(name, order, abelian, solvable):
    g = group(name)
    assert g.order == order and g.is_abelian() == abelian and g.is_solvable() == solvable
    t = g.table
    assert (t[0] == np.arange(order)).all() and (t[:, 0] == np.arange(order)).all()      # identity first
    assert all(sorted(row) == list(range(order)) for row in t)                            # Latin square
    rng = np.random.default_rng(0)
    a, b, c = rng.integers(0, order, size=(3, 200))
    assert (t[t[a, b], c] == t[a, t[b, c]]).all()                                         # associative


def test_prefix_products_are_a_left_fold_of_permutations():
    g = group("S4")
    words = np.random.default_rng(1).integers(0, g.order, size=(5, 9))
    out = g.prefix_products(words)
    for w, o in zip(words, out):
        state = tuple(range(4))
        for x, y in zip(w, o):
            p = g.elements[x]
            state = tuple(p[i] for i in state)      # apply x after everything before it
            assert g.elements[y] == state


def _eval_mod5(text: str) -> int:
    # an independent oracle: Python's own precedence on digits and + - * ( ) only
    assert set(text) <= set("01234+-*() ")
    return eval(text) % 5   # noqa: S307 - the text is generated above, from a fixed alphabet


def test_mod_arithmetic_answers_match_python_precedence():
    t = task("mod_arithmetic")
    rng = np.random.default_rng(2)
    for n in (1, 3, 5, 9, 21):
        tokens, labels = t.sample(rng, n)
        text = "".join(t.vocab[i] for i in tokens[:-2])
        assert t.vocab[tokens[-2]] == "=" and tokens[-1] == 0
        assert t.vocab[labels[-1]] == str(_eval_mod5(text)) and labels[:-1] == [IGNORE] * (len(tokens) - 1)


def test_bracketed_expressions_have_the_length_and_value_asked():
    t = task("mod_arithmetic_brackets")
    rng = np.random.default_rng(3)
    for n in range(1, 40):
        tokens, labels = t.sample(rng, n)
        symbols = [t.vocab[i] for i in tokens[:-2]]
        assert len(symbols) == n
        assert t.vocab[labels[-1]] == str(_eval_mod5(" ".join(symbols).replace("- ", "-")))


def test_running_labels_of_fan_et_al():
    rng = np.random.default_rng(4)
    tokens, labels = task("sum_5").sample(rng, 30)
    assert labels == [int(sum(x - 1 for x in tokens[:i + 1]) % 5) + 1 for i in range(30)]
    t = task("even_pair_5")
    tokens, labels = t.sample(rng, 30)
    assert [t.vocab[y] for y in labels] == ["yes" if x == tokens[0] else "no" for x in tokens]
    t = task("mod_arith_5")
    tokens, labels = t.sample(rng, 15)
    for i in range(0, 15, 2):
        assert t.vocab[labels[i]] == str(_eval_mod5("".join(t.vocab[x] for x in tokens[:i + 1])))
        assert i + 1 >= 15 or labels[i + 1] == IGNORE


def test_final_token_tasks():
    rng = np.random.default_rng(5)
    tokens, labels = task("parity").sample(rng, 17)
    assert labels[-1] == 1 + sum(x == 2 for x in tokens[:-1]) % 2
    t = task("cycle_navigation")
    tokens, labels = t.sample(rng, 25)
    pos = sum({"stay": 0, "+1": 1, "-1": -1}[t.vocab[x]] for x in tokens[:-1]) % 5
    assert t.vocab[labels[-1]] == f"p{pos}"
    t = task("even_pairs")
    tokens, labels = t.sample(rng, 8)
    assert t.vocab[labels[-1]] == ("yes" if tokens[0] == tokens[-2] else "no")


def test_copy():
    t = task("copy")
    assert len(t.vocab) == 29
    tokens, labels = t.sample(np.random.default_rng(6), 7)
    text = [t.vocab[i] for i in tokens]
    assert text[0] == "<bos>" and text[8] == "|" and text[9:] == text[1:7]
    assert [t.vocab[y] for y in labels if y != IGNORE] == text[1:8]


@pytest.mark.parametrize("name", TASK_NAMES)
def test_batches_are_deterministic_padded_and_in_vocab(name):
    t = task(name)
    b1 = t.batch(16, 3, 12, np.random.default_rng(7))
    b2 = t.batch(16, 3, 12, np.random.default_rng(7))
    assert torch.equal(b1.tokens, b2.tokens) and torch.equal(b1.labels, b2.labels)
    assert int(b1.tokens.max()) < len(t.vocab) and int(b1.tokens.min()) >= 0
    sup = b1.labels[b1.labels != IGNORE]
    assert len(sup) and int(sup.max()) < len(t.vocab) and int(sup.min()) > 0
    assert int(b1.lengths.min()) >= 3 and int(b1.lengths.max()) <= 12
    if t.odd_only:
        assert (b1.lengths % 2 == 1).all()


def test_metrics():
    assert scaled_accuracy(1.0, 2) == 1.0 and scaled_accuracy(0.5, 2) == 0.0 and scaled_accuracy(0.2, 5) == 0.0
    labels = torch.tensor([[5, 6, 7, IGNORE], [5, 6, IGNORE, IGNORE], [1, 2, 3, 4]])
    pred = torch.tensor([[5, 6, 0, 0], [5, 0, 0, 0], [1, 2, 3, 4]])
    # length 1: all right; 2: rows 0 and 2; 3: rows 0, 2 reach it, only row 2 right; 4: row 2
    assert prefix_accuracy(pred, labels).tolist() == pytest.approx([1.0, 2 / 3, 1 / 2, 1.0])
    t = task("parity")
    b = t.batch(64, 3, 10, np.random.default_rng(8))
    perfect = score(t, b.labels.clamp_min(0), b)
    assert perfect["accuracy"] == 1.0 and perfect["scaled_accuracy"] == 1.0
    s = score(t, torch.ones_like(b.labels), b)      # always "0": about chance
    assert abs(s["scaled_accuracy"]) < 0.5


def test_unknown_names_are_clear():
    with pytest.raises(ValueError, match="unknown task 'parityy'"):
        task("parityy")
    with pytest.raises(ValueError, match="unknown group"):
        group("S7")
    with pytest.raises(ValueError, match="lengths are odd"):
        task("mod_arithmetic").batch(2, 4, 4, np.random.default_rng(0))
    assert list(itertools.islice(TASK_NAMES, 1)) == ["parity"]
