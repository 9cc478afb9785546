"""Fuzzing: random and mutated specs may load or fail, but only with a RecError."""
import glob
import os

from hypothesis import given, settings, strategies as st

import recdsl

from conftest import ROOT

SOURCES = [open(p).read() for p in sorted(glob.glob(os.path.join(ROOT, "examples", "*.rec")))]
WORDS = ["recurrence", "state", "input", "weight", "option", "let", "transition", "write", "output", "layer",
         "heads", "solve", "in", "log", "l2norm", "positive", "householder", "diag", "outer", "delta", "prev",
         "mix", "blockdiag", "linear", "exp", "I", "(", ")", "[", "]", ",", ":", "=", "+", "-", "*", "/", "@",
         "^", "\n", "    ", "#", "0", "1", "2.5", "1e9", "K", "V", "S", "h", "x", "\x00", "\t", "é", "\r\n"]
FUZZ = settings(max_examples=150, deadline=None, derandomize=True)


def loads_or_rec_error(text):
    try:
        recdsl.load(text if "\n" in text else text + "\n")
    except recdsl.RecError:
        pass


@FUZZ
@given(st.lists(st.sampled_from(WORDS), max_size=60).map(" ".join))
def test_random_token_soup(text):
    loads_or_rec_error(text)


@FUZZ
@given(st.text(max_size=300))
def test_random_text(text):
    loads_or_rec_error(text)


@FUZZ
@given(src=st.sampled_from(SOURCES), data=st.data())
def test_mutated_examples(src, data):
    n = len(src)
    i = data.draw(st.integers(0, n - 1))
    j = data.draw(st.integers(i, min(n, i + 40)))
    kind = data.draw(st.sampled_from(["delete", "duplicate", "insert", "swap"]))
    if kind == "delete":
        text = src[:i] + src[j:]
    elif kind == "duplicate":
        text = src[:j] + src[i:j] + src[j:]
    elif kind == "insert":
        text = src[:i] + data.draw(st.sampled_from(WORDS)) + src[i:]
    else:
        k = data.draw(st.integers(0, n - 1))
        text = src[:i] + src[k:k + (j - i)] + src[j:]
    loads_or_rec_error(text)
