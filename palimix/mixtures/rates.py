"""Mixing rates: by example count, language temperature, caps, UniMax.

All functions return *relative* rates (seqio normalizes them when it samples).

- by examples: r_i = n_i, the number of examples of task i (an epoch of every task
  takes about the same time);
- temperature T (mT5, PaLI): r_i = min(n_i, max_rate) ** (1 / T). T = 1 is
  proportional sampling; large T flattens towards uniform, boosting small languages;
- UniMax (Chung et al., ICLR 2023, "UniMax: Fairer and more effective language
  sampling"): a budget of B examples is spread uniformly over the tasks, smallest
  first, but no task gets more than `max_epochs` passes over its data; what a small
  task cannot use goes to the larger ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from palimix.errors import UsageError


def temperature_rates(counts: Mapping[str, float], temperature: float = 1.0, max_rate: float | None = None) -> dict[str, float]:
    """{name: min(n, max_rate) ** (1 / temperature)}."""
    check_temperature(temperature)
    rates = {}
    for name, n in counts.items():
        n = float(n)
        if max_rate is not None:
            n = min(n, float(max_rate))
        rates[name] = n ** (1.0 / temperature) if n > 0 else 0.0
    return rates


def check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
        raise UsageError(f"temperature must be a positive number, got {temperature!r}.")
    return float(temperature)


@dataclasses.dataclass(frozen=True)
class UniMax:
    """UniMax sampling: `budget` examples in total (default: the sum of all tasks'
    examples, one pass over the data), spread uniformly over the tasks with at most
    `max_epochs` passes over any one task."""

    budget: float | None = None
    max_epochs: float = 1.0

    def __post_init__(self):
        if self.budget is not None and not self.budget > 0:
            raise UsageError(f"UniMax budget must be positive, got {self.budget!r}.")
        if not self.max_epochs > 0:
            raise UsageError(f"UniMax max_epochs must be positive, got {self.max_epochs!r}.")

    @classmethod
    def from_spec(cls, spec) -> "UniMax":
        """`True`, a UniMax, or a dict {"budget": ..., "max_epochs": ...} (gin-friendly)."""
        if isinstance(spec, UniMax):
            return spec
        if spec is True:
            return cls()
        if isinstance(spec, Mapping):
            unknown = set(spec) - {"budget", "max_epochs"}
            if unknown:
                raise UsageError(f"unimax= takes budget and max_epochs, not {sorted(unknown)}.")
            return cls(**spec)
        raise UsageError(f"unimax= must be True, a dict(budget=..., max_epochs=...) or UniMax(...), got {spec!r}.")

    def allocate(self, counts: Mapping[str, float]) -> dict[str, float]:
        """{name: number of examples to draw from it}: the UniMax allocation."""
        remaining = float(self.budget if self.budget is not None else sum(counts.values()))
        allocation = {}
        order: Sequence[str] = sorted(counts, key=lambda name: (counts[name], name))
        for i, name in enumerate(order):
            fair_share = remaining / (len(order) - i)
            allocation[name] = min(fair_share, self.max_epochs * float(counts[name]))
            remaining -= allocation[name]
        return allocation
