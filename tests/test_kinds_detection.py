"""The detection and referring kinds: <loc> box text (palimix.boxes), their tasks built from a
JSON Lines file with real PNG images, their metrics on hand-computed cases, and the
vocabulary check."""

import json

import numpy as np
import pytest
import seqio
import tensorflow as tf
from PIL import Image

from palimix import boxes, kinds, vocab
from palimix.errors import UsageError
from tests.vocab_cache import vocab_cache_dir  # noqa: F401 (a fixture)
from palimix.metrics.detection import detection_f1, referring_accuracy
from palimix.tasks import add_task, remove

LENGTHS = {"inputs": 32, "targets": 32, "image": 16}
SHIPPED_PIECES = 8092  # <loc0000> is the first id after the shipped model's pieces.


# --- box text -------------------------------------------------------------------------


def test_to_loc_text_writes_paligemma_layout():
    text = boxes.to_loc_text([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]], ["cat", "red car"])
    # round(0.1 * 1023) = 102, round(0.2 * 1023) = 205, round(0.5 * 1023) = 512 (511.5 to even), 614.
    assert text == "<loc0102><loc0205><loc0512><loc0614> cat ; <loc0000><loc0000><loc1023><loc1023> red car"
    assert boxes.to_loc_text([[0.25, 0.25, 0.75, 0.75]]) == "<loc0256><loc0256><loc0767><loc0767>"


def test_round_trip_keeps_labels_and_boxes_to_a_bin():
    rng = np.random.default_rng(0)
    corners = np.sort(rng.uniform(size=(5, 2, 2)), axis=1)  # (y, x) minimum then maximum
    wanted = [[c[0, 0], c[0, 1], c[1, 0], c[1, 1]] for c in corners]
    labels = ["cat", "dog", "traffic light", "猫", "cat"]
    parsed = boxes.parse_loc_text(boxes.to_loc_text(wanted, labels))
    assert [d.label for d in parsed] == labels
    np.testing.assert_allclose([d.box for d in parsed], wanted, atol=0.5 / 1023 + 1e-9)


def test_bad_boxes_are_clear_errors():
    with pytest.raises(boxes.BoxError, match="outside 0..1"):
        boxes.to_loc_text([[0.1, 0.2, 1.5, 0.6]], ["cat"])
    with pytest.raises(boxes.BoxError, match="minimum above its maximum"):
        boxes.to_loc_text([[0.5, 0.2, 0.1, 0.6]], ["cat"])
    with pytest.raises(boxes.BoxError, match="2 boxes but 1 labels"):
        boxes.to_loc_text([[0, 0, 1, 1], [0, 0, 1, 1]], ["cat"])
    with pytest.raises(boxes.BoxError, match="4 numbers|got 3"):
        boxes.to_loc_text([[0, 0, 1]], ["cat"])
    # Float noise just outside the image is clipped, not refused.
    assert boxes.to_loc_text([[-1e-9, 0, 1 + 1e-9, 1]]) == "<loc0000><loc0000><loc1023><loc1023>"


def test_parse_ignores_what_is_not_an_object():
    assert boxes.parse_loc_text("a cat on the left") == []
    assert boxes.parse_loc_text("<loc0100><loc0200> cat") == []  # two tokens are no box
    assert boxes.parse_loc_text("<loc2000><loc0000><loc2001><loc0001> cat") == []  # beyond <loc1023>
    assert boxes.parse_loc_text("<loc0500><loc0000><loc0100><loc0001> cat") == []  # turned inside out
    mixed = boxes.parse_loc_text("noise <loc0000><loc0000><loc0511><loc0511> cat ; junk ; <loc0512><loc0512>"
                                 "<loc1023><loc1023>")
    assert [(round(d.box[2], 3), d.label) for d in mixed] == [(0.5, "cat ; junk"), (1.0, "")]


def test_tensorflow_text_equals_python_text():
    found = [[0.1, 0.2, 0.5, 0.6], [0.5 / 1023, 1.5 / 1023, 2.5 / 1023, 1.0]]  # halves round to even
    labels = ["cat", "dog"]
    checked = boxes.checked_boxes_tf(tf.constant(found, tf.float32), tf.constant("x"), "boxes")
    text = boxes.loc_text_tf(checked, tf.constant(labels)).numpy().decode()
    assert text == boxes.to_loc_text(found, labels)


def test_iou_of_a_hand_computed_case():
    # Overlap 0.25 x 0.25 = 0.0625; union 0.25 + 0.25 - 0.0625 = 0.4375: IoU 1/7.
    assert boxes.iou([0, 0, 0.5, 0.5], [0.25, 0.25, 0.75, 0.75]) == pytest.approx(1 / 7)
    assert boxes.iou([0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5]) == pytest.approx(1.0)
    assert boxes.iou([0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]) == 0.0  # touching corners
    assert boxes.iou([0.2, 0.2, 0.2, 0.2], [0.2, 0.2, 0.2, 0.2]) == 0.0  # empty boxes


# --- metrics ---------------------------------------------------------------------------


def _loc(*objects):
    return boxes.to_loc_text([box for box, _ in objects], [label for _, label in objects])


def test_detection_f1_on_a_hand_made_case():
    target = _loc(([0, 0, 0.5, 0.5], "cat"), ([0.5, 0.5, 1, 1], "dog"))
    prediction = _loc(([0, 0, 0.5, 0.5], "cat"),  # a hit
                      ([0.25, 0.25, 0.75, 0.75], "dog"),  # IoU with the dog 1/7: a miss
                      ([0.5, 0.5, 1, 1], "bird"))  # the dog's box with the wrong label: a miss
    result = detection_f1([target], [prediction])
    # 1 hit of 3 predicted boxes and 2 reference boxes.
    assert result["detection_precision"] == pytest.approx(100 / 3)
    assert result["detection_recall"] == pytest.approx(50.0)
    assert result["detection_f1"] == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5) * 100)


def test_detection_matches_one_to_one_and_counts_unparsable_as_no_boxes():
    target = _loc(([0, 0, 0.5, 0.5], "cat"))
    twice = _loc(([0, 0, 0.5, 0.5], "cat"), ([0, 0, 0.5, 0.5], "cat"))
    assert detection_f1([target], [twice])["detection_precision"] == pytest.approx(50.0)
    result = detection_f1([target, target], ["a cat, top left", target])
    assert result == pytest.approx({"detection_precision": 100.0, "detection_recall": 50.0,
                                    "detection_f1": 2 * 0.5 / 1.5 * 100})
    assert detection_f1([target], ["nothing"])["detection_f1"] == 0.0


def test_referring_accuracy_at_iou_one_half_and_mean_iou():
    target = _loc(([0, 0, 0.5, 0.5], "the cat on the left"))
    predictions = [_loc(([0.25, 0.25, 0.75, 0.75], "the cat on the left")),  # IoU 1/7
                   _loc(([0, 0, 0.5, 0.5], "the cat on the left")),  # IoU 1
                   "<loc0000> the cat"]  # does not parse: IoU 0
    result = referring_accuracy([target] * 3, predictions)
    assert result["referring_accuracy"] == pytest.approx(100 / 3)
    assert result["mean_iou"] == pytest.approx((1 / 7 + 1 + 0) / 3 * 100, abs=0.2)  # bins of 1/1023


def test_kind_entries_name_their_metrics():
    for name, primary in (("detection", "detection_f1"), ("referring", "referring_accuracy")):
        kind = kinds.get(name)
        assert kind.primary_metric == primary
        target = _loc(([0, 0, 1, 1], "cat"))
        scores = {k: v for fn in kind.metric_fns("de") for k, v in fn([target], [target]).items()}
        assert scores[primary] == 100.0


# --- tasks from a JSON Lines file with real images ------------------------------------


pytestmark = pytest.mark.usefixtures("vocab_cache_dir")  # derived models in a temporary cache


@pytest.fixture(scope="module")
def with_loc():
    return vocab.default_vocabulary(tokensets=("loc",))


@pytest.fixture(autouse=True)
def cleanup():
    yield
    for name in ("tk_detect", "tk_refer", "tk_bad_box", "tk_no_loc"):
        remove(name)


def _write_jsonl(root, lines):
    """A JSON Lines file whose records name PNG files written next to it."""
    (root / "img").mkdir(exist_ok=True)
    for i, line in enumerate(lines):
        Image.fromarray(np.full((20, 24, 3), 40 * i, np.uint8)).save(root / "img" / f"{i}.png")
        line.setdefault("image", f"{i}.png")
    path = root / "boxes.jsonl"
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    return path


def _jsonl_source(path, list_fields=(), box_fields=(), string_fields=()):
    """A seqio source over the file: the records' box fields as float [n, 4] and their
    images' bytes, unchecked: palimix's JsonLines refuses bad boxes when it reads the file, and
    these tests reach the checks of the text stage (palimix.boxes)."""
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]

    def dataset(split, shuffle_files, seed=None):
        columns = {
            "id": [line["id"] for line in lines],
            "language": [line["language"] for line in lines],
            "image/path": [str(path.parent / "img" / line["image"]) for line in lines],
            "image/encoded": np.array([(path.parent / "img" / line["image"]).read_bytes() for line in lines], object),
        }
        for key in list_fields:
            columns[key] = tf.ragged.constant([line[key] for line in lines], dtype=tf.string)
        for key in box_fields:
            columns[key] = tf.ragged.constant([np.reshape(line[key], [-1, 4]).tolist() for line in lines],
                                              dtype=tf.float32, ragged_rank=1)
        for key in string_fields:
            columns[key] = [line[key] for line in lines]
        return tf.data.Dataset.from_tensor_slices(columns)

    return seqio.FunctionDataSource(dataset, splits=["train"])


def _examples(task_name):
    task = seqio.get_mixture_or_task(task_name)
    return list(task.get_dataset(LENGTHS, split="train", shuffle=False).as_numpy_iterator())


@pytest.fixture(scope="module")
def detection_file(tmp_path_factory):
    return _write_jsonl(tmp_path_factory.mktemp("detection"), [
        {"id": "d0", "language": "en", "boxes": [[0.1, 0.2, 0.5, 0.6], [0.5, 0.5, 1.0, 1.0]],
         "labels": ["cat", "dog"]},
        {"id": "d1", "language": "de", "boxes": [[0.0, 0.0, 0.25, 0.25]], "labels": ["Katze"]},
        {"id": "d2", "language": "en", "boxes": [], "labels": []},  # no object: no example
    ])


def test_detection_tasks_from_jsonl_with_images(detection_file, with_loc):
    source = _jsonl_source(detection_file, list_fields=("labels",), box_fields=("boxes",))
    add_task("tk_detect", kind="detection", source=source, languages=["en", "de"], per_language=False,
             image_size=16, vocabulary=with_loc)
    examples = _examples("tk_detect_mul")
    assert [ex["id"] for ex in examples] == [b"d0", b"d1"]
    first, second = examples
    assert first["inputs_pretokenized"] == b"detect cat ; dog"
    assert first["targets_pretokenized"].decode() == boxes.to_loc_text(
        [[0.1, 0.2, 0.5, 0.6], [0.5, 0.5, 1.0, 1.0]], ["cat", "dog"])
    assert second["inputs_pretokenized"] == b"detect Katze"
    assert first["image"].shape == (16, 16, 3) and first["has_image"] == 1
    # Each <loc> token is one id: the first four target ids are the first box's bins.
    assert list(first["targets"][:4]) == [SHIPPED_PIECES + b for b in (102, 205, 512, 614)]
    task = seqio.get_mixture_or_task("tk_detect_mul")
    assert task.output_features["targets"].vocabulary.vocab_size == 9216


def test_referring_tasks_from_jsonl_in_both_styles(tmp_path, with_loc):
    path = _write_jsonl(tmp_path, [
        {"id": "r0", "language": "en", "box": [0.25, 0.25, 0.75, 0.75], "expression": "the cat on the left"},
        {"id": "r1", "language": "en", "box": [0.0, 0.5, 0.5, 1.0], "expression": "  "},  # blank: left out
    ])
    source = _jsonl_source(path, box_fields=("box",), string_fields=("expression",))
    add_task("tk_refer", kind="referring", source=source, languages=["en"], image_size=16, vocabulary=with_loc)
    (example,) = _examples("tk_refer_en")
    assert example["inputs_pretokenized"] == b"detect the cat on the left"
    assert example["targets_pretokenized"] == b"<loc0256><loc0256><loc0767><loc0767> the cat on the left"
    add_task("tk_refer", kind="referring", source=source, languages=["en"], image_size=16, vocabulary=with_loc,
             prompt_style="natural", overwrite=True)
    (example,) = _examples("tk_refer_en")
    assert example["inputs_pretokenized"] == b"Find this in the image: the cat on the left"


def test_a_box_outside_the_image_stops_the_pipeline_naming_the_example(tmp_path, with_loc):
    path = _write_jsonl(tmp_path, [
        {"id": "ok", "language": "en", "boxes": [[0.1, 0.1, 0.2, 0.2]], "labels": ["cat"]},
        {"id": "pixels", "language": "en", "boxes": [[10, 20, 40, 60]], "labels": ["cat"]},
    ])
    source = _jsonl_source(path, list_fields=("labels",), box_fields=("boxes",))
    add_task("tk_bad_box", kind="detection", source=source, languages=["en"], image_size=16, vocabulary=with_loc)
    with pytest.raises(tf.errors.InvalidArgumentError, match="id pixels has a box in its field boxes"):
        _examples("tk_bad_box_en")


def test_a_vocabulary_without_loc_tokens_is_refused_when_the_task_is_built(detection_file):
    source = _jsonl_source(detection_file, list_fields=("labels",), box_fields=("boxes",))
    with pytest.raises(UsageError, match=r"tk_no_loc: detection tasks need a vocabulary with the 'loc' tokens"
                                         r".*tokensets=\('loc',\)"):
        add_task("tk_no_loc", kind="detection", source=source, languages=["en"], image_size=16)
    assert "tk_no_loc_en" not in seqio.TaskRegistry.names()
