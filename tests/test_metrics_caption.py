"""CIDEr-D, BLEU and ROUGE-L agree with pycocoevalcap's scorers on the same tokens."""

import contextlib
import io
import random

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from palimix import metrics
from palimix.errors import UsageError
from palimix.metrics.bleu import bleu_from_tokens
from palimix.metrics.cider import cider_scores
from palimix.metrics.rouge import lcs_length, rouge_l_scores
from palimix.metrics.tokenize import ptb_tokenize

WORDS = "a an the man woman dog cat riding sitting on of with red blue table street two people next to".split()


def corpus(seed, num_images=120, allow_empty=True):
    rng = random.Random(seed)

    def sentence():
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0 if allow_empty else 1, 14)))

    refs = [[sentence() for _ in range(rng.randint(1, 6))] for _ in range(num_images)]
    hyps = [sentence() for _ in range(num_images)]
    # Exact copies of a reference, as a good model produces.
    for i in range(0, num_images, 7):
        hyps[i] = refs[i][0]
    return refs, hyps


def coco(refs, hyps):
    return {i: r for i, r in enumerate(refs)}, {i: [h] for i, h in enumerate(hyps)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cider_matches_pycocoevalcap(seed):
    refs, hyps = corpus(seed)
    expected_mean, expected = Cider().compute_score(*coco(refs, hyps))
    ours = cider_scores([[r.split() for r in rs] for rs in refs], [h.split() for h in hyps])
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-12)
    assert ours.mean() == pytest.approx(expected_mean, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bleu_and_rouge_match_pycocoevalcap(seed):
    refs, hyps = corpus(seed, allow_empty=seed != 2)
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its statistics
        expected_bleu, _ = Bleu(4).compute_score(*coco(refs, hyps))
    expected_rouge_mean, expected_rouge = Rouge().compute_score(*coco(refs, hyps))
    tokenized_refs = [[r.split() for r in rs] for rs in refs]
    tokenized_hyps = [h.split() for h in hyps]
    np.testing.assert_allclose(bleu_from_tokens(tokenized_refs, tokenized_hyps), expected_bleu, rtol=1e-12)
    np.testing.assert_allclose(rouge_l_scores(tokenized_refs, tokenized_hyps), expected_rouge, rtol=1e-12)


def test_public_functions_tokenize_then_score_like_pycocoevalcap():
    refs = [["A man riding a horse.", "A person on a horse!"], ["Two dogs (black) play.", "Dogs playing"]]
    hyps = ["a man rides a horse", "Two black dogs aren't playing."]
    tokenized_refs = [[" ".join(ptb_tokenize(r)) for r in rs] for rs in refs]
    tokenized_hyps = [" ".join(ptb_tokenize(h)) for h in hyps]
    gts, res = coco(tokenized_refs, tokenized_hyps)
    assert metrics.cider(refs, hyps)["cider"] == pytest.approx(100 * Cider().compute_score(gts, res)[0])
    assert metrics.rouge_l(refs, hyps)["rouge_l"] == pytest.approx(100 * Rouge().compute_score(gts, res)[0])
    with contextlib.redirect_stdout(io.StringIO()):
        expected = Bleu(4).compute_score(gts, res)[0]
    assert list(metrics.bleu(refs, hyps).values()) == pytest.approx([100 * b for b in expected])


def test_exact_copies_and_empty_predictions():
    refs = [["a dog on the grass", "a dog running"], ["a red bus", "a bus on a street"], ["two cats", "cats sleeping"]]
    perfect = metrics.rouge_l(refs, [r[0] for r in refs])["rouge_l"]
    assert perfect == pytest.approx(100.0)
    empty = {**metrics.cider(refs, ["", "", ""]), **metrics.rouge_l(refs, ["", "", ""])}
    assert empty == {"cider": 0.0, "rouge_l": 0.0}
    assert metrics.bleu(refs, ["", "", ""])["bleu4"] == pytest.approx(0.0, abs=1e-6)


def test_plain_string_target_is_one_reference():
    assert metrics.cider(["a dog", "a cat"], ["a dog", "a cat"]) == metrics.cider([["a dog"], ["a cat"]], ["a dog", "a cat"])


def test_multilingual_captions_use_the_language_tokenizer():
    refs = [["两只猫在沙发上睡觉"], ["一只狗在草地上跑"]]
    char = metrics.cider(refs, ["猫在沙发上睡觉", "狗在跑"], language="zh")["cider"]
    word = metrics.cider(refs, ["猫在沙发上睡觉", "狗在跑"], language="zh", tokenizer="word")["cider"]
    assert char > 0 and word > 0 and char != word
    # Thai and Hindi captions score without errors and reward the right caption.
    th_refs = [["แมวนอนอยู่บนโซฟา"], ["สุนัขวิ่งบนหญ้า"]]
    right = metrics.cider(th_refs, ["แมวนอนบนโซฟา", "สุนัขวิ่ง"], language="th")["cider"]
    wrong = metrics.cider(th_refs, ["สุนัขวิ่ง", "แมวนอนบนโซฟา"], language="th")["cider"]
    assert right > wrong
    # Like pycocoevalcap, PTB keeps non-ASCII punctuation such as the danda as a token.
    hi = metrics.bleu([["एक आदमी घोड़े पर बैठा है।"]], ["एक आदमी घोड़े पर बैठा है ।"], language="hi")
    assert hi["bleu4"] == pytest.approx(100.0)


@pytest.mark.parametrize("fn", [metrics.cider, metrics.bleu, metrics.rouge_l])
def test_bad_inputs_raise_usage_errors(fn):
    with pytest.raises(UsageError, match="2 targets but 1 predictions"):
        fn([["a"], ["b"]], ["a"])
    with pytest.raises(UsageError, match="no examples"):
        fn([], [])
    with pytest.raises(UsageError, match="example 1 has no reference"):
        fn([["a"], []], ["a", "b"])


def test_bytes_and_numpy_inputs_are_accepted():
    refs = np.array([[b"a dog", b"the dog"], [b"a cat", b"one cat"]], dtype=object)
    assert metrics.cider(refs, [b"a dog", b"a cat"]) == metrics.cider([["a dog", "the dog"], ["a cat", "one cat"]], ["a dog", "a cat"])


def test_lcs_bit_parallel_matches_dynamic_programming():
    rng = random.Random(3)
    for _ in range(200):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 12))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 12))]
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i in range(len(a)):
            for j in range(len(b)):
                table[i + 1][j + 1] = table[i][j] + 1 if a[i] == b[j] else max(table[i][j + 1], table[i + 1][j])
        assert lcs_length(a, b) == table[-1][-1]
