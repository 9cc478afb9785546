"""Golden error messages: every malformed spec gets a positioned RecError quickly, never a traceback."""
import time

import pytest
import torch

import recdsl
from recdsl.parser import parse

from conftest import example

GOOD = """recurrence r(K = 4):
    state h[K]
    input x[K], g[K] log
    transition diag(exp(g))
    write x
    output y = h
"""


def error(text, **params):
    with pytest.raises(recdsl.RecError) as e:
        recdsl.load(text, **params) if isinstance(text, str) else parse(text, "x.rec")
    return e.value


def test_golden_unclosed_bracket():
    e = error(GOOD.replace("diag(exp(g))", "diag(exp(g)"))
    assert isinstance(e, recdsl.RecSyntaxError) and (e.line, e.column) == (4, 27)
    assert str(e) == ("<spec>:4:27: unexpected end of line\n"
                      "        transition diag(exp(g)\n"
                      "                              ^\n"
                      "hint: expected ')', ','")


def test_golden_unknown_name():
    e = error(GOOD.replace("write x", "write xx"))
    assert isinstance(e, recdsl.RecSemanticError) and (e.line, e.column) == (5, 11)
    assert str(e) == ("<spec>:5:11: unknown name 'xx'\n"
                      "        write xx\n"
                      "              ^\n"
                      "hint: did you mean 'x'?")


def test_golden_shape_mismatch():
    e = error(GOOD.replace("write x", "write outer(x, x)"))
    assert str(e) == ("<spec>:5:11: the write has shape [4, 4], the state [4]\n"
                      "        write outer(x, x)\n"
                      "              ^")


def test_golden_file_name_in_message(tmp_path):
    p = tmp_path / "bad.rec"
    p.write_text(GOOD.replace("log", "lg"))
    with pytest.raises(recdsl.RecSyntaxError) as e:
        recdsl.load(str(p))
    assert str(e.value).startswith(f"{p}:3:22: unexpected 'lg'")


@pytest.mark.parametrize("text,line,col,words", [
    ("", 1, 1, "empty spec"),
    ("# a comment\n\n   \n", 1, 1, "empty spec"),
    ("recurrence r():\n    state h[4]\x00\n", 2, 15, "control character"),
    ("recurrence r(K = 1e999):\n", 1, 18, "out of range"),
    ("recurrence r(K = " + "9" * 3900 + "):\n", 1, 18, "out of range"),
    ("recurrence r():\n    state h[4] [4]\n", 2, 16, "unexpected '['"),
    ("recurrence r():\n    transition __import__('os').system('echo hi')\n", 2, 27, "unexpected character"),
    (GOOD.replace("state h[K]", "state h[0]"), 2, 13, "a dimension must be an integer"),
    (GOOD.replace("state h[K]", "state h[2.5]"), 2, 13, "a dimension must be an integer"),
    (GOOD.replace("    transition diag(exp(g))\n", ""), 1, 12, "no `transition`"),
    (GOOD.replace("input x[K]", "input x[K], x[K]"), 3, 17, "already defined"),
    (GOOD.replace("diag(exp(g))", "diag(exp(g)) * diag(outer(x, x))"), 4, 31, "cannot scale a state"),
    (GOOD.replace("write x", "write delta(x, x, 1)"), 5, 11, "the write has shape [4, 4]"),
    (GOOD.replace("write x", "write delta(x, x[2], 1)"), 5, 21, "unexpected '['"),
    (GOOD.replace("write x", "write prev(x)"), 5, 16, "prev(x) needs the state or the output"),
    (GOOD + "    solve tol = 0.1\n", 7, 11, "`solve` without prev"),
    (GOOD.replace("diag(exp(g))", "householder(x)"), 4, 16, "householder takes 2 arguments"),
    (GOOD.replace("diag(exp(g))", "expp(g)"), 4, 16, "unknown function 'expp'"),
    (GOOD.replace("g[K] log", "g[K] in (1, 0)"), 3, 22, "empty interval"),
    (GOOD.replace("write x", "write x @ x"), 5, 11, "the write has shape []"),
    (GOOD.replace("log\n", "log\n    weight W[2, 2, K, K]\n").replace("write x", "write W @ x"), 6, 11,
     "a tensor of rank 1 to 3 on the left"),
    (GOOD.replace("log\n", "log\n    weight W[2, K, 3]\n").replace("write x", "write W @ x"), 6, 11,
     "contracts the last axis of [2, 4, 3] with the first of [4]: 3 != 4"),
])
def test_positioned_errors(text, line, col, words):
    e = error(text)
    assert (e.line, e.column) == (line, col), str(e)
    assert words in str(e)
    assert "Traceback" not in str(e)


def test_binary_garbage():
    e = error(bytes(range(256)) * 4)
    assert isinstance(e, recdsl.RecSyntaxError) and "not UTF-8" in str(e)
    e = error(b"recurrence r():\n  state \xff\xfe h[4]\n")
    assert (e.line, e.column) == (2, 9)


def test_hostile_sizes_fail_fast():
    for text, words in [
        ("recurrence r():\n    transition " + "(" * 5000 + "1" + ")" * 5000 + "\n", "at most 4000"),
        ("recurrence r():\n" + "    let a = (\n" * 5000, "nested deeper than 64"),
        ("recurrence r():\n    # " + "x" * (1 << 20) + "\n", "at most 1048576"),
        ("recurrence r():\n    let a = " + "(" * 70 + "b" + ")" * 70 + "\n", "nested deeper than 64"),
        ("recurrence r():\n    let a = " + "b + " * 900 + "b\n", "more than 100 operators"),
    ]:
        t = time.perf_counter()
        e = error(text)
        assert words in str(e) and time.perf_counter() - t < 2.0


def test_unknown_parameter_override():
    e = error(example("gla"), nope=3)
    assert "unknown parameter 'nope'" in str(e) and "this spec's parameters are" in str(e)
    e = error(example("gla"), K="4")
    assert "must be a finite number" in str(e)


def test_nothing_is_evaluated_as_python(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    text = GOOD.replace("write x", f"write open({str(marker)!r}, 'w')")
    error(text)
    assert not marker.exists()


def test_call_time_tensor_errors_name_argument_and_shapes():
    spec = recdsl.load(example("gla"), H=2, K=4, V=4)
    B, T = 3, 5
    q = k = v = torch.randn(B, T, 2, 4)
    with pytest.raises(ValueError) as e:
        spec.op(q, k, v, torch.randn(B, T, 2))
    assert str(e.value) == "input 'g': expected shape [B=3, T=5, H=2, K=4], got [3, 5, 2]"
    with pytest.raises(ValueError, match=r"input 'q': expected a floating-point tensor, got torch.int64"):
        spec.op(q.long(), k, v, torch.randn(B, T, 2, 4))
    with pytest.raises(ValueError, match=r"initial_state: expected shape \[3, 2, 4, 4\]"):
        spec.op(q, k, v, torch.randn(B, T, 2, 4), initial_state=torch.zeros(3, 4, 4))
    with pytest.raises(TypeError, match="unexpected argument"):
        spec.op(q, k, v, torch.randn(B, T, 2, 4), gg=1)
    with pytest.raises(ValueError, match="input 'g' is required"):
        spec.op(q, k, v)
    dp = recdsl.load(example("deltaproduct"), n_h=3, H=2, K=4, V=4)
    with pytest.raises(ValueError) as e:
        dp.op(q, torch.randn(B, T, 2, 2, 4), torch.randn(B, T, 2, 3, 4), torch.rand(B, T, 2, 3))
    assert str(e.value) == "input 'k': expected shape [B=3, T=5, H=2, n_h=3, K=4], got [3, 5, 2, 2, 4]"
    with pytest.raises(ValueError, match=r"cu_seqlens must rise from 0 to T = 5"):
        spec.op(q[:1], k[:1], v[:1], torch.randn(1, T, 2, 4), cu_seqlens=torch.tensor([0, 3, 4]))
