"""Metrics for image-code targets (a VQGAN's code ids, `palimix.models.vqgan`).

`code_accuracy(targets, predictions)`: the share (x 100) of code positions predicted
exactly, over all target positions; a prediction shorter than its target counts its
missing positions as wrong, extra predicted codes are ignored (the target fixes h*w).

`code_perplexity(targets, scores)`: seqio's score-metric shape (`scores` = each example's
total log-likelihood of its target, natural log): exp(-sum(scores) / sum(target codes)),
the per-code perplexity (1 = certain; the codebook size = uniform guessing). Not on the
0-100 scale. `unigram_perplexity(train, targets)`: its trivial baseline, every code drawn
from the training targets' code frequencies.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from palimix.errors import UsageError


def _codes(value: Any, metric: str, index: int) -> np.ndarray:
    codes = np.asarray(value)
    if codes.dtype.kind not in "iu" or codes.ndim > 2:
        raise UsageError(f"{metric}: example {index} is not a sequence or grid of integer codes: {value!r:.80}")
    return codes.reshape(-1)


def _check(metric: str, targets: Sequence[Any], others: Sequence[Any]) -> tuple[list, list]:
    targets, others = list(targets), list(others)
    if len(targets) != len(others):
        raise UsageError(f"{metric}: {len(targets)} targets but {len(others)} predictions or scores.")
    if not targets:
        raise UsageError(f"{metric}: no examples to score.")
    return targets, others


def code_accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    """{"code_accuracy"}: exactly predicted code positions x 100 over all target positions."""
    targets, predictions = _check("code_accuracy", targets, predictions)
    hits = total = 0
    for i, (target, prediction) in enumerate(zip(targets, predictions)):
        t = _codes(target, "code_accuracy", i)
        p = _codes(prediction, "code_accuracy", i)[:len(t)]
        hits += int((t[:len(p)] == p).sum())
        total += len(t)
    if not total:
        raise UsageError("code_accuracy: every target is empty.")
    return {"code_accuracy": 100.0 * hits / total}


def code_perplexity(targets: Sequence[Any], scores: Sequence[float], *, extra_tokens: int = 0) -> dict[str, float]:
    """{"code_perplexity"}: exp(-total log-likelihood / total target tokens).

    extra_tokens: tokens each target has beyond its codes that the scores cover too (the
    `<img>` token and EOS of palimix's code texts: 2; palimix.image_codes)."""
    targets, scores = _check("code_perplexity", targets, scores)
    total = sum(len(_codes(t, "code_perplexity", i)) + extra_tokens for i, t in enumerate(targets))
    if not total:
        raise UsageError("code_perplexity: every target is empty.")
    return {"code_perplexity": float(np.exp(-np.sum(np.asarray(scores, np.float64)) / total))}


def unigram_perplexity(train_codes: Sequence[Any], targets: Sequence[Any], *, codebook_size: int,
                       smoothing: float = 1.0) -> dict[str, float]:
    """{"code_perplexity"} of a baseline that ignores the prompt and the position: each
    target code drawn from the code frequencies of `train_codes` (add-`smoothing` counts
    over the codebook, so an unseen code has a finite cost). Uniform guessing scores
    `codebook_size`."""
    counts = np.full(codebook_size, float(smoothing))
    for i, codes in enumerate(train_codes):
        np.add.at(counts, _codes(codes, "unigram_perplexity", i), 1.0)
    log_p = np.log(counts / counts.sum())
    targets = list(targets)
    scores = [float(log_p[_codes(t, "unigram_perplexity", i)].sum()) for i, t in enumerate(targets)]
    return code_perplexity(targets, scores)
