"""The scene-faithfulness checker (palimix.metrics.scene) on the demo's own images: the
rendered scenes, the demo tokenizer's reconstructions of them, and code texts as the demo
evaluation scores them."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from palimix import image_codes
from palimix.errors import UsageError
from palimix.metrics import scene
from palimix.tasks import demo


def _records(split):
    return list(demo.text_to_image_records(split).values())


def _pixels(path):
    with Image.open(os.path.join(demo.data_dir(), path)) as picture:
        return np.asarray(picture.convert("RGB"))


@pytest.mark.parametrize("split", demo.SPLITS)
def test_the_checker_reads_nearly_every_rendered_scene(split):
    """On every scene the build script rendered (432 training, 96 validation; scene i
    shows combination i // per_combo of colour, shape and position, in the table's
    order): colour and position always, the shape of all but a few (when built: 4 small
    training triangles whose tip is thinner than the checker's opening, read as circles)."""
    from tests.test_demo import _build_script

    script = _build_script()
    combos = [scene.Scene(c, s, p) for c in scene.COLORS for s in scene.SHAPES for p in scene.POSITIONS]
    per_combo = script.SCENES_PER_COMBO[split]
    wanted = [combos[i // per_combo] for i in range(per_combo * len(combos))]
    images = np.stack([_pixels(f"images/scenes/{split}/{i:04d}.png") for i in range(len(wanted))])
    values = scene.faithfulness(wanted, images)
    assert values["faithfulness_color"] == values["faithfulness_position"] == 100.0
    assert values["faithfulness_shape"] >= 98.5, values
    assert values["faithfulness"] == pytest.approx(np.mean([values[f"faithfulness_{a}"] for a in scene.ATTRIBUTES]))


def test_the_checker_reads_the_demo_tokenizers_reconstructions():
    """The shipped tokenizer's held-out reconstructions (codes -> pixels), the ceiling of
    the demo's text_to_image faithfulness: position and colour survive its 4 x 4 codes,
    the shape mostly does not (drawn as a rounded blob; 38% read right when built)."""
    records = {r["image"]: r for r in _records("validation")}
    wanted = [scene.Scene(**r["scene"]) for r in records.values()]
    decoded = demo.image_tokenizer().decode_texts([image_codes.to_code_text(r["codes"]) for r in records.values()])
    assert decoded.complete.all() and decoded.pixels.shape[1:] == (demo.IMAGE_SIZE, demo.IMAGE_SIZE, 3)
    values = scene.faithfulness(wanted, decoded.pixels)
    assert values["faithfulness_position"] == 100.0 and values["faithfulness_color"] >= 90.0, values
    assert values["faithfulness"] >= 70.0, values


def test_an_image_without_a_shape_matches_nothing():
    blank = np.full((2, 64, 64, 3), 225, np.uint8)
    assert scene.read_scene(blank[0]) == scene.Scene()
    values = scene.faithfulness([scene.Scene("red", "circle", "left")] * 2, blank)
    assert values == {"faithfulness_color": 0.0, "faithfulness_shape": 0.0, "faithfulness_position": 0.0,
                      "faithfulness": 0.0}


def test_a_drawn_square_is_read_by_its_geometry():
    """A plain square (no renderer): its colour is the nearest palette colour, its place
    the nearest named position, and it fills its box."""
    image = np.full((64, 64, 3), 230, np.uint8)
    image[36:56, 22:42] = (200, 60, 50)  # reddish, centred at (0.5, 0.72): bottom
    assert scene.read_scene(image) == scene.Scene("red", "square", "bottom")
    image[:] = 230
    rows = np.arange(64)[:, None]
    cols = np.arange(64)[None, :]
    image[(rows - 32) ** 2 + (cols - 16) ** 2 <= 81] = scene.COLORS["blue"]
    assert scene.read_scene(image) == scene.Scene("blue", "circle", "left")


def test_faithfulness_refuses_mismatched_or_bad_input():
    with pytest.raises(UsageError, match="2 scenes but 1 images"):
        scene.faithfulness([scene.Scene()] * 2, np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(UsageError, match="no images"):
        scene.faithfulness([], np.zeros((0, 64, 64, 3), np.uint8))
    with pytest.raises(UsageError, match=r"RGB image \[H, W, 3\]"):
        scene.read_scene(np.zeros((64, 64), np.uint8))


def test_the_demo_metric_scores_code_texts_against_their_records_scenes():
    """The demo text_to_image task's metric functions: the targets' own codes are drawn as
    the reconstructions are, an empty prediction is drawn incomplete and matches less; a
    target that is no demo record's codes is an error, not a silent miss."""
    faithfulness_fn, code_accuracy_fn = demo.text_to_image_metrics()
    targets = [image_codes.to_code_text(r["codes"]) for r in _records("validation")[:24]]
    perfect = faithfulness_fn(targets, targets)
    assert perfect["images_complete"] == 100.0 and perfect["faithfulness"] >= 70.0
    assert code_accuracy_fn(targets, targets) == {"code_accuracy": 100.0}
    empty = faithfulness_fn(targets, [""] * len(targets))
    assert empty["images_complete"] == 0.0 and empty["faithfulness"] < perfect["faithfulness"]
    with pytest.raises(UsageError, match="not the codes of a demo text_to_image record"):
        faithfulness_fn([image_codes.to_code_text([1023] * 16)], targets[:1])


def test_text_to_image_records_name_their_scene_in_the_prompt():
    """Each record's caption names its scene's colour, shape and position in its language
    (the words of words.tsv), and its codes are the tokenizer's grid."""
    table = demo.words()
    grid = demo.image_tokenizer().grid_size
    for r in _records("validation"):
        words = table[r["language"]]
        (caption,) = r["captions"]
        assert words[r["scene"]["position"]] in caption and words["q_position"] in caption, r
        assert len(r["codes"]) == grid * grid
    with open(os.path.join(demo.data_dir(), "tokenizer", "tokenizer.json"), encoding="utf-8") as f:
        info = json.load(f)
    assert info["config"]["image_size"] // grid == 16
