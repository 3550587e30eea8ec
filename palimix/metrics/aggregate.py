"""Per-language tables and macro averages over languages for a mixture's evaluation.

Each per-language task reports its own metrics (seqio does that: `{task: {metric:
value}}`). A multilingual benchmark is summarised the way the PaLI paper reports
Crossmodal-3600: the unweighted mean over languages (each language counts once, however
many examples it has), next to the table of every language.

    >>> report = summarize(
    ...     {"xm3600_en": {"cider": 80.0}, "xm3600_de": {"cider": 60.0}},
    ...     {"xm3600_en": "en", "xm3600_de": "de"},
    ... )
    >>> report.macro["cider"]
    70.0
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Callable, Mapping, Optional, Union

from palimix import languages
from palimix.errors import UsageError

Metrics = Mapping[str, float]


@dataclasses.dataclass(frozen=True)
class LanguageReport:
    per_language: dict[str, dict[str, float]]  # language -> metric -> value
    macro: dict[str, float]  # metric -> mean over the languages that report it
    languages_counted: dict[str, int]  # metric -> how many languages went into `macro`

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False, sort_keys=True)

    def to_markdown(self, metrics: Optional[list[str]] = None, digits: int = 1) -> str:
        """A table: one row per language (sorted by code), then the macro average."""
        metrics = metrics or sorted(self.macro)
        header = "| language | " + " | ".join(metrics) + " |"
        rule = "|---|" + "---:|" * len(metrics)
        rows = [header, rule]

        def cell(values: Mapping[str, float], metric: str) -> str:
            value = values.get(metric)
            return "" if value is None else f"{value:.{digits}f}"

        for code in sorted(self.per_language):
            rows.append(f"| {code} | " + " | ".join(cell(self.per_language[code], m) for m in metrics) + " |")
        counted = {m: self.languages_counted.get(m, 0) for m in metrics}
        label = f"macro ({max(counted.values(), default=0)} languages)"
        rows.append(f"| **{label}** | " + " | ".join(cell(self.macro, m) for m in metrics) + " |")
        return "\n".join(rows)


def summarize(
    task_metrics: Mapping[str, Metrics],
    task_languages: Union[Mapping[str, str], Callable[[str], Optional[str]]],
) -> LanguageReport:
    """Group per-task metrics by language and macro-average them.

    task_metrics: {task name: {metric: value}} as seqio/t5x evaluation returns it.
    task_languages: {task name: language code} or a function task name -> code (None
    to leave a task out, e.g. an English-only auxiliary task).

    Several tasks with the same language (say COCO and XM3600 English) are averaged
    within the language first, so every language weighs the same in the macro average.
    A metric that some languages lack is averaged over those that have it, and
    `languages_counted` says over how many. NaN values (seqio's "no examples") are
    skipped.
    """
    language_of = task_languages if callable(task_languages) else task_languages.get
    grouped: dict[str, dict[str, list[float]]] = {}
    for task, metrics in task_metrics.items():
        code = language_of(task)
        if code is None:
            continue
        code = languages.normalize(code)
        for metric, value in metrics.items():
            value = _as_float(task, metric, value)
            if value is not None and not math.isnan(value):
                grouped.setdefault(code, {}).setdefault(metric, []).append(value)
    per_language = {
        code: {metric: sum(values) / len(values) for metric, values in by_metric.items()}
        for code, by_metric in grouped.items()
    }
    metric_names = sorted({m for values in per_language.values() for m in values})
    macro, counted = {}, {}
    for metric in metric_names:
        values = [row[metric] for row in per_language.values() if metric in row]
        macro[metric] = sum(values) / len(values)
        counted[metric] = len(values)
    return LanguageReport(per_language=per_language, macro=macro, languages_counted=counted)


def _as_float(task: str, metric: str, value) -> Optional[float]:
    """Metric values as floats; seqio also reports non-scalar things (text previews,
    histograms) under some keys: those are left out of the averages."""
    if hasattr(value, "value") and not isinstance(value, (int, float)):  # seqio.metrics.Scalar
        value = value.value
    if isinstance(value, bool):
        raise UsageError(f"{task}/{metric}: expected a number, got a bool.")
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
