"""`add_mixture`: seqio mixtures with rates by examples, explicit, temperature or UniMax.

Rates are computed lazily, when a dataset is first built: registering a mixture
(on import) reads no data. Mixtures of mixtures work for every kind of rate (seqio
itself only takes fixed numbers for sub-mixtures).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping, Sequence

import seqio

from palimix.errors import UnknownNameError, UsageError, close_matches_hint
from palimix.mixtures.rates import UniMax, check_temperature, temperature_rates

_NAME = re.compile(r"^[\w\d\.\:_]+$")  # What seqio's registries accept.


def check_new_name(name: str, overwrite: bool = False) -> str:
    """Raises UsageError if `name` is not a valid seqio name or is already a task or
    mixture (unless `overwrite`, which removes the old one)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise UsageError(f"{name!r} is not a valid task/mixture name: use letters, digits, '_', '.' and ':'.")
    exists = name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names()
    if exists and not overwrite:
        raise UsageError(f"a task or mixture named {name!r} is already registered; pass overwrite=True to replace it.")
    if exists:
        seqio.TaskRegistry.remove(name)
        seqio.MixtureRegistry.remove(name)
    return name


def get_provider(name_or_provider):
    """A registered task or mixture (or the object itself), or UnknownNameError."""
    if isinstance(name_or_provider, seqio.DatasetProviderBase):
        return name_or_provider
    name = str(name_or_provider)
    if name in seqio.TaskRegistry.names():
        return seqio.TaskRegistry.get(name)
    if name in seqio.MixtureRegistry.names():
        return seqio.MixtureRegistry.get(name)
    known = list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names())
    raise UnknownNameError(f"no task or mixture named {name!r} is registered.{close_matches_hint(name, known)}")


def num_examples(provider, split: str = "train") -> int:
    """Examples of a task or mixture in `split`, from its source's `num_input_examples`."""
    try:
        n = provider.num_input_examples(split)
    except Exception as e:  # noqa: BLE001 - re-raised with the task's name
        raise UsageError(f"cannot count the {split!r} examples of {provider.name!r} for its mixing rate: {e}") from e
    if n is None:
        raise UsageError(
            f"{provider.name!r} does not know how many {split!r} examples it has (its source gives no "
            "num_input_examples), so rate='examples', temperature and UniMax cannot weigh it: give "
            "explicit rates (rate={name: weight}).")
    return int(n)


class _LazyRates:
    """The rates of one mixture's entries, computed together on first use.

    seqio calls `rate(task_or_mixture)` for each entry; the first call counts every
    entry's examples (temperature and UniMax need all counts at once)."""

    def __init__(self, names: Sequence[str], compute: Callable[[], dict[str, float]]):
        self.names = list(names)
        self._compute = compute
        self._rates: dict[str, float] | None = None
        self._lock = threading.Lock()

    def rates(self) -> dict[str, float]:
        with self._lock:
            if self._rates is None:
                self._rates = self._compute()
            return self._rates

    def __call__(self, provider) -> float:
        return self.rates()[provider.name]


class PalimixMixture(seqio.Mixture):
    """A seqio.Mixture whose sub-mixture rates may be callables (evaluated lazily)."""

    def __init__(self, name, tasks, *, description: str = "", rate_table: _LazyRates | None = None, **kwargs):
        super().__init__(name, tasks, **kwargs)
        self.description = description
        self._rate_table = rate_table

    def _get_submixture_rate(self, mix) -> float:
        rate = self.rate_per_task_name[mix.name]
        return float(rate(mix) if callable(rate) else rate)

    def entry_rates(self) -> dict[str, float]:
        """{entry (task or sub-mixture) name: its relative rate}, as sampling uses them."""
        return {
            name: float(rate(self._task_map[name]) if callable(rate) else rate)
            for name, rate in self.rate_per_task_name.items()
        }


def effective_rates(mixture) -> dict[str, float]:
    """{task name: probability that an example of the mixture comes from it} (sums to 1)."""
    if isinstance(mixture, seqio.Task):
        return {mixture.name: 1.0}
    rates = {task.name: mixture.get_rate(task) for task in mixture.tasks}
    total = sum(rates.values())
    if total <= 0:
        raise UsageError(f"mixture {mixture.name!r} has no positive rates.")
    return {name: r / total for name, r in rates.items()}


def add_mixture(
    name: str,
    tasks: Sequence,
    *,
    rate="examples",
    temperature: float = 1.0,
    max_rate: float | None = None,
    unimax=None,
    split: str = "train",
    overwrite: bool = False,
) -> PalimixMixture:
    """Registers the seqio mixture `name` over `tasks` (task or mixture names or objects).

    Args:
      rate: the base rate of each entry:
        "examples"  its number of `split` examples (sub-mixtures: their total);
        a dict      {entry name: weight} for every entry;
        a number    the same weight for every entry (uniform);
        a callable  seqio style: fn(task_or_mixture) -> weight.
      temperature: rates become base ** (1 / temperature) (p ~ n^(1/T), as mT5 and
        PaLI sample languages); 1 keeps them.
      max_rate: cap each base rate before the temperature (seqio's `maximum`).
      unimax: UniMax sampling over the entries instead of temperature (True,
        {"budget": examples, "max_epochs": 1.0} or `UniMax(...)`); needs rate="examples".
      split: whose example counts weigh the entries.
      overwrite: replace an existing task or mixture of this name.
    Returns the registered mixture.
    """
    check_new_name(name, overwrite)
    entries = [get_provider(t) for t in tasks]
    if not entries:
        raise UsageError(f"mixture {name!r} needs at least one task.")
    entry_names = [e.name for e in entries]
    duplicates = sorted({n for n in entry_names if entry_names.count(n) > 1})
    if duplicates:
        raise UsageError(f"mixture {name!r} lists {duplicates} more than once.")
    if name in entry_names:
        raise UsageError(f"mixture {name!r} cannot contain itself.")
    check_temperature(temperature)
    by_name = dict(zip(entry_names, entries))

    if unimax is not None and unimax is not False:
        if rate != "examples" or temperature != 1.0:
            raise UsageError("unimax= replaces rate and temperature: leave rate='examples' and temperature=1.")
        policy = UniMax.from_spec(unimax)
        description = f"unimax(budget={policy.budget}, max_epochs={policy.max_epochs})"

        def compute():
            return policy.allocate({n: num_examples(p, split) for n, p in by_name.items()})
    else:
        base = _base_rates(name, rate, entry_names, by_name, split)
        description = _describe(rate, temperature, max_rate)

        def compute():
            return temperature_rates(base(), temperature, max_rate)

    table = _LazyRates(entry_names, compute)
    try:
        mixture = PalimixMixture(name, [(e, table) for e in entries], description=description, rate_table=table)
    except ValueError as e:  # seqio: tasks with different output features.
        raise UsageError(f"cannot mix {entry_names}: {e}") from None
    seqio.MixtureRegistry.add_provider(name, mixture)
    return mixture


def _base_rates(name, rate, entry_names, by_name, split) -> Callable[[], dict[str, float]]:
    if isinstance(rate, str):
        if rate != "examples":
            raise UsageError(f"rate={rate!r}: use 'examples', a dict {{name: weight}}, a number or a callable.")
        return lambda: {n: float(num_examples(p, split)) for n, p in by_name.items()}
    if isinstance(rate, Mapping):
        missing = [n for n in entry_names if n not in rate]
        extra = [n for n in rate if n not in by_name]
        if missing or extra:
            raise UsageError(f"mixture {name!r}: rate dict is missing {missing} / names unknown entries {extra}.")
        for n in entry_names:
            _check_weight(n, rate[n])
        return lambda: {n: float(rate[n](by_name[n]) if callable(rate[n]) else rate[n]) for n in entry_names}
    if callable(rate):
        return lambda: {n: _check_weight(n, rate(p)) for n, p in by_name.items()}
    _check_weight("every entry", rate)
    return lambda: {n: float(rate) for n in entry_names}


def _check_weight(name, weight) -> float:
    if callable(weight):
        return weight
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
        raise UsageError(f"the rate of {name} must be a non-negative number, got {weight!r}.")
    return float(weight)


def _describe(rate, temperature, max_rate) -> str:
    base = rate if isinstance(rate, str) else ("explicit" if isinstance(rate, Mapping) else
                                                "callable" if callable(rate) else f"uniform({rate})")
    parts = [base]
    if max_rate is not None:
        parts.append(f"max_rate={max_rate}")
    if temperature != 1.0:
        parts.append(f"temperature={temperature}")
    return ", ".join(parts)
