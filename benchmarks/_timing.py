"""Timing alternatives on a busy machine: interleaved rounds, medians with their spread.

A benchmark that compares alternatives A and B runs them in rounds, A then B, then B then A
(each round rotates the order by one), so load that comes and goes on a shared machine falls
on both alike and neither always runs first. Each alternative's seconds per call (one value per
round) are a :class:`Timing`; a speed ratio is taken *per round* (A's time over B's in the same
round) by :func:`ratio`, and both are summarised alike (:class:`Spread`): the median and the
lowest and highest value, plus the quartiles for JSON output.

How to read a figure: ``1.86 s (1.80-1.95, 5 rounds)`` is the median over 5 rounds, then the
fastest and slowest round; ``62x (55-70, 5 rounds)`` is the median of 5 per-round ratios, then
the lowest and highest. A wide bracket says the machine was busy; the median is the claim.

>>> fake = FakeClock()
>>> times = interleaved({"slow": fake.step(2.0), "fast": fake.step(0.5)}, 3, clock=fake)
>>> times["slow"].text(), times["fast"].text()
('2 s (2-2, 3 rounds)', '0.5 s (0.5-0.5, 3 rounds)')
>>> ratio(times["slow"], times["fast"]).text(unit="x")
'4x (4-4, 3 rounds)'
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FakeClock", "Spread", "Timing", "interleaved", "ratio", "round_orders"]


@dataclass(frozen=True)
class Spread:
    """Values of one quantity over rounds (seconds, or a ratio), in the order measured.

    >>> s = Spread((3.0, 1.0, 2.0, 10.0))
    >>> s.median, s.low, s.high, (s.q1, s.q3), s.n
    (2.5, 1.0, 10.0, (1.75, 4.75), 4)
    >>> s.text(fmt="{:.1f}", unit="x")
    '2.5x (1.0-10.0, 4 rounds)'
    >>> Spread((0.0123,)).text(scale=1000, unit=" ms")
    '12.3 ms (1 round)'
    """

    values: tuple[float, ...]

    def __post_init__(self) -> None:
        values = tuple(float(v) for v in self.values)
        if not values or not all(math.isfinite(v) for v in values):
            raise ValueError(f"a spread needs one or more finite values, got {self.values!r}")
        object.__setattr__(self, "values", values)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    @property
    def q1(self) -> float:
        return self._quartiles()[0]

    @property
    def q3(self) -> float:
        return self._quartiles()[2]

    def _quartiles(self) -> list[float]:
        if self.n == 1:
            return [self.values[0]] * 3
        return statistics.quantiles(self.values, n=4, method="inclusive")

    def text(self, *, fmt: str = "{:.3g}", unit: str = " s", scale: float = 1.0) -> str:
        """``median (low-high, n rounds)``, each value times ``scale`` written with ``fmt``."""
        med = fmt.format(self.median * scale)
        if self.n == 1:
            return f"{med}{unit} (1 round)"
        low, high = fmt.format(self.low * scale), fmt.format(self.high * scale)
        return f"{med}{unit} ({low}-{high}, {self.n} rounds)"

    def as_dict(self, *, digits: int = 6) -> dict[str, float | int]:
        """Median, low, high, quartiles and count, rounded, for JSON."""
        keys = ("median", "low", "high", "q1", "q3")
        return {k: round(getattr(self, k), digits) for k in keys} | {"n": self.n}


@dataclass(frozen=True)
class Timing(Spread):
    """Seconds per call of one alternative, one value per round; ``result`` is what its last
    call returned (so a benchmark can check the outputs it timed)."""

    result: Any = field(default=None, repr=False, compare=False)


def ratio(numerator: Spread, denominator: Spread) -> Spread:
    """Per-round ratios ``numerator / denominator`` (both measured in the same rounds).

    With ``ratio(slow, fast)`` the result says how many times faster ``fast`` was.

    >>> ratio(Spread((4.0, 9.0, 6.0)), Spread((1.0, 3.0, 1.0))).values
    (4.0, 3.0, 6.0)
    """
    if numerator.n != denominator.n:
        raise ValueError(f"ratio needs values from the same rounds, got {numerator.n} and "
                         f"{denominator.n}")  # fmt: skip
    if min(denominator.values) <= 0:
        raise ValueError(f"ratio needs positive denominators, got {denominator.values}")
    pairs = zip(numerator.values, denominator.values, strict=True)
    return Spread(tuple(a / b for a, b in pairs))


def round_orders(names: Sequence[str], repeats: int) -> Iterator[list[str]]:
    """The order of each round: ``names`` rotated by the round's index.

    >>> list(round_orders(["a", "b", "c"], 4))
    [['a', 'b', 'c'], ['b', 'c', 'a'], ['c', 'a', 'b'], ['a', 'b', 'c']]
    """
    names = list(names)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"need one or more distinct names, got {names}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for k in range(repeats):
        shift = k % len(names)
        yield names[shift:] + names[:shift]


def interleaved(
    fns: Mapping[str, Callable[[], Any]],
    repeats: int,
    *,
    number: int | Mapping[str, int] = 1,
    warmup: int = 0,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Timing]:
    """Time every function once per round for ``repeats`` rounds (:func:`round_orders`).

    ``number`` calls per timed value (an int for all, or per name; the value is their mean:
    use it for calls much shorter than the others). ``warmup`` untimed calls of each function
    come first. Returns a :class:`Timing` per name, in the order of ``fns``.
    """
    counts = {name: number if isinstance(number, int) else number.get(name, 1) for name in fns}
    if min(counts.values(), default=1) < 1 or warmup < 0:
        raise ValueError(f"number must be >= 1 and warmup >= 0, got {counts} and {warmup}")
    results: dict[str, Any] = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            results[name] = fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for order in round_orders(list(fns), repeats):
        for name in order:
            start = clock()
            for _ in range(counts[name]):
                results[name] = fns[name]()
            samples[name].append((clock() - start) / counts[name])
    return {name: Timing(tuple(samples[name]), result=results[name]) for name in fns}


class FakeClock:
    """A deterministic clock for tests and examples: time moves only when a step runs.

    >>> clock = FakeClock()
    >>> tick = clock.step(0.25)
    >>> clock(), tick(), clock()
    (0.0, 0.25, 0.25)
    """

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def step(self, *seconds: float) -> Callable[[], float]:
        """A function that advances the clock by the next of ``seconds`` (cycling) per call,
        and returns the new time."""
        durations = itertools.cycle(seconds)

        def run() -> float:
            self.now += next(durations)
            return self.now

        return run
