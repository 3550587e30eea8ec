"""ROUGE-L as pycocoevalcap computes it for captions.

For each image: the longest common subsequence (LCS) of the prediction with each
reference gives precision LCS/len(prediction) and recall LCS/len(reference); the best
precision and the best recall (maximised separately, as pycocoevalcap does) combine into
F = (1 + b^2) P R / (R + b^2 P) with b = 1.2. The corpus score averages images, x 100.
An empty caption counts as one empty token, as pycocoevalcap's `split(" ")` makes it.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from palimix.metrics import _inputs
from palimix.metrics.tokenize import Tokenizer, tokenize_all

BETA = 1.2


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Allison-Dix/Hyyrö):
    one big-integer update per token of `b` instead of a len(a) x len(b) table."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    match_masks: dict[str, int] = {}
    for i, token in enumerate(a):
        match_masks[token] = match_masks.get(token, 0) | (1 << i)
    all_ones = (1 << len(a)) - 1
    v = all_ones
    for token in b:
        u = v & match_masks.get(token, 0)
        v = ((v + u) | (v - u)) & all_ones
    return len(a) - bin(v).count("1")


def rouge_l_scores(references: Sequence[Sequence[Sequence[str]]], hypotheses: Sequence[Sequence[str]]) -> np.ndarray:
    """Per-image ROUGE-L (0-1) of tokenized captions."""
    scores = np.zeros(len(hypotheses))
    for index, (hyp, refs) in enumerate(zip(hypotheses, references)):
        hyp = hyp or [""]
        best_precision = best_recall = 0.0
        for ref in refs:
            ref = ref or [""]
            lcs = lcs_length(ref, hyp)
            best_precision = max(best_precision, lcs / len(hyp))
            best_recall = max(best_recall, lcs / len(ref))
        if best_precision and best_recall:
            scores[index] = (1 + BETA**2) * best_precision * best_recall / (best_recall + BETA**2 * best_precision)
    return scores


def rouge_l(
    targets: Sequence[Any],
    predictions: Sequence[Any],
    *,
    language: str = "en",
    tokenizer: Tokenizer = None,
) -> dict[str, float]:
    """pycocoevalcap ROUGE-L x 100: {"rouge_l"}."""
    targets, predictions = _inputs.check_pairs("rouge_l", targets, predictions)
    references = _inputs.reference_lists("rouge_l", targets)
    hypotheses, tokenized_refs = tokenize_all(predictions, references, language=language, tokenizer=tokenizer)
    return {"rouge_l": float(np.mean(rouge_l_scores(tokenized_refs, hypotheses))) * 100.0}
