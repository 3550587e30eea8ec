"""Checks and normalisation of the (targets, predictions) every metric receives.

seqio passes whatever the task's postprocessor returned: a string per example for most
tasks, a list of references for captions and VQA (possibly as numpy arrays of bytes when
they come straight from a tf.data string tensor). Everything is turned into `str` and
`list[str]` here, so the metric code never meets bytes or numpy types, and bad input
fails here with a message that names the example.
"""

from __future__ import annotations

from typing import Any, Sequence

from palimix.errors import UsageError


def as_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, str):
        return value
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # numpy scalar
        return as_text(value.item())
    if value is None:
        return ""
    raise UsageError(f"Expected a string, got {type(value).__name__}: {value!r}")


def as_references(target: Any) -> list[str]:
    """One example's references as a list of strings; a lone string is one reference."""
    if isinstance(target, (str, bytes)) or (hasattr(target, "shape") and getattr(target, "shape", None) == ()):
        return [as_text(target)]
    return [as_text(t) for t in target]


def check_pairs(metric: str, targets: Sequence[Any], predictions: Sequence[Any]) -> tuple[list[Any], list[str]]:
    """Equal, non-zero lengths; predictions as strings."""
    targets, predictions = list(targets), list(predictions)
    if len(targets) != len(predictions):
        raise UsageError(
            f"{metric}: {len(targets)} targets but {len(predictions)} predictions; "
            "each prediction needs the targets of its own example."
        )
    if not targets:
        raise UsageError(f"{metric}: no examples to score (targets and predictions are empty).")
    return targets, [as_text(p) for p in predictions]


def reference_lists(metric: str, targets: Sequence[Any]) -> list[list[str]]:
    """Each example's references; an example without any reference is an error."""
    lists = [as_references(t) for t in targets]
    for index, refs in enumerate(lists):
        if not refs:
            raise UsageError(f"{metric}: example {index} has no reference to compare with.")
    return lists
