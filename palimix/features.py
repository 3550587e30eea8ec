"""The SeqIO output features every palimix task has (the example contract).

    inputs      int32 [len]        the tokenized prompt (palimix vocabulary, EOS appended)
    targets     int32 [len]        the tokenized target (palimix vocabulary, EOS appended)
    image       float32 [S, S, 3]  the image in [-1, 1]; all zeros for language-only kinds
    has_image   int32 [1]          1 for a real image, 0 for the blank one (the model masks it)

All tasks share these four keys and dtypes, so any palimix tasks can be mixed.
Examples also carry `inputs_pretokenized`, `targets_pretokenized`, `language`,
`kind`, `id` (and `references` in eval splits), which seqio passes through tasks
and mixtures drop.

`has_image` is a rank-1 `seqio.ContinuousFeature` of length 1, not a scalar:
seqio.Evaluator reads every output feature's length from its first dimension (a
scalar raises IndexError there), and `PaliFeatureConverter` reshapes it to the
scalar `encoder_image_mask`. Only `TEXT_FEATURES` are ever tokenized.
"""

from __future__ import annotations

import seqio
import tensorflow as tf

# The features seqio tokenizes; the image is never passed through a vocabulary.
TEXT_FEATURES = ("inputs", "targets")
# What PaLI papers and big_vision use; the demo uses a much smaller side (tasks.demo).
DEFAULT_IMAGE_SIZE = 224
# Extra string features every example keeps next to the output features.
PASSTHROUGH_FEATURES = ("inputs_pretokenized", "targets_pretokenized", "language", "kind", "id")


def output_features(image_size: int = DEFAULT_IMAGE_SIZE, vocabulary: seqio.Vocabulary | None = None):
    """{name: seqio.Feature} for palimix tasks: inputs, targets, image, has_image.

    Args:
      image_size: the image side S. It is not part of the seqio feature (seqio knows
        only dtype and rank); tasks resize to it and TASK_FEATURE_LENGTHS["image"]
        must name it. Checked here so that a wrong value fails at registration.
      vocabulary: the text vocabulary; default `palimix.vocab.default_vocabulary()`.
    """
    check_image_size(image_size)
    if vocabulary is None:
        from palimix import vocab  # Imported here: loading the model is not free.

        vocabulary = vocab.default_vocabulary()
    return {
        "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=True),
        "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=True),
        "image": seqio.ContinuousFeature(dtype=tf.float32, rank=3, required=True),
        "has_image": seqio.ContinuousFeature(dtype=tf.int32, rank=1, required=True),
    }


def check_image_size(image_size) -> int:
    from palimix.errors import UsageError

    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise UsageError(f"image_size must be a positive int (pixels per side), got {image_size!r}.")
    return image_size


def task_feature_lengths(inputs: int, targets: int, image_size: int) -> dict[str, int]:
    """The TASK_FEATURE_LENGTHS dict t5x and the runner need: text lengths + image side."""
    return {"inputs": int(inputs), "targets": int(targets), "image": check_image_size(image_size)}


# `has_image` values that a decoding map gives examples for the filter after it:
# DROPPED (a bad image, or no target) and END_OF_DATA (the end marker of
# `preprocessors.image.ImageDecoder`); never seen after that filter (`is_kept`).
DROPPED = -1
END_OF_DATA = -2


@tf.autograph.experimental.do_not_convert  # Autograph would convert it on every task build.
def is_kept(example):
    """tf.data filter predicate after a map that marks drops with has_image < 0."""
    return example["has_image"][0] >= 0


def has_real_image(example) -> bool:
    """Whether a numpy example (from `as_numpy_iterator`) has a real image: reads the
    [1] `has_image` feature; an example without it has one (as the converter assumes)."""
    import numpy as np

    return int(np.asarray(example.get("has_image", 1)).reshape(-1)[0]) == 1
