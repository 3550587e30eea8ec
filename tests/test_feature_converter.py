"""The feature converters: seqio's encoder-decoder (PaliFeatureConverter) and prefix-LM
(PaliDecoderFeatureConverter) features, plus the image and its mask."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from palimix.errors import UsageError
from palimix.models.feature_converter import PaliDecoderFeatureConverter, PaliFeatureConverter

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


# --- PaliDecoderFeatureConverter: seqio's prefix-LM features plus the image ----------


def test_decoder_converter_writes_prefix_lm_features_and_the_image():
    converted = PaliDecoderFeatureConverter(pack=False)(_dataset(EXAMPLES), LENGTHS)
    seqio.test_utils.assert_dataset(
        converted.map(lambda x: {k: v for k, v in x.items() if k != "encoder_images"}),
        [
            {   # prompt [7, 8, 5, 1] ++ answer [3, 9, 1] in one sequence of 6 + 5
                "decoder_target_tokens": [7, 8, 5, 1, 3, 9, 1, 0, 0, 0, 0],
                "decoder_input_tokens": [0, 7, 8, 5, 1, 3, 9, 1, 0, 0, 0],
                "decoder_loss_weights": [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0],
                "decoder_causal_attention": [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
                "encoder_image_mask": 1,
            },
            {   # a prompt of the full length 6 (minus one) and a short answer
                "decoder_target_tokens": [8, 4, 9, 3, 1, 4, 1, 0, 0, 0, 0],
                "decoder_input_tokens": [0, 8, 4, 9, 3, 1, 4, 1, 0, 0, 0],
                "decoder_loss_weights": [0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0],
                "decoder_causal_attention": [1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
                "encoder_image_mask": 0,
            },
        ],
    )
    images = [ex["encoder_images"] for ex in converted.as_numpy_iterator()]
    np.testing.assert_array_equal(images[0], _image(0.5))
    np.testing.assert_array_equal(images[1], _image(0.0))
    spec = converted.element_spec
    assert spec["encoder_images"].shape == (4, 4, 3) and spec["decoder_input_tokens"].shape == (11,)


def _random_examples(seed, count=24):
    """Prompts and answers of every length up to their limits, the limits included."""
    rng = np.random.RandomState(seed)
    return [
        dict(EXAMPLES[i % 2],
             inputs=list(rng.randint(2, 50, rng.randint(0, LENGTHS["inputs"])) ) + [1],
             targets=list(rng.randint(2, 50, rng.randint(0, LENGTHS["targets"]))) + [1])
        for i in range(count)
    ]


@pytest.mark.parametrize("loss_on_targets_only", [True, False])
def test_decoder_converter_text_features_equal_seqio_prefix_lm(loss_on_targets_only):
    examples = _random_examples(seed=3)
    ours = PaliDecoderFeatureConverter(loss_on_targets_only=loss_on_targets_only)(_dataset(examples), LENGTHS)
    text_only = _dataset(examples).map(lambda x: {"inputs": x["inputs"], "targets": x["targets"]})
    reference = seqio.PrefixLMFeatureConverter(pack=False, loss_on_targets_only=loss_on_targets_only)(
        text_only, {"inputs": 6, "targets": 5})
    pairs = list(zip(ours.as_numpy_iterator(), reference.as_numpy_iterator()))
    assert len(pairs) == len(examples)
    for a, b in pairs:
        assert set(b) == {"decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
                          "decoder_causal_attention"}
        for key, value in b.items():
            np.testing.assert_array_equal(a[key], value, err_msg=key)


def test_decoder_model_feature_lengths_are_prompt_plus_answer():
    lengths = PaliDecoderFeatureConverter().get_model_feature_lengths(LENGTHS)
    assert lengths == {
        "decoder_target_tokens": 11, "decoder_input_tokens": 11, "decoder_loss_weights": 11,
        "decoder_causal_attention": 11, "encoder_images": 4, "encoder_image_mask": 1,
    }


def test_decoder_converter_without_length_check_trims_prompt_and_answer_separately():
    # A too-long prompt must not crowd the answer out (seqio trims the concatenation).
    examples = [dict(EXAMPLES[0], inputs=[7] * 9, targets=[3] * 7)]
    converted = PaliDecoderFeatureConverter(apply_length_check=False)(_dataset(examples), LENGTHS)
    (only,) = list(converted.as_numpy_iterator())
    np.testing.assert_array_equal(only["decoder_target_tokens"], [7] * 6 + [3] * 5)
    np.testing.assert_array_equal(only["decoder_loss_weights"], [0] * 6 + [1] * 5)


@pytest.mark.parametrize("key", ["inputs", "targets"])
def test_decoder_converter_checks_each_length(key):
    examples = [dict(EXAMPLES[0], **{key: [3] * 7})]
    converted = PaliDecoderFeatureConverter()(_dataset(examples), LENGTHS)
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"Feature .{{1,2}}{key}.{{1,2}} is longer"):
        list(converted.as_numpy_iterator())


@pytest.mark.parametrize("converter_cls", [PaliFeatureConverter, PaliDecoderFeatureConverter])
def test_both_converters_refuse_packing_by_name(converter_cls):
    with pytest.raises(UsageError, match=f"{converter_cls.__name__} cannot pack.*own image.*pack=False"):
        converter_cls(pack=True)


@pytest.mark.parametrize("lengths", [{"inputs": 6, "targets": 5}, dict(LENGTHS, image=0)])
def test_decoder_converter_needs_the_image_side(lengths):
    with pytest.raises(UsageError, match="image side"):
        PaliDecoderFeatureConverter()(_dataset(EXAMPLES), lengths)


def test_decoder_converter_checks_images_and_ignores_a_has_image_length():
    bad = [dict(EXAMPLES[0], image=_image(0.1, size=3))]
    with pytest.raises(tf.errors.InvalidArgumentError, match="does not have the shape"):
        list(PaliDecoderFeatureConverter()(_dataset(bad), LENGTHS).as_numpy_iterator())
    masks = [ex["encoder_image_mask"] for ex in
             PaliDecoderFeatureConverter()(_dataset(EXAMPLES), dict(LENGTHS, has_image=1)).as_numpy_iterator()]
    assert masks == [1, 0]


def test_the_demo_mixture_feeds_both_backbones_unchanged():
    """palimix_demo (image kinds and language-only kinds, whose image is blank) goes
    through either converter as it is registered; the decoder sequence is the
    encoder-decoder's prompt followed by its answer."""
    import palimix.tasks  # noqa: F401  (registers the demo)
    from palimix.tasks import demo

    # The same seed samples the mixture's tasks in the same order for both.
    datasets = [
        seqio.get_dataset(demo.MIXTURE, demo.TASK_FEATURE_LENGTHS, converter, dataset_split="validation",
                          shuffle=False, seed=7).take(24)
        for converter in (PaliFeatureConverter(), PaliDecoderFeatureConverter())
    ]
    length = demo.INPUTS_LENGTH + demo.TARGETS_LENGTH
    masks = set()
    for encdec, decoder in zip(*(ds.as_numpy_iterator() for ds in datasets)):
        prompt = encdec["encoder_input_tokens"][encdec["encoder_input_tokens"] != 0]
        answer = encdec["decoder_target_tokens"][encdec["decoder_target_tokens"] != 0]
        expected = np.pad(np.concatenate([prompt, answer]), (0, length - len(prompt) - len(answer)))
        np.testing.assert_array_equal(decoder["decoder_target_tokens"], expected)
        assert decoder["decoder_loss_weights"].sum() == len(answer)
        assert decoder["decoder_causal_attention"].sum() == len(prompt) + 1
        np.testing.assert_array_equal(decoder["encoder_images"], encdec["encoder_images"])
        assert decoder["encoder_image_mask"] == encdec["encoder_image_mask"]
        masks.add(int(decoder["encoder_image_mask"]))
    assert masks == {0, 1}  # both image and language-only examples went through
