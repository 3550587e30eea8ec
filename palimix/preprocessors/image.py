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
the pipeline with an error naming the file instead. Nothing is dropped without being
counted: a JPEG whose headers pass the check below but whose data makes
`tf.io.decode_jpeg` fail is skipped and counted as corrupt, logged with the ids around
it (`ImageDecoder` says how). Only image decoding is skipped that way: an error of the
source, or of a map after decoding, stops the pipeline.

Which examples have no image: `image/encoded` empty AND `image/path` empty (or
absent). An empty `image/encoded` with a path means the source could not read the
file (missing) or the file is empty: a bad image, not a language-only example.

How it stays fast: a header check in Python (tens of microseconds) sends the common
case, a complete upright baseline RGB/gray JPEG, to `tf.io.decode_jpeg` with libjpeg's
DCT scaling (`ratio`: a 640x480 photo is decoded at 320x240 for S=224), outside the
GIL; everything else (PNG, WebP, GIF, CMYK, progressive or EXIF-rotated JPEGs, broken
files) goes to Pillow (`image_files.decode_near_size`) in `tf.numpy_function`, which
converts it or reports why it cannot. The header check runs on batches of
`ROUTE_BATCH` examples: a `tf.numpy_function` call costs ~0.4 ms of CPU whatever it
does (the GIL, converting arguments), ten times the check itself, and a batch pays it
once. (A header walk in TF ops instead was tried: a graph op costs microseconds each
here, and the walk needs hundreds per file.) The last resize to S x S is
`tf.image.resize` (bilinear, as big_vision's `resize`). Order is deterministic.

"""

from __future__ import annotations

import collections
import logging
import threading

import numpy as np
import tensorflow as tf

from palimix import features
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

# Status values returned by the decoding function next to the pixels; _FAILED (an
# unexpected error of the Pillow path) never reaches a filter: the count stops there.
_NO_IMAGE, _IMAGE, _DROPPED, _END, _FAILED = 0, 1, features.DROPPED, features.END_OF_DATA, -3
# Decoding branches: no image, Pillow, tf.io.decode_jpeg at scale 1/1, 1/2, 1/4, 1/8,
# the end marker.
_ROUTE_NO_IMAGE, _ROUTE_PILLOW = 0, 1
_ROUTE_TF_JPEG = {1: 2, 2: 3, 4: 4, 8: 5}
_ROUTE_END = 6
# The "file" of the one example `ImageDecoder.route` appends after the data.
_END_MARK = b"\x00palimix: end of data\x00"
# Each example's position in the data, from `route` to `finish` (removed there).
_POSITION = "image/position"
# The feature that carries each example's branch from the batched header check to
# the per-example decoding map (removed there).
_ROUTE = "image/route"
# The message of a _FAILED decoding, from the decoder to the count (removed there).
_ERROR = "image/error"
# Examples per call of the header check (see the module docstring).
ROUTE_BATCH = 16
# Batches decoded at once (each in its own small dataset, see ImageDecoder).
_DECODE_CYCLE = 4


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
      num_parallel_calls: for the decoding; the output order is deterministic.
    """
    decoder = ImageDecoder(image_size=image_size, strict=strict, task_name=task_name, max_pixels=max_pixels,
                           background=background, num_parallel_calls=num_parallel_calls)
    return decoder.decode(dataset).filter(features.is_kept)


class ImageDecoder:
    """`decode_image` without its final filter, for a preprocessor that filters after
    a map of its own (`prompts.build_example` does: every tf.data stage costs CPU per
    example, ~0.15 ms here for a filter):

        decoder = ImageDecoder(image_size=224, task_name="coco_en")
        dataset = decoder.decode(dataset)     # image, has_image; bad images marked
        dataset = dataset.map(fn)             # fn keeps has_image (may lower it)
        dataset = dataset.filter(features.is_kept)

    Stages: a header check in Python per `ROUTE_BATCH` examples picks each example's
    decoding branch; each batch is then decoded, one example at a time, in a dataset
    of its own (`interleave`, parallel and in order). A JPEG that passes the header
    check but makes `tf.io.decode_jpeg` fail (corrupt tables or scan data: TF raises
    exactly where a full decode fails, so no header check can tell) is skipped there
    by `ignore_errors`, which sees nothing but that batch's decoding: an error of the
    source, of the header check or of whatever map comes after stops the pipeline.
    The skipped examples are counted from the gaps in the positions stamped before
    decoding (up to an end marker appended after the data) and logged with the ids
    around them. An unexpected error of the Pillow path (not an `ImageDecodeError`)
    stops the pipeline naming the task and the example id. With `strict=True`
    nothing is skipped: the first bad image stops the pipeline.
    """

    def __init__(self, *, image_size: int = 224, strict: bool = False, task_name: str = "",
                 max_pixels: int = DEFAULT_MAX_PIXELS, background: tuple[int, int, int] = DEFAULT_BACKGROUND,
                 num_parallel_calls: int = tf.data.AUTOTUNE):
        self.image_size, self.task_name, self.strict = int(image_size), str(task_name), bool(strict)
        self._routes = _router(self.image_size, int(max_pixels))
        self._decode = _decoder(self.image_size, self.strict, int(max_pixels), tuple(int(c) for c in background))
        self._num_parallel_calls = num_parallel_calls

    def decode(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        """`image/encoded` -> `image` and `has_image` (1 image, 0 none; DROPPED a bad
        image, counted, and END_OF_DATA the end marker: the caller's filter removes both)."""
        # ragged_batch: features of varying length (a list of captions) batch as ragged
        # rows, and unbatch gives every example back with its own spec.
        batches = dataset.ragged_batch(ROUTE_BATCH)
        if self.strict:
            routed = batches.map(self._route, num_parallel_calls=self._num_parallel_calls)
            return routed.unbatch().map(self._decode_example, num_parallel_calls=self._num_parallel_calls,
                                        deterministic=True)
        end = _end_marker(batches.element_spec)
        if end is None:
            logger.warning("Task %r: examples of this structure get no end marker; images that fail inside "
                           "tf.data at the very end of the data are dropped without being counted.", self.task_name)
        else:
            batches = batches.concatenate(end)
        routed = batches.scan(tf.constant(0, tf.int64), _stamp_positions).map(
            self._route, num_parallel_calls=self._num_parallel_calls)
        # block_length ROUTE_BATCH: a batch's examples come out together, batches in order.
        parallel = self._num_parallel_calls
        cycle = _DECODE_CYCLE if parallel in (None, tf.data.AUTOTUNE) else max(1, parallel)
        decoded = routed.interleave(self._decode_batch_skipping_failures, cycle_length=cycle,
                                    block_length=ROUTE_BATCH, num_parallel_calls=self._num_parallel_calls,
                                    deterministic=True)
        return decoded.scan((tf.constant(-1, tf.int64), tf.constant("", tf.string)), self._count_lost)

    @tf.autograph.experimental.do_not_convert
    def _route(self, batch):
        batch = dict(batch)
        batch[_ROUTE] = self._routes(batch["image/encoded"], batch.get("image/path"))
        return batch

    @tf.autograph.experimental.do_not_convert
    def _decode_batch_skipping_failures(self, batch):
        """One routed batch -> its decoded examples, those whose decoding raised left out."""
        examples = tf.data.Dataset.from_tensors(batch).unbatch()
        return examples.map(self._decode_example).ignore_errors()

    @tf.autograph.experimental.do_not_convert
    def _decode_example(self, example):
        example = dict(example)
        encoded, branch = example.pop("image/encoded"), example.pop(_ROUTE)
        path = example.get("image/path", tf.constant("", tf.string))
        image, status, error = self._decode(encoded, path, branch, tf.constant(self.task_name))
        example["image"], example["has_image"] = image, status
        if not self.strict:
            example[_ERROR] = error
        return example

    @tf.autograph.experimental.do_not_convert
    def _count_lost(self, state, example):
        """scan after decoding: counts the examples skipped since the last one, and
        stops on an unexpected decoding error (`_FAILED`)."""
        last, last_id = state
        example = dict(example)
        position, error = example.pop(_POSITION), example.pop(_ERROR)
        this_id = example.get("id", tf.constant("", tf.string))
        this_id = this_id if this_id.dtype == tf.string else tf.strings.as_string(this_id)
        task = tf.constant(self.task_name)
        status = example["has_image"][0]
        lost = position - last - 1
        counted = tf.cond(
            lost > 0,
            lambda: tf.numpy_function(_count_lost, [task, lost, last_id, this_id, tf.equal(status, _END)], tf.int64,
                                      stateful=True, name="palimix_count_lost"),
            lambda: tf.constant(0, tf.int64))
        failed = tf.cond(
            tf.equal(status, _FAILED),
            lambda: tf.numpy_function(_raise_failure, [task, this_id, error], tf.int64, stateful=True,
                                      name="palimix_image_failure"),
            lambda: tf.constant(0, tf.int64))
        return (position + 0 * (counted + failed), this_id), example  # (Uses both: they run.)


def _raise_failure(task_name: bytes, example_id: bytes, error: bytes):
    """An unexpected error of the Pillow path: a bug, not a bad file; never skipped."""
    raise RuntimeError(f"Task {task_name.decode('utf-8', 'replace')!r}: decoding the image of the example with id "
                       f"{example_id.decode('utf-8', 'replace')!r} failed unexpectedly: "
                       f"{error.decode('utf-8', 'replace')}")


def _stamp_positions(total, batch):
    """scan over batches: each example's position in the data (`_POSITION`)."""
    batch = dict(batch)
    rows = tf.shape(batch["image/encoded"], out_type=tf.int64)[0]
    batch[_POSITION] = total + tf.range(rows, dtype=tf.int64)
    return total + rows, batch


def _end_marker(batch_spec) -> tf.data.Dataset | None:
    """A dataset of one batch of one example shaped like `batch_spec`, whose image is
    the end mark; None for structures it cannot build (not dense or ragged)."""

    def one_row(spec):
        zeros = tf.zeros([1] + [0 if d is None else d for d in spec.shape[1:]], spec.dtype)
        if isinstance(spec, tf.RaggedTensorSpec):
            return tf.RaggedTensor.from_tensor(zeros, ragged_rank=spec.ragged_rank, row_splits_dtype=spec.row_splits_dtype)
        if isinstance(spec, tf.TensorSpec):
            return zeros
        raise TypeError(spec)

    try:
        row = tf.nest.map_structure(one_row, batch_spec)
    except (TypeError, ValueError):
        return None
    if not isinstance(row, dict) or "image/encoded" not in row:
        return None
    row["image/encoded"] = tf.constant([_END_MARK])
    return tf.data.Dataset.from_tensors(row)


def _count_lost(task_name: bytes, lost, last_id: bytes, this_id: bytes, at_end) -> np.int64:
    """Counts (and logs) `lost` examples that an error inside tf.data removed."""
    before, after = last_id.decode("utf-8", "replace"), this_id.decode("utf-8", "replace")
    where = f"after the example with id {before!r}" if before else "at the start of the data"
    where += " (at the end of the data)" if at_end else f" and before {after!r}"
    error = ImageDecodeError("corrupt", f"{int(lost)} example(s) {where}",
                             "an error inside tf.data, e.g. tf.io.decode_jpeg on a JPEG whose headers parse but "
                             "whose tables or scan data are corrupt")
    for _ in range(int(lost)):
        _DROPS.add(task_name.decode("utf-8", "replace"), error)
    return np.int64(lost)


def _router(size: int, max_pixels: int):
    """fn(encoded [B], paths [B] or None) -> the decoding branch [B] of each example
    (header parsing only, in Python, once per batch)."""

    def branches(encoded, paths):
        out = np.empty(len(encoded), np.int32)
        for i, (data, path) in enumerate(zip(encoded, paths)):
            if not data and not path:
                out[i] = _ROUTE_NO_IMAGE
                continue
            if data == _END_MARK:
                out[i] = _ROUTE_END
                continue
            scale = image_files.jpeg_scale_for_tensorflow(data, size, max_pixels=max_pixels)
            out[i] = _ROUTE_TF_JPEG[scale] if scale else _ROUTE_PILLOW
        return out

    def routes(encoded, paths):
        paths = tf.zeros_like(encoded) if paths is None else paths  # "" each.
        branch = tf.numpy_function(branches, [encoded, paths], tf.int32, stateful=False, name="palimix_image_route")
        branch.set_shape(encoded.shape)
        return branch

    return routes


def _decoder(size: int, strict: bool, max_pixels: int, background: tuple[int, int, int]):
    """fn(encoded, path, branch, task_name) -> (image [S, S, 3] float32, has_image [1]
    int32, error message), ops for the map function; `branch` comes from `_router`.

    Not a tf.function shared by every task's map: calling one from a tf.data map
    costs ~0.25 ms of CPU per example here, while inlining its ops costs each task's
    trace a few milliseconds once."""

    def decode_or_drop(encoded, path, task_name):
        path = path.decode("utf-8", "replace") if isinstance(path, bytes) else str(path)
        blank = np.zeros((1, 1, 3), np.uint8)
        if not encoded and not path:
            return blank, np.int32(_NO_IMAGE), b""
        try:
            if not encoded:
                raise ImageDecodeError("missing" if not _file_exists(path) else "empty", path)
            pixels = image_files.decode_near_size(encoded, size, path=path, max_pixels=max_pixels, background=background)
            return pixels, np.int32(_IMAGE), b""
        except ImageDecodeError as error:
            if strict:
                raise
            _DROPS.add(task_name.decode("utf-8", "replace"), error)
            return blank, np.int32(_DROPPED), b""
        except Exception as error:  # noqa: BLE001 - a bug, reported (not skipped) by ImageDecoder's count.
            if strict:
                raise
            # Raised here it would look like a corrupt JPEG to the `ignore_errors`
            # around decoding; returned, it stops the pipeline with the example's id.
            return blank, np.int32(_FAILED), f"{path}: {type(error).__name__}: {error}".encode("utf-8", "replace")

    def decode(encoded, path, branch, task_name):
        no_error = tf.constant("", tf.string)

        def blank(status):  # No image, or the end marker: no pixels to decode.
            return lambda: (tf.zeros([1, 1, 3], tf.uint8), tf.constant(status, tf.int32), no_error)

        def pillow():
            return tuple(tf.numpy_function(decode_or_drop, [encoded, path, task_name], [tf.uint8, tf.int32, tf.string],
                                           stateful=True, name="palimix_decode_image"))

        def tf_jpeg(scale):
            # Same libjpeg(-turbo) DCT scaling as Pillow's draft mode, without the GIL.
            return lambda: (tf.io.decode_jpeg(encoded, channels=3, ratio=scale), tf.constant(_IMAGE, tf.int32),
                            no_error)

        branches = [blank(_NO_IMAGE), pillow, tf_jpeg(1), tf_jpeg(2), tf_jpeg(4), tf_jpeg(8), blank(_END)]
        pixels, status, error = tf.switch_case(branch, branches)
        pixels.set_shape([None, None, 3])
        status.set_shape([])
        error.set_shape([])
        # The final resize runs in TensorFlow (outside the GIL, vectorized): bilinear
        # without antialiasing, as big_vision's `resize`; Pillow's is several times
        # slower. Its weights are convex, so the values stay in [0, 255]: no clipping.
        resized = tf.image.resize(pixels, [size, size], method="bilinear", antialias=False)
        # [0, 255] -> [-1, 1] in two passes over the image (it is 600 kB at 224 px, and
        # every elementwise op costs a pass); language-only examples get all zeros.
        is_image = tf.cast(tf.equal(status, _IMAGE), tf.float32)
        image = resized * (is_image * (2.0 / 255.0)) - is_image
        # 1 image, 0 no image, -1 dropped, -2 end marker: `features.is_kept` keeps 0 and 1.
        # Shape [1], not a scalar: seqio.Evaluator reads every feature's length from
        # its first dimension (palimix.features).
        return image, tf.reshape(status, [1]), error

    return decode
