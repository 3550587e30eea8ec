"""String metrics: exact match, classification accuracy, ChartQA's relaxed accuracy,
and sacrebleu's BLEU and chrF++ with the right tokenization per language.

Each target may be one string or a list of accepted strings; a prediction is correct
if it matches any of them.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import numpy as np

from palimix import languages
from palimix.metrics import _inputs
from palimix.metrics.tokenize import char_tokenize, word_tokenize


def exact_match(targets: Sequence[Any], predictions: Sequence[Any], *, ignore_case: bool = False) -> dict[str, float]:
    """Share (x 100) of predictions equal to one of their targets, surrounding
    whitespace ignored: {"exact_match"}."""
    targets, predictions = _inputs.check_pairs("exact_match", targets, predictions)

    def norm(text: str) -> str:
        return text.strip().lower() if ignore_case else text.strip()

    hits = [norm(p) in {norm(t) for t in _inputs.as_references(target)} for target, p in zip(targets, predictions)]
    return {"exact_match": float(np.mean(hits)) * 100.0}


def accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    """Classification accuracy x 100 (the predicted label text equals the target label,
    surrounding whitespace ignored): {"accuracy"}."""
    return {"accuracy": exact_match(targets, predictions)["exact_match"]}


def _to_float(text: str) -> Optional[float]:
    """ChartQA's number parsing: '12.5' -> 12.5, '40%' -> 0.4, anything else -> None."""
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_match(target: str, prediction: str, max_relative_change: float = 0.05) -> bool:
    """ChartQA (Masry et al. 2022): numbers may be off by 5% of the target; other
    answers must match exactly, ignoring case. A zero target is compared as text."""
    prediction_float, target_float = _to_float(prediction.strip()), _to_float(target.strip())
    if prediction_float is not None and target_float:
        return abs(prediction_float - target_float) / abs(target_float) <= max_relative_change
    return prediction.strip().lower() == target.strip().lower()


def relaxed_accuracy(
    targets: Sequence[Any], predictions: Sequence[Any], *, max_relative_change: float = 0.05
) -> dict[str, float]:
    """ChartQA relaxed accuracy x 100: {"relaxed_accuracy"}."""
    targets, predictions = _inputs.check_pairs("relaxed_accuracy", targets, predictions)
    hits = [
        any(relaxed_match(t, p, max_relative_change) for t in _inputs.as_references(target))
        for target, p in zip(targets, predictions)
    ]
    return {"relaxed_accuracy": float(np.mean(hits)) * 100.0}


# --- sacrebleu ---------------------------------------------------------------------


def sacrebleu_setup(language: str) -> tuple[str, Optional[Callable[[str], str]]]:
    """(sacrebleu tokenizer name, pre-segmenter or None) for a language.

    Chinese uses sacrebleu's own "zh" tokenizer. Japanese would use "ja-mecab", which
    needs MeCab and ipadic; palimix segments with fugashi + unidic-lite instead (already
    installed for the caption metrics) and tells sacrebleu not to tokenize. Thai is
    segmented with pythainlp (sacrebleu has no Thai tokenizer). Khmer, Lao, Burmese and
    Tibetan use sacrebleu's "char". Everything else uses the standard "13a".
    """
    code = languages.normalize(language)
    segmentation = languages.get(code).segmentation
    if code == "zh":
        return "zh", None
    if segmentation in ("fugashi", "pythainlp", "jieba"):
        return "none", functools.partial(_segmented, language=code)
    if segmentation == "char":
        return "char", None
    return "13a", None


def _segmented(text: str, language: str) -> str:
    return " ".join(word_tokenize(text, language))


def _corpus_args(metric: str, targets, predictions, language: str):
    """Hypotheses and sacrebleu's reference streams (padded with None where an
    example has fewer references)."""
    targets, predictions = _inputs.check_pairs(metric, targets, predictions)
    references = _inputs.reference_lists(metric, targets)
    tokenizer, presegment = sacrebleu_setup(language)
    if presegment is not None:
        predictions = [presegment(p) for p in predictions]
        references = [[presegment(r) for r in refs] for refs in references]
    num_streams = max(len(refs) for refs in references)
    streams = [[refs[i] if i < len(refs) else None for refs in references] for i in range(num_streams)]
    return predictions, streams, tokenizer


def sacrebleu_bleu(targets: Sequence[Any], predictions: Sequence[Any], *, language: str = "en") -> dict[str, float]:
    """sacrebleu corpus BLEU (0-100), tokenized for the language: {"bleu"}."""
    from sacrebleu.metrics import BLEU

    hypotheses, streams, tokenizer = _corpus_args("sacrebleu_bleu", targets, predictions, language)
    return {"bleu": float(BLEU(tokenize=tokenizer).corpus_score(hypotheses, streams).score)}


def chrf(targets: Sequence[Any], predictions: Sequence[Any], *, language: str = "en") -> dict[str, float]:
    """sacrebleu chrF++ (character 6-grams plus word 1-2-grams, beta 2), 0-100: {"chrf"}.

    Character n-grams ignore whitespace, so only the word n-grams depend on the
    language: unsegmented scripts are segmented first (words for zh/ja/th, characters
    for km/lo/my/bo) so that chrF++'s word n-grams mean something there.
    """
    from sacrebleu.metrics import CHRF

    code = languages.normalize(language)
    targets, predictions = _inputs.check_pairs("chrf", targets, predictions)
    references = _inputs.reference_lists("chrf", targets)
    segmentation = languages.get(code).segmentation
    if segmentation != "space":
        if segmentation == "char":
            segment = lambda text: " ".join(char_tokenize(text))  # noqa: E731
        else:
            segment = functools.partial(_segmented, language=code)
        predictions = [segment(p) for p in predictions]
        references = [[segment(r) for r in refs] for refs in references]
    num_streams = max(len(refs) for refs in references)
    streams = [[refs[i] if i < len(refs) else None for refs in references] for i in range(num_streams)]
    return {"chrf": float(CHRF(word_order=2).corpus_score(predictions, streams).score)}
