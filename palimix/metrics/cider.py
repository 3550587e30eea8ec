"""CIDEr-D, as pycocoevalcap computes it, vectorized.

Definition (Vedantam et al. 2015, pycocoevalcap's `CiderScorer`): every n-gram
(n = 1..4) of a caption is weighted by tf * idf, with idf = log(#images) -
log(max(1, df)) and df = the number of images whose references contain the n-gram
(document frequencies come from the references being evaluated). For each order n the
score of a prediction against one reference is the cosine similarity of their vectors
with the prediction's weights clipped to the reference's, times a Gaussian length
penalty exp(-delta^2 / (2 sigma^2)), sigma = 6. The image's score averages the orders,
then the references, times 10; the corpus score averages the images. Like
pycocoevalcap, the "length" in delta counts bigrams (max(0, tokens - 1)) -- an accident
of its code that every published CIDEr-D number includes.

palimix reports CIDEr x 100 (the 0-100 scale of the other metrics; a pycocoevalcap
score of 1.382 is reported as 138.2, the way papers print it).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from palimix.metrics import _inputs, _ngrams
from palimix.metrics.tokenize import Tokenizer, tokenize_all


def cider_scores(
    references: Sequence[Sequence[Sequence[str]]],
    hypotheses: Sequence[Sequence[str]],
    *,
    n: int = 4,
    sigma: float = 6.0,
) -> np.ndarray:
    """Per-image CIDEr-D (pycocoevalcap's scale, not x100) of tokenized captions.

    references[i] is the list of tokenized references of image i, hypotheses[i] its
    tokenized prediction.
    """
    num_images = len(hypotheses)
    refs_per_image = np.array([len(r) for r in references])
    image_of_ref = np.repeat(np.arange(num_images), refs_per_image)
    sentences = list(hypotheses) + [ref for refs in references for ref in refs]
    ngrams = _ngrams.count_matrix(sentences, max_n=n)
    counts = ngrams.counts
    hyp_counts, ref_counts = counts[:num_images], counts[num_images:]

    # Document frequency: in how many images' reference sets each n-gram occurs.
    in_image = _ngrams.group_rows(image_of_ref, num_images) @ ref_counts
    in_image.eliminate_zeros()
    document_frequency = np.bincount(in_image.indices, minlength=counts.shape[1])
    log_num_images = np.log(float(num_images))
    weights = log_num_images - np.log(np.maximum(1.0, document_frequency))

    hyp_vec = hyp_counts.multiply(weights).tocsr()
    ref_vec = ref_counts.multiply(weights).tocsr()
    hyp_norm = np.sqrt(ngrams.per_order(hyp_vec.multiply(hyp_vec)))  # [images, n]
    ref_norm = np.sqrt(ngrams.per_order(ref_vec.multiply(ref_vec)))  # [refs, n]

    # Each reference next to its image's prediction: sum_f min(h_f, r_f) * r_f.
    hyp_for_ref = hyp_vec[image_of_ref]
    overlap = ngrams.per_order(hyp_for_ref.minimum(ref_vec).multiply(ref_vec))  # [refs, n]
    denominator = hyp_norm[image_of_ref] * ref_norm
    similarity = np.divide(overlap, denominator, out=overlap.copy(), where=denominator != 0)

    bigrams = np.maximum(ngrams.lengths - 1, 0) if n >= 2 else np.zeros_like(ngrams.lengths)
    delta = (bigrams[:num_images][image_of_ref] - bigrams[num_images:]).astype(np.float64)
    penalty = np.exp(-(delta**2) / (2 * sigma**2))
    per_ref = (similarity * penalty[:, None]).mean(axis=1)
    per_image = np.bincount(image_of_ref, weights=per_ref, minlength=num_images) / refs_per_image
    return per_image * 10.0


def cider(
    targets: Sequence[Any],
    predictions: Sequence[Any],
    *,
    language: str = "en",
    tokenizer: Tokenizer = None,
) -> dict[str, float]:
    """CIDEr-D x 100 of `predictions` against the reference lists in `targets`.

    Each target is an image's list of reference captions (a lone string counts as one
    reference). Tokenization follows the language (see palimix.metrics.tokenize).
    """
    targets, predictions = _inputs.check_pairs("cider", targets, predictions)
    references = _inputs.reference_lists("cider", targets)
    hypotheses, tokenized_refs = tokenize_all(predictions, references, language=language, tokenizer=tokenizer)
    return {"cider": float(np.mean(cider_scores(tokenized_refs, hypotheses))) * 100.0}
