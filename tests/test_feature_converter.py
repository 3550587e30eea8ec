"""PaliFeatureConverter: seqio's encoder-decoder features plus the image and its mask."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from palimix.errors import UsageError
from palimix.models.feature_converter import PaliFeatureConverter

LENGTHS = {"inputs": 6, "targets": 5, "image": 4}


def _image(value, size=4):
    return np.full((size, size, 3), value, np.float32)


def _dataset(examples):
    return tf.data.Dataset.from_generator(
        lambda: iter(examples),
        output_signature={
            "inputs": tf.TensorSpec([None], tf.int32),
            "targets": tf.TensorSpec([None], tf.int32),
            "image": tf.TensorSpec([None, None, 3], tf.float32),
            "has_image": tf.TensorSpec([], tf.int32),
            "inputs_pretokenized": tf.TensorSpec([], tf.string),
        },
    )


EXAMPLES = [
    {"inputs": [7, 8, 5, 1], "targets": [3, 9, 1], "image": _image(0.5), "has_image": 1, "inputs_pretokenized": "a"},
    {"inputs": [8, 4, 9, 3, 1], "targets": [4, 1], "image": _image(0.0), "has_image": 0, "inputs_pretokenized": "b"},
]


def test_converts_text_like_seqio_and_adds_image_and_mask():
    converted = PaliFeatureConverter(pack=False)(_dataset(EXAMPLES), LENGTHS)
    seqio.test_utils.assert_dataset(
        converted.map(lambda x: {k: v for k, v in x.items() if k != "encoder_images"}),
        [
            {
                "encoder_input_tokens": [7, 8, 5, 1, 0, 0],
                "decoder_target_tokens": [3, 9, 1, 0, 0],
                "decoder_input_tokens": [0, 3, 9, 1, 0],
                "decoder_loss_weights": [1, 1, 1, 0, 0],
                "encoder_image_mask": 1,
            },
            {
                "encoder_input_tokens": [8, 4, 9, 3, 1, 0],
                "decoder_target_tokens": [4, 1, 0, 0, 0],
                "decoder_input_tokens": [0, 4, 1, 0, 0],
                "decoder_loss_weights": [1, 1, 0, 0, 0],
                "encoder_image_mask": 0,
            },
        ],
    )
    images = [ex["encoder_images"] for ex in converted.as_numpy_iterator()]
    np.testing.assert_array_equal(images[0], _image(0.5))
    np.testing.assert_array_equal(images[1], _image(0.0))
    spec = converted.element_spec
    assert spec["encoder_images"].shape == (4, 4, 3) and spec["encoder_images"].dtype == tf.float32
    assert spec["encoder_image_mask"].shape == () and spec["encoder_image_mask"].dtype == tf.int32


def test_same_text_features_as_seqio_encdec_converter():
    ours = PaliFeatureConverter()(_dataset(EXAMPLES), LENGTHS)
    text_only = _dataset(EXAMPLES).map(lambda x: {"inputs": x["inputs"], "targets": x["targets"]})
    reference = seqio.EncDecFeatureConverter(pack=False)(text_only, {"inputs": 6, "targets": 5})
    for a, b in zip(ours.as_numpy_iterator(), reference.as_numpy_iterator()):
        for key, value in b.items():
            np.testing.assert_array_equal(a[key], value)


def test_model_feature_lengths():
    lengths = PaliFeatureConverter().get_model_feature_lengths(LENGTHS)
    assert lengths["encoder_images"] == 4
    assert lengths["encoder_input_tokens"] == 6 and lengths["decoder_target_tokens"] == 5
    assert "encoder_image_mask" in lengths


def test_missing_has_image_means_real_images():
    ds = _dataset(EXAMPLES).map(lambda x: {k: v for k, v in x.items() if k != "has_image"})
    masks = [ex["encoder_image_mask"] for ex in PaliFeatureConverter()(ds, LENGTHS).as_numpy_iterator()]
    assert masks == [1, 1]


def test_pack_true_is_a_clear_error():
    with pytest.raises(UsageError, match="cannot pack.*own image.*pack=False"):
        PaliFeatureConverter(pack=True)


@pytest.mark.parametrize("bad", [None, 0, "224", 22.4])
def test_image_length_must_be_the_image_side(bad):
    lengths = dict(LENGTHS, image=bad)
    with pytest.raises(UsageError, match=r"TASK_FEATURE_LENGTHS\['image'\] must be the image side"):
        PaliFeatureConverter()(_dataset(EXAMPLES), lengths)


def test_missing_image_length_is_a_clear_error():
    with pytest.raises(UsageError, match="image side"):
        PaliFeatureConverter()(_dataset(EXAMPLES), {"inputs": 6, "targets": 5})


def test_dataset_without_image_is_a_clear_error():
    ds = _dataset(EXAMPLES).map(lambda x: {"inputs": x["inputs"], "targets": x["targets"]})
    with pytest.raises(UsageError, match="no 'image' feature"):
        PaliFeatureConverter()(ds, LENGTHS)


def test_static_image_size_mismatch_fails_before_tf_data_runs():
    ds = tf.data.Dataset.from_tensors(
        {"inputs": [5, 1], "targets": [6, 1], "image": _image(0.1, size=8), "has_image": 1}
    )
    with pytest.raises(UsageError, match=r"shape \[8, 8, 3\].*asks for \[4, 4, 3\]"):
        PaliFeatureConverter()(ds, LENGTHS)


def test_dynamic_image_size_mismatch_names_the_problem():
    # Static shape unknown (from_generator): the check runs per example.
    examples = [dict(EXAMPLES[0], image=_image(0.1, size=3))]
    converted = PaliFeatureConverter()(_dataset(examples), LENGTHS)
    with pytest.raises(tf.errors.InvalidArgumentError, match="does not have the shape"):
        list(converted.as_numpy_iterator())


def test_targets_longer_than_their_length_are_an_error():
    examples = [dict(EXAMPLES[0], targets=[3] * 9)]
    converted = PaliFeatureConverter()(_dataset(examples), LENGTHS)
    with pytest.raises(tf.errors.InvalidArgumentError, match="targets"):
        list(converted.as_numpy_iterator())


def test_a_length_for_has_image_is_ignored():
    # seqio.Evaluator passes a length for every output feature, has_image's too.
    converter = PaliFeatureConverter(pack=False)
    lengths = {"inputs": 8, "targets": 6, "image": 4, "has_image": 1}
    model_ds = converter(_dataset(EXAMPLES), lengths)
    first = next(iter(model_ds.as_numpy_iterator()))
    assert first["encoder_image_mask"] == 1


def test_without_length_check_long_sequences_are_trimmed():
    examples = [dict(EXAMPLES[0], targets=[3] * 9)]
    converted = PaliFeatureConverter(apply_length_check=False)(_dataset(examples), LENGTHS)
    (only,) = list(converted.as_numpy_iterator())
    np.testing.assert_array_equal(only["decoder_target_tokens"], [3] * 5)
    np.testing.assert_array_equal(only["encoder_input_tokens"], [7, 8, 5, 1, 0, 0])
