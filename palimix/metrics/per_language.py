"""Per-language scores from ONE seqio task whose examples are in many languages.

seqio scores a task with `metric_fn(targets, predictions)`; a multilingual task
(`add_task(per_language=False)`) must still report each language on its own, scored
with that language's metrics (CIDEr on jieba words for Chinese, ...), and the
unweighted mean over languages. Two seqio mechanisms carry the language to the
metric function, so `t5x.eval` and `palimix eval` get the same keys:

- the task's postprocess_fn (it receives each `example`) keeps the example's
  language with its target: `language_target(language, target)`;
- `by_language(metrics_for)` is the metric function: it groups the examples by that
  language, calls `metrics_for(language)`'s functions on each group and returns

      {"cider/de": ..., "cider/en": ..., "cider/macro": ..., "examples/de": ..., ...}

`split_keys` reads such a result back into {language: {metric: value}}.
"""

from __future__ import annotations

import collections
from typing import Callable, Mapping, Sequence

# The key suffix of the mean over languages, and the key counting each language's examples.
MACRO = "macro"
EXAMPLES = "examples"
SEPARATOR = "/"


def language_target(language: str, target) -> dict:
    """A postprocessed target that remembers its example's language (a dict: seqio's
    JSON logger writes it as it is)."""
    return {"language": language, "target": target}


def takes_scores(metric_fn: Callable) -> bool:
    """Whether seqio calls `metric_fn` with the targets' scores (log-likelihoods) rather
    than predictions: seqio decides by its positional parameters, `(targets, scores)`."""
    import inspect

    positional = [p.name for p in inspect.signature(metric_fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    return positional == ["targets", "scores"]


def by_language(metrics_for: Callable[[str], Sequence[Callable]], name: str = "per_language", *,
                scores: bool = False) -> Callable:
    """A seqio metric function `(targets, predictions) -> {metric/language: value}`
    over targets made by `language_target`; with scores=True `(targets, scores)`, a score
    metric (`metrics_for` then gives score metrics)."""

    def metric(targets, predictions):
        groups: dict[str, tuple[list, list]] = collections.defaultdict(lambda: ([], []))
        for target, prediction in zip(targets, predictions):
            if not isinstance(target, Mapping) or "language" not in target:
                raise TypeError(f"{name}: targets must come from language_target(); got {target!r} "
                                "(the task's postprocess_fn keeps the language with the target).")
            group = groups[target["language"]]
            group[0].append(target["target"])
            group[1].append(prediction)
        values, per_metric = {}, collections.defaultdict(list)
        for language in sorted(groups):
            language_targets, language_predictions = groups[language]
            values[f"{EXAMPLES}{SEPARATOR}{language}"] = float(len(language_targets))
            for fn in metrics_for(language):
                for key, value in fn(language_targets, language_predictions).items():
                    values[f"{key}{SEPARATOR}{language}"] = value
                    per_metric[key].append(value)
        for key, scores in per_metric.items():
            values[f"{key}{SEPARATOR}{MACRO}"] = sum(scores) / len(scores)
        return values

    if scores:
        def score_metric(targets, scores):
            return metric(targets, scores)

        score_metric.__name__ = score_metric.__qualname__ = name
        return score_metric
    metric.__name__ = metric.__qualname__ = name
    return metric


def split_keys(values: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """{language: {metric: value}} from a `by_language` result (the macro keys and the
    example counts left out); {} for a result without per-language keys."""
    # The languages are those with an example count: other keys may hold a "/" too.
    table: dict[str, dict[str, float]] = {language: {} for language in example_counts(values)}
    for key, value in values.items():
        metric, separator, language = key.rpartition(SEPARATOR)
        if separator and language in table and metric != EXAMPLES:
            table[language][metric] = value
    return table


def example_counts(values: Mapping[str, float]) -> dict[str, int]:
    """{language: examples scored} from a `by_language` result."""
    prefix = EXAMPLES + SEPARATOR
    return {key[len(prefix):]: int(value) for key, value in values.items() if key.startswith(prefix)}
