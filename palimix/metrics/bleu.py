"""Corpus BLEU-1..4 as pycocoevalcap computes it for captions (vectorized).

pycocoevalcap's `Bleu(4)` (David Chiang's bleu_scorer): clipped n-gram matches against
the maximum count in any reference of the image, summed over the corpus; the brevity
penalty uses, for each caption, the reference length closest to the caption's (the
shorter one on ties). It smooths with tiny constants (1e-15 on matches, 1e-9 on
n-gram totals) rather than with +1, so an order without any match drives the score to
~0. Scores are x 100. For sentence-level or detokenized BLEU as machine translation
reports it, use `sacrebleu_bleu`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from palimix.metrics import _inputs, _ngrams
from palimix.metrics.tokenize import Tokenizer, tokenize_all

_TINY = 1e-15  # pycocoevalcap's constants, kept for parity on degenerate corpora.
_SMALL = 1e-9


def closest_reference_lengths(hyp_lengths: np.ndarray, ref_lengths: Sequence[Sequence[int]]) -> np.ndarray:
    return np.array(
        [min(lengths, key=lambda length: (abs(length - h), length)) for h, lengths in zip(hyp_lengths, ref_lengths)]
    )


def bleu_from_tokens(
    references: Sequence[Sequence[Sequence[str]]], hypotheses: Sequence[Sequence[str]], *, n: int = 4
) -> list[float]:
    """Corpus BLEU-1..n (0-1 scale) of tokenized captions."""
    num_images = len(hypotheses)
    refs_per_image = np.array([len(r) for r in references])
    image_of_ref = np.repeat(np.arange(num_images), refs_per_image)
    ngrams = _ngrams.count_matrix(list(hypotheses) + [r for refs in references for r in refs], max_n=n)
    hyp_counts, ref_counts = ngrams.counts[:num_images], ngrams.counts[num_images:]
    max_ref_counts = _ngrams.group_max(ref_counts, image_of_ref, num_images)
    correct = ngrams.per_order(hyp_counts.minimum(max_ref_counts)).sum(axis=0)  # [n]
    hyp_lengths = ngrams.lengths[:num_images]
    guess = np.array([np.maximum(hyp_lengths - k, 0).sum() for k in range(n)], dtype=np.float64)

    ref_lengths = np.split(ngrams.lengths[num_images:], np.cumsum(refs_per_image)[:-1])
    test_length = float(hyp_lengths.sum())
    ref_length = float(closest_reference_lengths(hyp_lengths, ref_lengths).sum())

    precisions = (correct + _TINY) / (guess + _SMALL)
    scores = [float(np.prod(precisions[: k + 1]) ** (1.0 / (k + 1))) for k in range(n)]
    ratio = (test_length + _TINY) / (ref_length + _SMALL)
    if ratio < 1:
        scores = [s * float(np.exp(1 - 1 / ratio)) for s in scores]
    return scores


def bleu(
    targets: Sequence[Any],
    predictions: Sequence[Any],
    *,
    language: str = "en",
    tokenizer: Tokenizer = None,
) -> dict[str, float]:
    """pycocoevalcap corpus BLEU-1..4 x 100: {"bleu1", "bleu2", "bleu3", "bleu4"}."""
    targets, predictions = _inputs.check_pairs("bleu", targets, predictions)
    references = _inputs.reference_lists("bleu", targets)
    hypotheses, tokenized_refs = tokenize_all(predictions, references, language=language, tokenizer=tokenizer)
    scores = bleu_from_tokens(tokenized_refs, hypotheses)
    return {f"bleu{k + 1}": score * 100.0 for k, score in enumerate(scores)}
