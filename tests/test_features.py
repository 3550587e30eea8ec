"""palimix.features and the text preprocessors (span corruption, prefix LM)."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from palimix import features
from palimix.errors import UsageError
from palimix.preprocessors import text


def test_output_features_contract():
    out = features.output_features(image_size=32)
    assert list(out) == ["inputs", "targets", "image", "has_image"]
    assert isinstance(out["image"], seqio.ContinuousFeature) and out["image"].rank == 3
    assert out["image"].dtype == tf.float32
    assert isinstance(out["has_image"], seqio.ContinuousFeature) and out["has_image"].rank == 1
    assert out["has_image"].dtype == tf.int32
    assert out["inputs"].vocabulary.vocab_size == out["targets"].vocabulary.vocab_size > 1000
    assert features.task_feature_lengths(48, 16, 32) == {"inputs": 48, "targets": 16, "image": 32}


@pytest.mark.parametrize("bad", [0, -4, 2.5, True, "224"])
def test_bad_image_size_is_a_usage_error(bad):
    with pytest.raises(UsageError):
        features.output_features(image_size=bad)


def _corrupt(texts, segmentation="space", seed=7):
    ds = tf.data.Dataset.from_tensor_slices({"text": texts})
    with seqio.utils.map_seed_manager(seed):
        ds = text.span_corruption(ds, segmentation=segmentation, noise_density=0.3, mean_noise_span_length=2.0)
    return [{k: v.decode() for k, v in ex.items()} for ex in ds.as_numpy_iterator()]


def _restore(noised, targets):
    """Put the spans of `targets` back in place of the sentinels of `noised`."""
    import re

    spans = dict(re.findall(r"<extra_id_(\d+)>([^<]*)", targets))
    return re.sub(r"<extra_id_(\d+)>", lambda m: spans.get(m.group(1), ""), noised)


def test_span_corruption_round_trips_and_uses_sentinels_in_order():
    sentence = "one two three four five six seven eight nine ten eleven twelve"
    (ex,) = _corrupt([sentence])
    assert "<extra_id_0>" in ex["noised_text"] and ex["targets"].startswith(" <extra_id_0>")
    restored = " ".join(_restore(ex["noised_text"], ex["targets"]).split())
    assert restored == sentence
    ids = [int(i) for i in __import__("re").findall(r"<extra_id_(\d+)>", ex["noised_text"])]
    assert ids == list(range(len(ids)))


def test_span_corruption_is_deterministic_with_a_seed_and_drops_one_word_texts():
    texts = ["a b c d e f g h", "lonely", "", "x y z w v u"]
    first, second = _corrupt(texts, seed=3), _corrupt(texts, seed=3)
    assert first == second
    assert len(first) == 2  # "lonely" and "" cannot be corrupted.


def test_unsegmented_scripts_corrupt_characters_and_keep_combining_marks():
    (ex,) = _corrupt(["ทุกคนมีสิทธิในชีวิต"], segmentation="pythainlp")
    assert " " not in ex["noised_text"].replace(" <extra_id_", "")
    assert _restore(ex["noised_text"], ex["targets"]).replace(" ", "") == "ทุกคนมีสิทธิในชีวิต"
    units = text.split_units(tf.constant("กี่ที่"), "pythainlp").numpy().tolist()
    assert [u.decode() for u in units] == ["กี่", "ที่"]


def test_prefix_lm_split_keeps_the_text_and_caps_the_target():
    ds = tf.data.Dataset.from_tensor_slices({"text": ["w1 w2 w3 w4 w5 w6 w7 w8 w9 w10"] * 20})
    with seqio.utils.map_seed_manager(0):
        ds = text.prefix_lm_split(ds, max_target_units=3)
    cuts = set()
    for ex in ds.as_numpy_iterator():
        prefix, target = ex["prefix"].decode(), ex["targets"].decode()
        assert f"{prefix} {target}" == "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10"
        assert 1 <= len(target.split()) <= 3
        cuts.add(len(prefix.split()))
    assert len(cuts) > 1  # Random split points.


def test_random_spans_noise_mask_counts():
    for length in (2, 5, 20, 100):
        mask = text.random_spans_noise_mask(length, 0.15, 3.0, tf.constant([1, 2])).numpy()
        assert mask.shape == (length,)
        assert 1 <= mask.sum() <= length - 1
        assert not mask[0]  # A kept run comes first, as in T5.
        if length == 100:
            assert mask.sum() == 15
            assert np.sum(mask[1:] & ~mask[:-1]) == 5  # round(15 / 3) spans.
    # One span in a short text: anywhere after the first unit, not always at the end.
    ends = {int(np.flatnonzero(text.random_spans_noise_mask(12, 0.15, 3.0, tf.constant([1, s])).numpy())[-1])
            for s in range(20)}
    assert len(ends) > 3 and max(ends) == 11
