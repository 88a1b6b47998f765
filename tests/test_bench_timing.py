"""Tests for benchmarks/_timing.py (interleaved rounds, medians with spread, per-round ratios),
on deterministic fake clocks."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "_timing.py"
_spec = importlib.util.spec_from_file_location("bench_timing", _PATH)
timing = importlib.util.module_from_spec(_spec)
sys.modules["bench_timing"] = timing  # dataclasses look their module up
_spec.loader.exec_module(timing)


def test_spread_statistics_on_literals():
    s = timing.Spread((3.0, 1.0, 2.0, 10.0))
    assert (s.n, s.median, s.low, s.high) == (4, 2.5, 1.0, 10.0)
    assert (s.q1, s.q3) == (1.75, 4.75)  # inclusive quartiles of 1, 2, 3, 10
    assert s.values == (3.0, 1.0, 2.0, 10.0)  # kept in the order measured
    odd = timing.Spread((5, 1, 4))
    assert (odd.median, odd.q1, odd.q3) == (4.0, 2.5, 4.5)
    one = timing.Spread((0.25,))
    assert (one.median, one.low, one.high, one.q1, one.q3) == (0.25,) * 5
    assert one.as_dict() == {"median": 0.25, "low": 0.25, "high": 0.25, "q1": 0.25, "q3": 0.25,
                             "n": 1}  # fmt: skip


def test_spread_text():
    s = timing.Spread((0.010, 0.014, 0.012))
    assert s.text() == "0.012 s (0.01-0.014, 3 rounds)"
    assert s.text(fmt="{:.1f}", unit=" ms", scale=1000) == "12.0 ms (10.0-14.0, 3 rounds)"
    assert timing.Spread((62.51,)).text(fmt="{:.1f}", unit="x") == "62.5x (1 round)"


@pytest.mark.parametrize("values", [(), (1.0, math.nan), (math.inf,)])
def test_spread_rejects_empty_or_non_finite(values):
    with pytest.raises(ValueError, match="finite"):
        timing.Spread(values)


def test_round_orders_rotate():
    assert list(timing.round_orders(["a", "b"], 3)) == [["a", "b"], ["b", "a"], ["a", "b"]]
    assert list(timing.round_orders(["x"], 2)) == [["x"], ["x"]]
    for names, repeats in ((["a", "a"], 1), ([], 1), (["a"], 0)):
        with pytest.raises(ValueError):
            list(timing.round_orders(names, repeats))


def test_interleaved_on_a_fake_clock():
    clock = timing.FakeClock()
    calls = []

    def alternative(name, *seconds):
        step = clock.step(*seconds)

        def run():
            calls.append(name)
            step()
            return f"{name}{len(calls)}"

        return run

    times = timing.interleaved(
        {"a": alternative("a", 2.0), "b": alternative("b", 1.0, 2.0, 3.0)},
        3,
        number={"b": 2},
        warmup=1,
        clock=clock,
    )
    # warm-up a, b; then rounds a,b,b / b,b,a / a,b,b (b runs twice per value)
    assert calls == ["a", "b", "a", "b", "b", "b", "b", "a", "a", "b", "b"]
    assert times["a"].values == (2.0, 2.0, 2.0)
    # b's calls take 1, 2, 3, 1, 2, 3, 1 s: the warm-up 1, then one value per two calls
    assert times["b"].values == (2.5, 1.5, 2.0)
    assert times["a"].result == "a9" and times["b"].result == "b11"  # the last call's output
    assert list(times) == ["a", "b"]
    assert timing.ratio(times["a"], times["b"]).values == (0.8, 2.0 / 1.5, 1.0)


def test_interleaving_cancels_a_steady_drift():
    """The machine slows down 20 % per call: per-round ratios of interleaved runs stay near
    the true 2x, while timing all of A and then all of B would not."""
    clock = timing.FakeClock()
    load = 1.0

    def work(seconds):
        def run():
            nonlocal load
            clock.now += seconds * load
            load *= 1.2

        return run

    times = timing.interleaved({"slow": work(2.0), "fast": work(1.0)}, 6, clock=clock)
    r = timing.ratio(times["slow"], times["fast"])
    # rounds alternate which side runs first: 2 / 1.2 and 2 x 1.2 in turn
    assert r.values == pytest.approx((2 / 1.2, 2 * 1.2) * 3)
    assert 1.9 < r.median < 2.1
    load = 1.0
    sequential = {name: timing.interleaved({name: work(s)}, 6, clock=clock)[name]
                  for name, s in (("slow", 2.0), ("fast", 1.0))}  # fmt: skip
    assert sequential["slow"].median / sequential["fast"].median < 1.0  # drift inverts it


def test_ratio_needs_the_same_rounds_and_positive_times():
    with pytest.raises(ValueError, match="same rounds"):
        timing.ratio(timing.Spread((1.0, 2.0)), timing.Spread((1.0,)))
    with pytest.raises(ValueError, match="positive"):
        timing.ratio(timing.Spread((1.0,)), timing.Spread((0.0,)))


def test_interleaved_bad_options():
    clock = timing.FakeClock()
    with pytest.raises(ValueError, match="number"):
        timing.interleaved({"a": clock.step(1.0)}, 2, number=0, clock=clock)
    with pytest.raises(ValueError, match="warmup"):
        timing.interleaved({"a": clock.step(1.0)}, 2, warmup=-1, clock=clock)
    with pytest.raises(ValueError, match="repeats"):
        timing.interleaved({"a": clock.step(1.0)}, 0, clock=clock)


def test_the_module_examples_hold():
    import doctest

    assert doctest.testmod(timing).failed == 0
