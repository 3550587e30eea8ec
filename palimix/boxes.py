"""Boxes as PaliGemma's `<loc>` text: the targets of the detection and referring kinds.

A box is `[y_min, x_min, y_max, x_max]` in normalised image coordinates (0..1, the
top-left corner is 0, 0). PaliGemma (big_vision) writes each corner coordinate as one
of 1,024 tokens, `<loc{round(coord * 1023):04d}>`, in that order, then a space and the
object's label; several objects are joined by " ; ":

    >>> to_loc_text([[0.1, 0.2, 0.5, 0.6]], ["cat"])
    '<loc0102><loc0205><loc0512><loc0614> cat'
    >>> parse_loc_text('<loc0102><loc0205><loc0512><loc0614> cat')  # box rounded here
    [Detection(box=(0.0997, 0.2004, 0.5005, 0.6002), label='cat')]

`to_loc_text` (plain Python) and `loc_text_tf` (the same text with TensorFlow ops,
for the kinds' text stage) refuse a box outside 0..1 or with a minimum above its
maximum: the input pipeline stops on it, naming the example, as it stops on text that
is not UTF-8 (only undecodable images are skipped and counted). `parse_loc_text` is
lenient, for model predictions: objects that are not four `<loc>` tokens are ignored.

Rounding is round-half-to-even in both (Python's `round`, `tf.round`), so the two
give the same tokens; big_vision bins with `tf.round` as well.

This module imports TensorFlow only inside the `_tf` functions (the kind table and the
metrics import it without TensorFlow).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

from palimix.errors import UsageError

# Tokens per coordinate: <loc0000> .. <loc1023> (palimix.vocab.TOKENSETS["loc"]).
LOC_BINS = 1024
# PaliGemma's separator between objects ("detect cat ; dog" and in the targets).
OBJECT_SEPARATOR = " ; "
# Coordinates this far outside 0..1 are float noise (a box computed from pixel
# sizes), clipped rather than refused.
_TOLERANCE = 1e-6

# One object: four <loc> tokens, then an optional label up to the next object or the end.
_OBJECT = re.compile(r"<loc(\d{4})><loc(\d{4})><loc(\d{4})><loc(\d{4})>[ ]?(.*?)\s*(?=;\s*<loc\d{4}>|$)", re.S)


class BoxError(UsageError):
    """A box that cannot be written as <loc> tokens (outside 0..1, or min above max)."""


class Detection(NamedTuple):
    box: tuple[float, float, float, float]  # y_min, x_min, y_max, x_max in 0..1.
    label: str


def check_box(box: Sequence[float]) -> tuple[float, float, float, float]:
    """`box` as four floats clipped to 0..1; BoxError for anything else."""
    values = tuple(float(v) for v in box)
    if len(values) != 4:
        raise BoxError(f"A box is [y_min, x_min, y_max, x_max]; got {len(values)} numbers: {list(box)!r}.")
    if not all(-_TOLERANCE <= v <= 1 + _TOLERANCE for v in values):
        raise BoxError(f"Box {list(values)} has coordinates outside 0..1 (boxes are normalised by the image size).")
    if values[0] > values[2] or values[1] > values[3]:
        raise BoxError(f"Box {list(values)} has a minimum above its maximum (the order is y_min, x_min, y_max, x_max).")
    return tuple(min(max(v, 0.0), 1.0) for v in values)


def loc_tokens(box: Sequence[float]) -> str:
    """The four <loc> tokens of one box (checked)."""
    return "".join(f"<loc{round(v * (LOC_BINS - 1)):04d}>" for v in check_box(box))


def to_loc_text(boxes: Sequence[Sequence[float]], labels: Sequence[str] | None = None) -> str:
    """PaliGemma's target text for `boxes` with their `labels` (None: boxes only)."""
    if labels is not None and len(labels) != len(boxes):
        raise BoxError(f"{len(boxes)} boxes but {len(labels)} labels.")
    objects = [loc_tokens(box) + (f" {labels[i]}" if labels is not None else "") for i, box in enumerate(boxes)]
    return OBJECT_SEPARATOR.join(objects)


def parse_loc_text(text: str) -> list[Detection]:
    """The objects of a `<loc>` text, in order; what is not an object is ignored, and
    so is an object with a token above <loc1023> or a minimum above its maximum."""
    found = []
    for match in _OBJECT.finditer(text):
        bins = [int(match.group(i)) for i in range(1, 5)]
        if max(bins) >= LOC_BINS or bins[0] > bins[2] or bins[1] > bins[3]:
            continue
        found.append(Detection(tuple(b / (LOC_BINS - 1) for b in bins), match.group(5).strip()))
    return found


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two [y_min, x_min, y_max, x_max] boxes (0 when both are empty)."""
    height = min(a[2], b[2]) - max(a[0], b[0])
    width = min(a[3], b[3]) - max(a[1], b[1])
    intersection = max(height, 0.0) * max(width, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - intersection
    return intersection / union if union > 0 else 0.0


# --- TensorFlow: the same text inside the input pipeline ------------------------------


def as_boxes_tf(value):
    """A record's boxes (ragged or dense, [n, 4] or flat [4n]; one box [4]) as a float32 [n, 4] tensor."""
    import tensorflow as tf

    if isinstance(value, tf.RaggedTensor):
        value = value.flat_values
    return tf.reshape(tf.cast(value, tf.float32), [-1, 4])


def checked_boxes_tf(boxes, example_id, field: str):
    """`boxes` [n, 4] clipped to 0..1 after an assertion (as `check_box`) that names the
    example and the field: a box outside the image or turned inside out stops the pipeline."""
    import tensorflow as tf

    inside = tf.reduce_all((boxes >= -_TOLERANCE) & (boxes <= 1 + _TOLERANCE))
    ordered = tf.reduce_all(boxes[:, :2] <= boxes[:, 2:])
    message = tf.strings.join(["The example with id ", example_id, f" has a box in its field {field} that is "
                               "outside 0..1 or has a minimum above its maximum (boxes are [y_min, x_min, y_max, "
                               "x_max], normalised by the image size)"])
    with tf.control_dependencies([tf.debugging.Assert(inside & ordered, [message])]):
        return tf.clip_by_value(tf.identity(boxes), 0.0, 1.0)


def loc_text_tf(boxes, labels=None):
    """`to_loc_text` in TensorFlow: checked boxes [n, 4] and labels [n] (or None) -> a string scalar."""
    import tensorflow as tf

    bins = tf.cast(tf.round(boxes * (LOC_BINS - 1)), tf.int64)
    tokens = tf.strings.join(["<loc", tf.strings.as_string(bins, width=4, fill="0"), ">"])
    objects = tf.strings.reduce_join(tokens, axis=-1)
    if labels is not None:
        objects = tf.strings.join([objects, labels], separator=" ")
    return tf.strings.reduce_join(objects, separator=OBJECT_SEPARATOR)


def _labels_tf(value):
    """A record's labels (a ragged row or dense strings) as stripped 1-D strings."""
    import tensorflow as tf

    if isinstance(value, tf.RaggedTensor):
        value = value.flat_values
    return tf.strings.strip(tf.reshape(value, [-1]))


def _example_id_tf(example):
    import tensorflow as tf

    value = example["id"]
    return value if value.dtype == tf.string else tf.strings.as_string(value)


def _detection_fields_tf(example):
    """A detection record plus `targets` (its boxes as <loc> text with labels) and
    `objects` (its distinct labels in order of appearance, " ; "-joined: the prompt)."""
    import tensorflow as tf

    example_id = _example_id_tf(example)
    labels = _labels_tf(example["labels"])
    found = as_boxes_tf(example["boxes"])
    same_count = tf.debugging.Assert(tf.equal(tf.shape(found)[0], tf.size(labels)), [tf.strings.join(
        ["The example with id ", example_id, " has a different number of boxes and labels"])])
    with tf.control_dependencies([same_count]):
        checked = checked_boxes_tf(found, example_id, "boxes")
    distinct, _ = tf.unique(labels)  # tf.unique keeps the order of first appearance.
    return {**example, "targets": loc_text_tf(checked, labels),
            "objects": tf.strings.reduce_join(distinct, separator=OBJECT_SEPARATOR)}


def _referring_fields_tf(example):
    """A referring record plus `targets`: its one box as <loc> text labelled with its expression."""
    import tensorflow as tf

    example_id = _example_id_tf(example)
    expression = tf.strings.strip(tf.reshape(example["expression"], []))
    found = as_boxes_tf(example["box"])
    one_box = tf.debugging.Assert(tf.equal(tf.shape(found)[0], 1), [tf.strings.join(
        ["The example with id ", example_id, " needs exactly one box [y_min, x_min, y_max, x_max] in its field box"])])
    with tf.control_dependencies([one_box]):
        checked = checked_boxes_tf(found, example_id, "box")
    return {**example, "expression": expression, "targets": loc_text_tf(checked, expression[None])}


def detection_targets(dataset):
    """The detection kind's text stage: `targets` and `objects` for each record
    (records without boxes get an empty target, and build_example leaves them out)."""
    import tensorflow as tf

    fn = tf.autograph.experimental.do_not_convert(_detection_fields_tf)
    return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def referring_targets(dataset):
    """The referring kind's text stage: `targets` for each record."""
    import tensorflow as tf

    fn = tf.autograph.experimental.do_not_convert(_referring_fields_tf)
    return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
