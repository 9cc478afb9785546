"""Host-side integer helpers for launch geometry. triton.cdiv and triton.next_power_of_2 are
ConstexprFunctions, about 2 us per call from Python; an op's call makes dozens of them, which counts
where a call is bound by host time (the (8, 1024, 8, 64) benchmark shapes)."""
import os

import triton


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for positive b (torch.SymInt sizes too)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of 2 >= n (n >= 1)."""
    if not isinstance(n, int):   # a symbolic size: Triton's bit arithmetic keeps it symbolic
        return triton.next_power_of_2(n)
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def env_ints(name: str, fields: str) -> tuple[int, ...] | None:
    """The integers of environment variable `name` (a sweep's launch-geometry override, "a,b,c"), one per
    comma-separated field of `fields`; None where it is unset or empty."""
    text = os.environ.get(name)
    if not text:
        return None
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != len(fields.split(",")):
        raise ValueError(f"{name}={text!r}: expected {len(fields.split(','))} integers '{fields}'")
    return values
