"""Which metrics each task kind reports, with the task's language bound in.

The task layer attaches `metrics_for_kind(kind, language)` to every task it registers;
reports show `primary_metric(kind)` first.
"""

from __future__ import annotations

import functools
from typing import Callable

from palimix import languages
from palimix.errors import UnknownNameError, close_matches_hint
from palimix.metrics.anls import anls
from palimix.metrics.bleu import bleu
from palimix.metrics.cider import cider
from palimix.metrics.rouge import rouge_l
from palimix.metrics.text import accuracy, chrf, exact_match, sacrebleu_bleu
from palimix.metrics.vqa import vqa_accuracy

# kind -> (metric functions, whether each takes `language`), primary metric key first.
_TABLE: dict[str, tuple[tuple[Callable, bool], ...]] = {
    "caption": ((cider, True), (bleu, True), (rouge_l, True)),
    "vqa": ((vqa_accuracy, False),),
    "ocr": ((anls, False), (exact_match, False)),
    "classification": ((accuracy, False),),
    "translation": ((sacrebleu_bleu, True), (chrf, True)),
    # Span corruption targets are the dropped spans: reconstruction is right or wrong.
    "span_corruption": ((exact_match, False),),
    # A continuation has many right answers: score overlap, not identity.
    "prefix_lm": ((chrf, True), (sacrebleu_bleu, True)),
}

_PRIMARY = {
    "caption": "cider",
    "vqa": "vqa_accuracy",
    "ocr": "anls",
    "classification": "accuracy",
    "translation": "bleu",
    "span_corruption": "exact_match",
    "prefix_lm": "chrf",
}

KINDS = tuple(_TABLE)


def _check_kind(kind: str) -> None:
    if kind not in _TABLE:
        raise UnknownNameError(f"No metrics for task kind {kind!r}; kinds: {', '.join(KINDS)}.{close_matches_hint(kind, KINDS)}")


def _bind(fn: Callable, language: str) -> Callable:
    """fn with language bound, as a plain `(targets, predictions)` function that seqio
    accepts (it inspects the positional parameters) and that logs as e.g. `cider_de`."""

    def metric(targets, predictions):
        return fn(targets, predictions, language=language)

    functools.update_wrapper(metric, fn, assigned=("__module__", "__doc__"), updated=())
    metric.__name__ = metric.__qualname__ = f"{fn.__name__}_{language.replace('-', '_')}"
    del metric.__wrapped__  # seqio must see (targets, predictions), not fn's options.
    return metric


def metrics_for_kind(kind: str, language: str) -> list[Callable]:
    """The seqio metric functions for a task of `kind` in `language`.

    Raises UnknownNameError for an unknown kind and UnknownLanguageError for an
    unknown language code.
    """
    _check_kind(kind)
    code = languages.normalize(language)
    return [_bind(fn, code) if takes_language else fn for fn, takes_language in _TABLE[kind]]


def primary_metric(kind: str) -> str:
    """The metric key a report shows first for `kind` ("cider", "vqa_accuracy", ...)."""
    _check_kind(kind)
    return _PRIMARY[kind]
