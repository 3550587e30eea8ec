"""The image preprocessor: `image/encoded` file bytes -> `image` float32 [S, S, 3] in [-1, 1].

A seqio-style preprocessor (a plain function of a `tf.data.Dataset`):

    preprocessors=[
        functools.partial(image.decode_image, image_size=224, task_name="coco_captions_en"),
        ...
    ]

Every example gets `image` (float32 [S, S, 3], values in [-1, 1] as in big_vision)
and `has_image` (int32: 1 for a real image, 0 for a language-only example, whose
`image` is all zeros). `image/encoded` is removed (the bytes are not needed after
decoding); the other keys pass through unchanged.

Examples whose image cannot be used (missing, empty, truncated or corrupt file,
not an image, decompression bomb) are dropped and counted per task and reason:
`dropped_image_counts()` is what `palimix stats` and the training logs report, and
each drop logs a warning naming the file (the first `LOGGED_DROPS_PER_REASON` per task
and reason, then only the counts). With `strict=True` the first bad image stops
the pipeline with an error naming the file instead. Nothing raises inside tf.data
otherwise, and nothing is dropped without being counted.

Which examples have no image: `image/encoded` empty AND `image/path` empty (or
absent). An empty `image/encoded` with a path means the source could not read the
file (missing) or the file is empty: a bad image, not a language-only example.

Decoding runs Pillow (see `image_files`) in `tf.numpy_function` on parallel map
calls: Pillow releases the GIL while it decodes and resizes, and its JPEG DCT
scaling makes the common case (large JPEG, small model resolution) cheaper than a
full `tf.io.decode_jpeg` + `tf.image.resize`. Order is deterministic.
"""

from __future__ import annotations

import collections
import logging
import threading

import numpy as np
import tensorflow as tf

from palimix.preprocessors import image_files
from palimix.preprocessors.image_files import (  # noqa: F401  (re-exported)
    DEFAULT_BACKGROUND,
    DEFAULT_MAX_PIXELS,
    REASONS,
    ImageDecodeError,
)

logger = logging.getLogger(__name__)

# Warnings logged per (task, reason) before only counting: a dataset whose image
# folder is missing must not print 100k lines.
LOGGED_DROPS_PER_REASON = 20

# Status values returned by the decoding function next to the pixels.
_NO_IMAGE, _IMAGE, _DROPPED = 0, 1, -1


class _DropCounter:
    """Thread-safe counts of dropped images, by task and reason (tf.data calls the
    decoder from several threads)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

    def add(self, task_name: str, error: ImageDecodeError) -> None:
        with self._lock:
            counts = self._counts[task_name]
            counts[error.reason] += 1
            seen = counts[error.reason]
        if seen <= LOGGED_DROPS_PER_REASON:
            more = " (further drops of this kind are only counted)" if seen == LOGGED_DROPS_PER_REASON else ""
            logger.warning("Task %r: dropped an example: %s%s", task_name or "<unnamed>", error, more)

    def counts(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {task: dict(c) for task, c in self._counts.items() if sum(c.values())}

    def reset(self, task_name: str | None) -> None:
        with self._lock:
            if task_name is None:
                self._counts.clear()
            else:
                self._counts.pop(task_name, None)


_DROPS = _DropCounter()


def dropped_image_counts() -> dict[str, dict[str, int]]:
    """{task name: {reason: count}} of images dropped in this process so far.

    Counts grow as datasets are iterated (each pass over a dataset counts again);
    reasons are keys of `REASONS`. Tasks without drops are absent.
    """
    return _DROPS.counts()


def num_dropped_images(task_name: str) -> int:
    """How many images of `task_name` were dropped in this process so far."""
    return sum(_DROPS.counts().get(task_name, {}).values())


def reset_dropped_image_counts(task_name: str | None = None) -> None:
    """Forgets the counts of one task, or of all tasks."""
    _DROPS.reset(task_name)


def _file_exists(path: str) -> bool:
    if image_files.is_member_path(path):  # Inside a tar shard or TFDS: it exists, it is empty.
        return True
    try:
        return tf.io.gfile.exists(path)
    except tf.errors.OpError:
        return False


def decode_image(
    dataset: tf.data.Dataset,
    *,
    image_size: int = 224,
    strict: bool = False,
    task_name: str = "",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = DEFAULT_BACKGROUND,
    num_parallel_calls: int = tf.data.AUTOTUNE,
) -> tf.data.Dataset:
    """Decodes `image/encoded` into `image` and `has_image`; drops and counts bad images.

    Args:
      dataset: examples with `image/encoded` (string) and optionally `image/path`.
      image_size: output side S (224, 448, 896 for PaLI); the image is resized to
        S x S without keeping the aspect ratio, as PaLI and big_vision do.
      strict: raise (naming the file) on the first bad image instead of dropping it.
      task_name: the name drops are counted under (`dropped_image_counts()`).
      max_pixels: larger images are refused before they are decoded.
      background: RGB colour that transparent pixels are composited on.
      num_parallel_calls: for the decoding map; the output order is deterministic.
    """
    size = int(image_size)

    def decode_or_drop(encoded, path):
        path = path.decode("utf-8", "replace") if isinstance(path, bytes) else str(path)
        blank = np.zeros((size, size, 3), np.uint8)
        if not encoded and not path:
            return blank, np.int32(_NO_IMAGE)
        try:
            if not encoded:
                raise ImageDecodeError("missing" if not _file_exists(path) else "empty", path)
            pixels = image_files.decode(encoded, size, path=path, max_pixels=max_pixels, background=background)
            return pixels, np.int32(_IMAGE)
        except ImageDecodeError as error:
            if strict:
                raise
            _DROPS.add(task_name, error)
            return blank, np.int32(_DROPPED)

    def decode(example):
        example = dict(example)
        encoded = example.pop("image/encoded")
        path = example.get("image/path", tf.constant("", tf.string))
        pixels, status = tf.numpy_function(
            decode_or_drop, [encoded, path], [tf.uint8, tf.int32], stateful=True, name="palimix_decode_image"
        )
        pixels.set_shape([size, size, 3])
        status.set_shape([])
        has_image = tf.cast(tf.equal(status, _IMAGE), tf.int32)
        # uint8 [0, 255] -> [-1, 1]; language-only examples get all zeros.
        scale = tf.cast(has_image, tf.float32)
        example["image"] = (tf.cast(pixels, tf.float32) * (2.0 / 255.0) - 1.0) * scale
        example["has_image"] = has_image
        example["_image_status"] = status
        return example

    def keep(example):
        return example["_image_status"] != _DROPPED

    def strip_status(example):
        example = dict(example)
        del example["_image_status"]
        return example

    dataset = dataset.map(decode, num_parallel_calls=num_parallel_calls, deterministic=True)
    return dataset.filter(keep).map(strip_status)
