"""Scene faithfulness: does a generated demo image show what its prompt asked for?

The demo's scenes (palimix/data/demo, drawn by `scripts/build_demo_data.py` from the
tables below, the one place they are written) are one coloured shape on a light grey
background. Their attributes can be read back by rule:

- the shape's pixels: those far from the background colour (the median of the image's
  border; farther than half the distance of the shape's own colour, so that a blurred
  edge is cut where the sharp one was), the largest connected group of them;
- colour: the palette colour nearest to the group's median pixel;
- position: the named position nearest to the group's centroid;
- shape: how much of its bounding box the group fills (a circle pi/4, a square 1, a
  triangle 1/2) and whether its mass sits low (a triangle pointing up), nearest to
  each shape's values.

`read_scene(pixels) -> Scene`; `faithfulness(wanted, images)` scores images against
the scenes their prompts describe: the share (x 100) of prompt attributes matched, per
attribute (`faithfulness_color`, `_shape`, `_position`) and over all three
(`faithfulness`). An image with no shape in it matches nothing.
`faithfulness_metric(decode_texts, scene_of_target)` is the same as a seqio metric
function on code texts (palimix.image_codes): predictions drawn by an image tokenizer
(palimix.image_tokenizer), each target's scene looked up.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from palimix.errors import UsageError

# --- the demo's scenes (scripts/build_demo_data.py draws them from these) -----------------

COLORS = {"red": (215, 40, 40), "green": (40, 165, 60), "blue": (40, 80, 215), "yellow": (235, 200, 30)}
SHAPES = ("circle", "square", "triangle")
# Each shape's extent from its centre (up, left, down, right) in units of its radius
# r: a circle, a square of side 1.8 r, a triangle pointing up 2.2 r wide.
SHAPE_EXTENTS = {"circle": (1.0, 1.0, 1.0, 1.0), "square": (0.9, 0.9, 0.9, 0.9), "triangle": (1.0, 1.1, 0.8, 1.1)}
# Shape centres (x, y) as shares of the image side, before the renderer's jitter.
POSITIONS = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75)}
ATTRIBUTES = ("color", "shape", "position")

# --- reading ------------------------------------------------------------------------------

# A pixel belongs to the shape when it is this far (summed over R, G, B) from the
# background: the palette colours are >= 150 away from any background the renderer
# draws (grey levels 205..245 per channel), antialiased edge pixels halfway.
SHAPE_DISTANCE = 90
# Each shape's (share of its bounding box filled, share of its mass in the box's lower
# half): a disc pi/4 and 1/2; a square 1 and 1/2; a triangle pointing up 1/2 and 3/4.
SHAPE_SIGNATURES = {"circle": (math.pi / 4, 0.5), "square": (1.0, 0.5), "triangle": (0.5, 0.75)}
MIN_SHAPE_PIXELS = 4  # fewer are noise, not a shape


@dataclasses.dataclass(frozen=True)
class Scene:
    """A scene's attributes (None: not readable, e.g. no shape in the image)."""

    color: str | None = None
    shape: str | None = None
    position: str | None = None


def read_scene(pixels) -> Scene:
    """The scene in a uint8 RGB image [H, W, 3]: its shape's colour, shape and position."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise UsageError(f"read_scene needs an RGB image [H, W, 3], got shape {pixels.shape}.")
    pixels = pixels.astype(np.int32)
    mask = _shape_mask(pixels)
    if mask.sum() < MIN_SHAPE_PIXELS:
        return Scene()
    return Scene(_color(pixels[mask]), _shape(mask), _position(mask))


def _shape_mask(pixels: np.ndarray) -> np.ndarray:
    """The largest connected group of pixels far from the background colour."""
    from scipy import ndimage

    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    distance = np.abs(pixels - np.median(border, axis=0)).sum(-1)
    # Half way to the shape's own colour: where a blurred edge (a decoded image's) was.
    far = distance > max(SHAPE_DISTANCE, 0.5 * np.percentile(distance, 99))
    # Opening drops one-pixel spurs (resampling ringing) that would stretch the box.
    far = ndimage.binary_opening(far, structure=np.ones((3, 3), bool))
    groups, count = ndimage.label(far)
    if count == 0:
        return far
    sizes = np.bincount(groups.ravel())[1:]
    return groups == 1 + int(np.argmax(sizes))


def _nearest(value, table: dict) -> str:
    return min(table, key=lambda name: float(np.sum((np.asarray(value, float) - np.asarray(table[name])) ** 2)))


def _color(shape_pixels: np.ndarray) -> str:
    return _nearest(np.median(shape_pixels, axis=0), COLORS)


def _position(mask: np.ndarray) -> str:
    rows, cols = np.nonzero(mask)
    height, width = mask.shape
    return _nearest(((cols.mean() + 0.5) / width, (rows.mean() + 0.5) / height), POSITIONS)


def _shape(mask: np.ndarray) -> str:
    rows, cols = np.nonzero(mask)
    top, bottom = rows.min(), rows.max() + 1
    fill = len(rows) / ((bottom - top) * (cols.max() + 1 - cols.min()))
    lower = float(np.mean(rows + 0.5 >= (top + bottom) / 2))
    return _nearest((fill, lower), SHAPE_SIGNATURES)


# --- scoring ------------------------------------------------------------------------------


def faithfulness(wanted: Sequence[Scene], images) -> dict[str, float]:
    """{"faithfulness", "faithfulness_<attribute>"}: x 100, the share of the wanted scenes'
    attributes that `images` (uint8 [N, H, W, 3]) show; an unreadable attribute is a miss."""
    if len(wanted) != len(images):
        raise UsageError(f"faithfulness: {len(wanted)} scenes but {len(images)} images.")
    if not len(wanted):
        raise UsageError("faithfulness: no images to score.")
    read = [read_scene(image) for image in images]
    matched = {a: np.mean([getattr(w, a) is not None and getattr(w, a) == getattr(r, a) for w, r in zip(wanted, read)])
               for a in ATTRIBUTES}
    values = {f"faithfulness_{a}": 100.0 * float(v) for a, v in matched.items()}
    values["faithfulness"] = float(np.mean(list(values.values())))
    return values


def faithfulness_metric(decode_texts: Callable, scene_of_target: Callable[[str], Scene],
                        name: str = "scene_faithfulness") -> Callable:
    """A seqio metric function `(targets, predictions) -> faithfulness(...)` over code
    texts: each prediction drawn by `decode_texts` (palimix.image_tokenizer.ImageTokenizer's:
    uint8 pixels and whether the text held a whole grid), each target's scene from
    `scene_of_target(target text)`. Adds `images_complete`: the share (x 100) of
    predictions that held a whole grid (the others are drawn with code 0 filled in)."""

    def metric(targets, predictions):
        decoded = decode_texts(list(predictions))
        values = faithfulness([scene_of_target(t) for t in targets], decoded.pixels)
        return {**values, "images_complete": 100.0 * float(np.mean(decoded.complete))}

    metric.__name__ = metric.__qualname__ = name
    return metric
