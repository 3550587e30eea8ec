"""Task features -> model features: seqio's text converters plus the image.

Two converters, one per backbone, from the same task features (docs/ARCHITECTURE.md,
"Example features"), so every task and mixture feeds either backbone unchanged:

`PaliFeatureConverter` (encoder-decoder, `palimix.models.pali.Pali`) does everything
`seqio.EncDecFeatureConverter` does to the text (`inputs` -> `encoder_input_tokens`,
`targets` -> `decoder_target_tokens`, `decoder_input_tokens`, `decoder_loss_weights`).

`PaliDecoderFeatureConverter` (decoder-only prefix LM, `palimix.models.paligemma`)
does what `seqio.PrefixLMFeatureConverter` does: the decoder reads prompt ++ answer
as one sequence of length `inputs + targets`, `decoder_causal_attention` marks the
fully attended prefix (BOS and the prompt), and `decoder_loss_weights` covers only
the answer and its EOS.

Both add

    image      float32 [S, S, 3]  ->  encoder_images      float32 [S, S, 3]
    has_image  int32   [1]        ->  encoder_image_mask  int32   []

`TASK_FEATURE_LENGTHS` must name `image` with the image side `S` (e.g.
`{"inputs": 32, "targets": 32, "image": 224}`): that is how t5x and seqio learn the
image shape, and the converters check every image against it instead of padding or
cropping a wrongly sized image in silence. `has_image` is optional: a task without it
is taken to have real images only (mask 1).

Image examples are never packed (see `PACKING_ERROR`). This module must not import
t5x: the embedded runner (`palimix.runner`) uses it without T5X installed.
"""

from __future__ import annotations

from typing import Callable, Mapping

import seqio
import tensorflow as tf

from palimix.errors import UsageError

FeatureSpec = seqio.FeatureConverter.FeatureSpec

PACKING_ERROR = (
    "{name} cannot pack examples (pack=True): packing concatenates "
    "several examples' token sequences into one row, but every example carries its "
    "own image, whose image tokens the network puts in front of that one example's "
    "prompt. A packed row would need several images and a block-diagonal image-to-text "
    "attention mask, which seqio packing (rank-1 features only) cannot build. Use "
    "pack=False; in gin: `train/utils.DatasetConfig.pack = False` and "
    "`train_eval/utils.DatasetConfig.pack = False` (palimix's runs/*.gin already do)."
)

IMAGE_TASK_FEATURES = {"image": FeatureSpec(dtype=tf.float32, rank=3)}
IMAGE_MODEL_FEATURES = {
    "encoder_images": FeatureSpec(dtype=tf.float32, rank=3),
    "encoder_image_mask": FeatureSpec(dtype=tf.int32, rank=0),
}


class _ImageFeatureConverter:
    """What both converters share: no packing, the image and its mask, the checks.

    Mixed in front of a seqio converter; subclasses implement `_convert_text(features,
    text_lengths) -> model text features` for one (trimmed, unpadded) example.
    """

    # The text features that are trimmed/padded to their length; the image is checked.
    TEXT_FEATURES = ("inputs", "targets")

    def __init__(self, pack: bool = False, apply_length_check: bool = True, **kwargs):
        # Default pack=False (seqio defaults to True): image examples are never packed.
        if pack:
            raise UsageError(PACKING_ERROR.format(name=type(self).__name__))
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
                f"{sorted(ds.element_spec)}): palimix models need one; language-only "
                "tasks give a blank image with has_image=0 (see palimix.features)."
            )
        return super().__call__(ds, task_feature_lengths)

    def _convert_features(
        self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
    ) -> tf.data.Dataset:
        image_features = _image_features_fn(ds.element_spec["image"].shape, _image_size(task_feature_lengths))
        text_lengths = {k: task_feature_lengths[k] for k in self.TEXT_FEATURES}

        def convert(features):
            # One map: the length checks, trimming, padding (seqio's
            # trim_and_pad_dataset), the example conversion and the image, instead of
            # a tf.data stage each.
            text = {
                key: _checked_and_trimmed(features[key], key, length, self._check_input_lengths)
                for key, length in text_lengths.items()
            }
            return {
                **self._convert_text(text, text_lengths),
                **image_features(features),
                **{k: features[k] for k in self._passthrough_features},
            }

        return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

    def _convert_text(self, text: Mapping[str, tf.Tensor], lengths: Mapping[str, int]) -> dict:
        raise NotImplementedError

    def _image_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict:
        return {
            "encoder_images": _image_size(task_feature_lengths),
            # A scalar per example: seqio's length checks skip rank-0 features, but
            # every model feature must be listed.
            "encoder_image_mask": 1,
        }


class PaliFeatureConverter(_ImageFeatureConverter, seqio.EncDecFeatureConverter):
    """`seqio.EncDecFeatureConverter` that also feeds the image and its mask to the model.

    Usage (what t5x does with `model.FEATURE_CONVERTER_CLS`):

        converter = PaliFeatureConverter(pack=False)
        model_ds = converter(task_ds, {"inputs": 32, "targets": 32, "image": 224})
    """

    TASK_FEATURES = {**seqio.EncDecFeatureConverter.TASK_FEATURES, **IMAGE_TASK_FEATURES}
    MODEL_FEATURES = {**seqio.EncDecFeatureConverter.MODEL_FEATURES, **IMAGE_MODEL_FEATURES}

    def _convert_text(self, text, lengths) -> dict:
        targets = _padded(text["targets"], lengths["targets"])
        # seqio.EncDecFeatureConverter's features for unpacked examples, in a few ops
        # (seqio's make_autoregressive_inputs handles packing with a roll and a
        # one-hot mask: ~60 graph nodes per example).
        return {
            "encoder_input_tokens": _padded(text["inputs"], lengths["inputs"]),
            "decoder_target_tokens": targets,
            "decoder_input_tokens": _shifted_right(targets, self.bos_id),
            "decoder_loss_weights": tf.cast(tf.not_equal(targets, 0), tf.int32),
        }

    def get_model_feature_lengths(
        self, task_feature_lengths: Mapping[str, int]
    ) -> Mapping[str, int]:
        lengths = dict(super().get_model_feature_lengths(task_feature_lengths))
        return {**lengths, **self._image_model_feature_lengths(task_feature_lengths)}


class PaliDecoderFeatureConverter(_ImageFeatureConverter, seqio.PrefixLMFeatureConverter):
    """`seqio.PrefixLMFeatureConverter` (unpacked) plus the image and its mask.

    For a prompt `inputs` [n] and an answer `targets` [m] (both end in EOS), with
    TASK_FEATURE_LENGTHS {"inputs": L, "targets": T, "image": S}, every decoder feature
    has length L + T (prompt and answer share one sequence; padding at the end):

        decoder_target_tokens     inputs ++ targets, padded
        decoder_input_tokens      the same, shifted right behind BOS (0)
        decoder_causal_attention  1 on positions 0..n (BOS and the prompt: the prefix
                                  the network attends to fully, with the image tokens
                                  in front of it), 0 elsewhere
        decoder_loss_weights      1 on the answer and its EOS only

    which is what seqio.PrefixLMFeatureConverter writes for the text, in one tf.data
    map. One difference, only when the length check is off: a prompt or answer that is
    too long is trimmed to its own length (L or T), so a long prompt never crowds
    the answer out of the sequence; seqio trims the concatenation to L + T.

        converter = PaliDecoderFeatureConverter(pack=False)
        model_ds = converter(task_ds, {"inputs": 32, "targets": 32, "image": 224})
    """

    TASK_FEATURES = {**seqio.PrefixLMFeatureConverter.TASK_FEATURES, **IMAGE_TASK_FEATURES}
    MODEL_FEATURES = {**seqio.PrefixLMFeatureConverter.MODEL_FEATURES, **IMAGE_MODEL_FEATURES}

    def _convert_text(self, text, lengths) -> dict:
        length = lengths["inputs"] + lengths["targets"]
        prompt_length = tf.size(text["inputs"])
        sequence_length = prompt_length + tf.size(text["targets"])
        targets = _padded(tf.concat([text["inputs"], text["targets"]], 0), length)
        positions = tf.range(length)
        weighted = positions < sequence_length
        if self.loss_on_targets_only:  # seqio's default, and the prefix LM recipe's
            weighted &= positions >= prompt_length
        return {
            "decoder_target_tokens": targets,
            "decoder_input_tokens": _shifted_right(targets, self.bos_id),
            "decoder_loss_weights": tf.cast(weighted, tf.int32),
            # The position that reads the prompt's last token (and predicts the first
            # answer token) is part of the prefix, as in seqio: hence `<=`.
            "decoder_causal_attention": tf.cast(positions <= prompt_length, tf.int32),
        }

    def get_model_feature_lengths(
        self, task_feature_lengths: Mapping[str, int]
    ) -> Mapping[str, int]:
        # seqio sums every task feature length, which would count the image side as
        # tokens; the decoder sequence is prompt + answer.
        length = task_feature_lengths["inputs"] + task_feature_lengths["targets"]
        lengths = {key: length for key in self.MODEL_FEATURES if key.startswith("decoder_")}
        lengths.update({k: task_feature_lengths[k] for k in self._passthrough_features})
        return {**lengths, **self._image_model_feature_lengths(task_feature_lengths)}


def _image_size(task_feature_lengths: Mapping[str, int]) -> int:
    size = task_feature_lengths.get("image")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise UsageError(
            "TASK_FEATURE_LENGTHS['image'] must be the image side in pixels (an int such "
            f"as 224), got {size!r}; e.g. {{'inputs': 32, 'targets': 32, 'image': 224}}."
        )
    return size


def _image_features_fn(image_shape: tf.TensorShape, image_size: int) -> Callable[[dict], dict]:
    """A function from an example's features to `encoder_images` and
    `encoder_image_mask`, checking the image shape at run time only where the
    dataset's static shape leaves it open (a known wrong shape fails here, now)."""
    _check_static_image_shape(image_shape, image_size)
    check_image = not image_shape.is_fully_defined()
    expected_shape = tf.constant([image_size, image_size, 3], dtype=tf.int32)

    def image_features(features) -> dict:
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
        has_image = features.get("has_image")
        if has_image is None:
            has_image = tf.constant(1, tf.int32)
        return {"encoder_images": image, "encoder_image_mask": tf.reshape(tf.cast(has_image, tf.int32), [])}

    return image_features


def _checked_and_trimmed(tokens: tf.Tensor, key: str, length: int, check: bool) -> tf.Tensor:
    """`tokens` [n] -> [min(n, length)]: longer sequences are an error when `check`
    (seqio's input length validation), else trimmed (seqio's trim_and_pad)."""
    if isinstance(tokens, tf.RaggedTensor):
        tokens = tokens.to_tensor()
    if check:
        assertion = tf.debugging.assert_less_equal(
            tf.shape(tokens)[0], length,
            message=f"Feature '{key}' is longer than its length {length} in TASK_FEATURE_LENGTHS")
        with tf.control_dependencies([assertion]):
            tokens = tf.identity(tokens)
    return tokens[:length]


def _padded(tokens: tf.Tensor, length: int) -> tf.Tensor:
    """`tokens` [n <= length] -> [length], padded with 0 (a static shape for seqio)."""
    padded = tf.pad(tokens, [(0, length - tf.shape(tokens)[0])])
    padded.set_shape([length])
    return padded


def _shifted_right(targets: tf.Tensor, bos_id: int) -> tf.Tensor:
    """seqio's autoregressive inputs of one unpacked sequence: BOS, then targets[:-1]."""
    return tf.concat([tf.constant([bos_id], targets.dtype), targets[:-1]], 0)


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
