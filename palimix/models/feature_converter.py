"""Task features -> model features for PaLI: seqio's encoder-decoder converter plus the image.

`PaliFeatureConverter` does everything `seqio.EncDecFeatureConverter` does to the text
(`inputs` -> `encoder_input_tokens`, `targets` -> `decoder_target_tokens`,
`decoder_input_tokens`, `decoder_loss_weights`) and adds

    image      float32 [S, S, 3]  ->  encoder_images      float32 [S, S, 3]
    has_image  int32   [1]        ->  encoder_image_mask  int32   []

`TASK_FEATURE_LENGTHS` must name `image` with the image side `S` (e.g.
`{"inputs": 32, "targets": 32, "image": 224}`): that is how t5x and seqio learn the
image shape, and the converter checks every image against it instead of padding or
cropping a wrongly sized image in silence. `has_image` is optional: a task without it
is taken to have real images only (mask 1).

Image examples are never packed (see `PACKING_ERROR`). This module must not import
t5x: the embedded runner (`palimix.runner`) uses it without T5X installed.
"""

from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

from palimix.errors import UsageError

FeatureSpec = seqio.FeatureConverter.FeatureSpec

PACKING_ERROR = (
    "PaliFeatureConverter cannot pack examples (pack=True): packing concatenates "
    "several examples' token sequences into one row, but every example carries its "
    "own image, whose image tokens the encoder prepends to that one example's prompt. "
    "A packed row would need several images and a block-diagonal image-to-text "
    "attention mask, which seqio packing (rank-1 features only) cannot build. Use "
    "pack=False; in gin: `train/utils.DatasetConfig.pack = False` and "
    "`train_eval/utils.DatasetConfig.pack = False` (palimix's runs/*.gin already do)."
)


class PaliFeatureConverter(seqio.EncDecFeatureConverter):
    """`seqio.EncDecFeatureConverter` that also feeds the image and its mask to the model.

    Usage (what t5x does with `model.FEATURE_CONVERTER_CLS`):

        converter = PaliFeatureConverter(pack=False)
        model_ds = converter(task_ds, {"inputs": 32, "targets": 32, "image": 224})
    """

    TASK_FEATURES = {
        **seqio.EncDecFeatureConverter.TASK_FEATURES,
        "image": FeatureSpec(dtype=tf.float32, rank=3),
    }
    MODEL_FEATURES = {
        **seqio.EncDecFeatureConverter.MODEL_FEATURES,
        "encoder_images": FeatureSpec(dtype=tf.float32, rank=3),
        "encoder_image_mask": FeatureSpec(dtype=tf.int32, rank=0),
    }
    # The text features that are trimmed/padded to their length; the image is checked.
    TEXT_FEATURES = ("inputs", "targets")

    def __init__(self, pack: bool = False, apply_length_check: bool = True, **kwargs):
        # Default pack=False (seqio defaults to True): image examples are never packed.
        if pack:
            raise UsageError(PACKING_ERROR)
        # seqio checks lengths with two extra tf.data maps of assertions (before and
        # after padding), ~0.45 ms per example on CPU: more than the rest of the
        # conversion. The same input check runs inside the one conversion map instead;
        # the output check is static (padding fixes every shape, set_shape says so).
        self._check_input_lengths = apply_length_check
        super().__init__(pack=False, apply_length_check=False, **kwargs)

    def __call__(
        self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
    ) -> tf.data.Dataset:
        # seqio's own check would only say that the feature sets differ.
        _image_size(task_feature_lengths or {})
        # seqio.Evaluator fills in a length for every output feature, `has_image` (1)
        # included; it is a flag, not a sequence, and seqio would reject it as extra.
        task_feature_lengths = {k: v for k, v in task_feature_lengths.items() if k != "has_image"}
        if "image" not in ds.element_spec:
            raise UsageError(
                "the dataset has no 'image' feature (it has "
                f"{sorted(ds.element_spec)}): PaLI tasks need one; language-only tasks "
                "give a blank image with has_image=0 (see palimix.features)."
            )
        return super().__call__(ds, task_feature_lengths)

    def _convert_features(
        self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
    ) -> tf.data.Dataset:
        image_size = _image_size(task_feature_lengths)
        image_shape = ds.element_spec["image"].shape
        _check_static_image_shape(image_shape, image_size)
        # A runtime check only where the static shape leaves it open.
        check_image = not image_shape.is_fully_defined()
        text_lengths = {k: task_feature_lengths[k] for k in self.TEXT_FEATURES}
        expected_shape = tf.constant([image_size, image_size, 3], dtype=tf.int32)

        def convert(features):
            # One map: trim/pad (seqio.utils.trim_and_pad_dataset), the example
            # conversion and the image, instead of a tf.data stage each.
            features = dict(features)
            for key, length in text_lengths.items():
                features[key] = _trim_and_pad(features[key], key, length, self._check_input_lengths)
            targets = features["targets"]
            converted = {
                "encoder_input_tokens": features["inputs"],
                "decoder_target_tokens": targets,
                # seqio.EncDecFeatureConverter's features for unpacked examples, in a
                # few ops (seqio's make_autoregressive_inputs handles packing with a
                # roll and a one-hot mask: ~60 graph nodes per example).
                "decoder_input_tokens": tf.concat([tf.constant([self.bos_id], targets.dtype), targets[:-1]], 0),
                "decoder_loss_weights": tf.cast(tf.not_equal(targets, 0), tf.int32),
                **{k: features[k] for k in self._passthrough_features},
            }
            image = features["image"]
            if check_image:
                check = tf.debugging.assert_equal(
                    tf.shape(image),
                    expected_shape,
                    message=(
                        f"an example's image does not have the shape [{image_size}, "
                        f"{image_size}, 3] that TASK_FEATURE_LENGTHS['image'] asks for"
                    ),
                )
                with tf.control_dependencies([check]):
                    image = tf.identity(image)
                image.set_shape([image_size, image_size, 3])
            converted["encoder_images"] = image
            has_image = features.get("has_image")
            if has_image is None:
                has_image = tf.constant(1, tf.int32)
            converted["encoder_image_mask"] = tf.reshape(tf.cast(has_image, tf.int32), [])
            return converted

        return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

    def get_model_feature_lengths(
        self, task_feature_lengths: Mapping[str, int]
    ) -> Mapping[str, int]:
        lengths = dict(super().get_model_feature_lengths(task_feature_lengths))
        lengths["encoder_images"] = _image_size(task_feature_lengths)
        # A scalar per example: seqio's length checks skip rank-0 features, but every
        # model feature must be listed here.
        lengths["encoder_image_mask"] = 1
        return lengths


def _image_size(task_feature_lengths: Mapping[str, int]) -> int:
    size = task_feature_lengths.get("image")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise UsageError(
            "TASK_FEATURE_LENGTHS['image'] must be the image side in pixels (an int such "
            f"as 224), got {size!r}; e.g. {{'inputs': 32, 'targets': 32, 'image': 224}}."
        )
    return size


def _trim_and_pad(tokens: tf.Tensor, key: str, length: int, check: bool) -> tf.Tensor:
    """`tokens` [n] -> [length]: padded with 0; longer sequences are an error when
    `check` (seqio's input length validation), else trimmed (seqio's trim_and_pad)."""
    if isinstance(tokens, tf.RaggedTensor):
        tokens = tokens.to_tensor()
    if check:
        assertion = tf.debugging.assert_less_equal(
            tf.shape(tokens)[0], length,
            message=f"Feature '{key}' is longer than its length {length} in TASK_FEATURE_LENGTHS")
        with tf.control_dependencies([assertion]):
            tokens = tf.identity(tokens)
    tokens = tokens[:length]
    padded = tf.pad(tokens, [(0, length - tf.shape(tokens)[0])])
    padded.set_shape([length])
    return padded


def _check_static_image_shape(shape: tf.TensorShape, image_size: int) -> None:
    """Raise now, not deep inside tf.data, when the task's images are known to misfit."""
    expected = [image_size, image_size, 3]
    for dim, want in zip(shape.as_list(), expected):
        if dim is not None and dim != want:
            raise UsageError(
                f"the task's images have shape {shape.as_list()} but "
                f"TASK_FEATURE_LENGTHS['image'] = {image_size} asks for {expected}: set "
                "TASK_FEATURE_LENGTHS['image'] to the task's image_size (or register "
                "the task with image_size=" + str(image_size) + ")."
            )
