"""detection_map (COCO AP at IoU 0.5 over <loc> text) against pycocotools' COCOeval on the
same boxes written as COCO ground truth and results in pixels."""

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from palimix import boxes, kinds
from palimix.metrics.detection import average_precision, detection_map


def _loc(*objects):
    return boxes.to_loc_text([box for box, _ in objects], [label for _, label in objects])


def _pixels(box, size):
    """A 0..1 [y_min, x_min, y_max, x_max] box -> COCO [x, y, w, h] in an image of `size` (w, h)."""
    width, height = size
    return [box[1] * width, box[0] * height, (box[3] - box[1]) * width, (box[2] - box[0]) * height]


def _coco_eval_ap50(targets, predictions, sizes):
    """pycocotools' AP at IoU 0.5: example i is image i + 1; the k-th box of an output scores 1000 - k."""
    labels = sorted({d.label for t in targets for d in boxes.parse_loc_text(t)})
    category = {label: i + 1 for i, label in enumerate(labels)}
    gt = {"images": [{"id": i + 1, "width": w, "height": h} for i, (w, h) in enumerate(sizes)],
          "categories": [{"id": i, "name": label} for label, i in category.items()], "annotations": []}
    results = []
    for i, (target, prediction) in enumerate(zip(targets, predictions)):
        for d in boxes.parse_loc_text(target):
            bbox = _pixels(d.box, sizes[i])
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i + 1, "bbox": bbox,
                                      "area": bbox[2] * bbox[3], "iscrowd": 0, "category_id": category[d.label]})
        for rank, d in enumerate(boxes.parse_loc_text(prediction)):
            # A label the ground truth lacks gets an id COCOeval does not evaluate.
            results.append({"image_id": i + 1, "category_id": category.get(d.label, 999),
                            "bbox": _pixels(d.box, sizes[i]), "score": 1000.0 - rank})
    with contextlib.redirect_stdout(io.StringIO()):  # COCO and COCOeval print progress.
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        evaluation = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        evaluation.params.iouThrs = np.array([0.5])
        evaluation.evaluate()
        evaluation.accumulate()
    precision = evaluation.eval["precision"][0, :, :, 0, -1]  # IoU 0.5, every recall point and category, area all, 100 boxes.
    return float(np.mean(precision[precision > -1])) * 100.0


CAT, DOG, BIRD, PERSON = "cat", "dog", "bird", "person"
# Several images and categories: hits, a miss, a duplicate, boxes off target, a wrong
# label, a label no target has, an image without objects, an unparsable answer, and a
# category (person) that no prediction finds.
FIXTURE = [
    (_loc(([0.1, 0.1, 0.5, 0.4], CAT), ([0.5, 0.5, 0.9, 0.9], DOG)),
     _loc(([0.1, 0.1, 0.5, 0.4], CAT), ([0.11, 0.1, 0.52, 0.41], CAT),  # a hit, then its duplicate
          ([0.5, 0.5, 0.9, 0.9], BIRD))),  # the dog's box, labelled bird
    (_loc(([0.0, 0.0, 0.3, 0.3], CAT), ([0.6, 0.6, 1.0, 1.0], CAT), ([0.2, 0.5, 0.6, 0.9], PERSON)),
     _loc(([0.62, 0.6, 1.0, 0.98], CAT), ([0.3, 0.3, 0.5, 0.5], CAT))),  # a hit, a false positive; one cat missed
    (_loc(([0.2, 0.2, 0.8, 0.8], DOG)),
     _loc(([0.4, 0.4, 1.0, 1.0], DOG), ([0.21, 0.2, 0.8, 0.79], DOG), ([0.1, 0.1, 0.2, 0.2], "zebra"))),
    (_loc(([0.3, 0.1, 0.7, 0.5], BIRD), ([0.0, 0.6, 0.2, 0.9], BIRD)),
     "a bird, top left"),
    ("", _loc(([0.1, 0.1, 0.4, 0.4], CAT), ([0.5, 0.5, 0.7, 0.7], DOG))),  # nothing to find
    (_loc(([0.05, 0.05, 0.95, 0.5], PERSON), ([0.3, 0.5, 0.6, 0.8], DOG)),
     _loc(([0.3, 0.52, 0.6, 0.8], DOG), ([0.3, 0.5, 0.6, 0.8], DOG), ([0.05, 0.05, 0.95, 0.5], CAT))),
]
SIZES = [(640, 480), (500, 375), (427, 640), (300, 300), (640, 427), (333, 500)]


def test_detection_map_agrees_with_pycocotools_on_a_hand_made_fixture():
    targets, predictions = zip(*FIXTURE)
    ours = detection_map(list(targets), list(predictions))["detection_map50"]
    assert ours == pytest.approx(_coco_eval_ap50(targets, predictions, SIZES), abs=1e-6)
    assert 0 < ours < 100


def _random_objects(rng, labels, count):
    corners = np.sort(rng.uniform(size=(count, 2, 2)), axis=1)
    return [([c[0, 0], c[0, 1], c[1, 0], c[1, 1]], labels[rng.integers(len(labels))]) for c in corners]


def _jittered(rng, objects):
    """Predictions near the targets (some hits, some misses) plus a few random boxes, shuffled."""
    found = []
    for box, label in objects:
        y0, x0, y1, x1 = np.clip(np.add(box, rng.normal(0, 0.05, 4)), 0, 1)
        found.append(([min(y0, y1), min(x0, x1), max(y0, y1), max(x0, x1)], label))
    found += _random_objects(rng, ["cat", "dog", "bird", "car"], rng.integers(0, 3))
    return [found[i] for i in rng.permutation(len(found))]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_detection_map_agrees_with_pycocotools_on_random_examples(seed):
    rng = np.random.default_rng(seed)
    targets, predictions, sizes = [], [], []
    for _ in range(40):
        objects = _random_objects(rng, ["cat", "dog", "bird"], rng.integers(0, 5))
        targets.append(_loc(*objects) if objects else "")
        found = _jittered(rng, objects)
        predictions.append(_loc(*found) if found else "")
        sizes.append((int(rng.integers(100, 800)), int(rng.integers(100, 800))))
    ours = detection_map(targets, predictions)["detection_map50"]
    assert ours == pytest.approx(_coco_eval_ap50(targets, predictions, sizes), abs=1e-6)


def test_average_precision_by_hand():
    # Hit, miss, hit over 2 references: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1; the
    # envelope is 1 up to recall 0.5 (51 of the 101 points) and 2/3 after (50 points).
    assert average_precision([True, False, True], 2) == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert average_precision([], 3) == 0.0
    assert average_precision([True], 2) == pytest.approx(51 / 101)  # recall never passes 0.5


def test_detection_map_counts_rank_not_just_hits():
    target = _loc(([0, 0, 0.5, 0.5], CAT))
    hit, miss = ([0, 0, 0.5, 0.5], CAT), ([0.6, 0.6, 1, 1], CAT)
    assert detection_map([target], [_loc(hit, miss)])["detection_map50"] == pytest.approx(100.0)
    # The same boxes, the miss first: precision 1/2 at full recall.
    assert detection_map([target], [_loc(miss, hit)])["detection_map50"] == pytest.approx(50.0, abs=1e-6)
    assert detection_map([""], [_loc(hit)]) == {"detection_map50": 0.0}  # nothing to find


def test_detection_kind_reports_map_next_to_f1():
    kind = kinds.get("detection")
    target = _loc(([0, 0, 1, 1], CAT), ([0.2, 0.2, 0.4, 0.4], DOG))
    scores = {k: v for fn in kind.metric_fns("en") for k, v in fn([target], [target]).items()}
    assert scores["detection_map50"] == pytest.approx(100.0)
    assert scores["detection_f1"] == 100.0 and kind.primary_metric == "detection_f1"
