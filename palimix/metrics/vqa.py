"""VQA accuracy, as the official VQA evaluation (GT-Vision-Lab/VQA, vqaEval.py) computes it.

A question has (usually ten) human answers. The prediction's accuracy against the
answers is averaged over the leave-one-out subsets: for each human answer i,
min(1, #{j != i : answer_j == prediction} / 3). So a prediction that three or more of
the other annotators gave scores 1, and matching a single annotator scores 0.3.

Normalisation (tables in palimix/data/vqa_normalization.json, transcribed from the
official script): punctuation removed or replaced by a space, periods not followed by a
digit removed, lower-casing, number words -> digits ("two" -> "2"), articles dropped,
contractions restored ("dont" -> "don't").

Two semantics:

* ``"official"`` (default): exactly the official script. Newlines and tabs become
  spaces and both sides are stripped, but the normalisation above is applied (to the
  prediction and to the answers) *only when the human answers disagree*. When all ten
  annotators wrote "no", a prediction "No" or "no." scores 0. Use this to compare with
  published VQAv2 numbers, which all come from this script.
* ``"normalized"``: both sides are always normalised, so "No" against ten "no" scores
  1. Use it for model development and for datasets whose answers were not normalised by
  their annotation tool (the VQAv2 answers were, which is why the official script can
  skip the step).

A question with a single human answer has no leave-one-out subset (the official script
would score it 0): palimix scores it 1 for a match and 0 otherwise.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import re
from typing import Any, Sequence

import numpy as np

from palimix.errors import UsageError
from palimix.metrics import _inputs

SEMANTICS = ("official", "normalized")


@functools.lru_cache(maxsize=None)
def _tables() -> dict[str, Any]:
    path = importlib.resources.files("palimix") / "data" / "vqa_normalization.json"
    tables = json.loads(path.read_text(encoding="utf-8"))
    tables["period_strip"] = re.compile(tables["period_strip"])
    tables["comma_strip"] = re.compile(tables["comma_strip"])
    tables["articles"] = frozenset(tables["articles"])
    return tables


def process_punctuation(text: str) -> str:
    """The official `processPunctuation`: each punctuation mark is deleted when it
    touches a space (or when the text has a digit,digit comma) and becomes a space
    otherwise; then periods not followed by a digit are deleted."""
    tables = _tables()
    out = text
    has_number_comma = tables["comma_strip"].search(text) is not None
    for mark in tables["punctuation"]:
        if mark + " " in text or " " + mark in text or has_number_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    # The official call passes re.UNICODE (= 32) as sub()'s *count* argument, so only the
    # first 32 periods go; kept for parity.
    return tables["period_strip"].sub("", out, 32)


def process_digit_article(text: str) -> str:
    """The official `processDigitArticle`: lower-case, number words to digits, drop
    articles, restore contractions."""
    tables = _tables()
    words = [tables["number_words"].get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in tables["articles"]]
    return " ".join(tables["contractions"].get(w, w) for w in words)


def _clean(answer: str) -> str:
    return answer.replace("\n", " ").replace("\t", " ").strip()


@functools.lru_cache(maxsize=65536)  # Answers repeat a lot ("yes", "2", ...).
def normalize_answer(answer: str) -> str:
    """The full official normalisation of one answer."""
    return process_digit_article(process_punctuation(_clean(answer)))


def question_accuracy(answers: Sequence[str], prediction: str, semantics: str = "official") -> float:
    """Accuracy (0-1) of one prediction against one question's human answers."""
    answers = [_clean(a) for a in answers]
    prediction = _clean(prediction)
    if semantics == "normalized" or (semantics == "official" and len(set(answers)) > 1):
        answers = [normalize_answer(a) for a in answers]
        prediction = normalize_answer(prediction)
    matches = sum(a == prediction for a in answers)
    if len(answers) == 1:
        return float(matches)
    # Leaving out answer i leaves matches - [answer_i matched] matching answers.
    return float(np.mean([min(1.0, (matches - (a == prediction)) / 3.0) for a in answers]))


def vqa_accuracy(
    targets: Sequence[Any], predictions: Sequence[Any], *, semantics: str = "official"
) -> dict[str, float]:
    """VQA accuracy x 100: {"vqa_accuracy"}. Each target is one question's list of
    human answers (a lone string counts as one answer)."""
    if semantics not in SEMANTICS:
        raise UsageError(f"Unknown VQA semantics {semantics!r}; choose one of {', '.join(SEMANTICS)}.")
    targets, predictions = _inputs.check_pairs("vqa_accuracy", targets, predictions)
    answer_lists = _inputs.reference_lists("vqa_accuracy", targets)
    scores = [question_accuracy(a, p, semantics) for a, p in zip(answer_lists, predictions)]
    return {"vqa_accuracy": float(np.mean(scores)) * 100.0}
