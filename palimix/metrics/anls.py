"""ANLS, the Average Normalized Levenshtein Similarity of ST-VQA and DocVQA.

Per question: for each accepted answer, NL = edit distance / max(len(answer),
len(prediction)) on lower-cased, stripped strings; the similarity is 1 - NL if
NL < threshold (0.5) and 0 otherwise; the question scores its best similarity over
the accepted answers. The corpus score is the mean x 100. An empty prediction against
an empty answer is a perfect match (the formula's 0/0).
"""

from __future__ import annotations

from typing import Any, Sequence

import editdistance
import numpy as np

from palimix.errors import UsageError
from palimix.metrics import _inputs


def similarity(answer: str, prediction: str, threshold: float = 0.5) -> float:
    answer, prediction = answer.strip().lower(), prediction.strip().lower()
    longest = max(len(answer), len(prediction))
    if longest == 0:
        return 1.0
    normalized_distance = editdistance.eval(answer, prediction) / longest
    return 1.0 - normalized_distance if normalized_distance < threshold else 0.0


def anls(targets: Sequence[Any], predictions: Sequence[Any], *, threshold: float = 0.5) -> dict[str, float]:
    """ANLS x 100: {"anls"}. Each target is a question's accepted answers (a lone
    string counts as one)."""
    if not 0.0 < threshold <= 1.0:
        raise UsageError(f"anls: threshold must be in (0, 1], got {threshold}.")
    targets, predictions = _inputs.check_pairs("anls", targets, predictions)
    answer_lists = _inputs.reference_lists("anls", targets)
    scores = [max(similarity(a, p, threshold) for a in answers) for answers, p in zip(answer_lists, predictions)]
    return {"anls": float(np.mean(scores)) * 100.0}
