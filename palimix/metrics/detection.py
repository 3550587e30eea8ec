"""Box metrics over PaliGemma's `<loc>` text (palimix.boxes): detection and referring expressions.

Targets and predictions are texts such as `<loc0102><loc0205><loc0512><loc0614> cat ;
...`; both are parsed with `palimix.boxes.parse_loc_text`, and a prediction that does
not parse is an answer with no boxes (it scores 0, it is not an error).

- `detection_f1`: a predicted box is a true positive when it has the label of a
  reference box that no other prediction took and their IoU is >= 0.5 (pairs matched
  greedily, highest IoU first, one to one); precision, recall and F1 x 100 over all
  boxes of all examples: the single operating point of the generated boxes.
- `detection_map`: COCO's AP at IoU 0.5 (101-point interpolated precision, averaged
  over the labels that have reference boxes), as pycocotools' `COCOeval` computes it
  (`iouThrs=[0.5]`, area "all", at most 100 boxes per image and label; checked
  against it in tests/test_metrics_detection.py). AP ranks boxes by confidence, and
  generated text has none: a box's score is its rank in the output (the model's
  first object ranks above its second), boxes of equal rank in different examples
  in example order (what pycocotools does with tied scores when the examples are
  its images in order). big_vision's open-source PaliGemma evaluators (commit
  0127fb6, `evaluators/proj/paligemma/`) have no COCO detection evaluator to follow;
  their RefCOCO evaluator (`transfers/segmentation.py`) scores the first decoded box,
  as `referring_accuracy` does. Predicted labels that no reference has are ignored
  here (COCOeval evaluates the ground truth's categories only); they lower
  `detection_precision`.
- `referring_accuracy`: RefCOCO's accuracy, the share (x 100) of examples whose first
  predicted box has IoU >= 0.5 with the reference box, and their mean IoU (x 100).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, NamedTuple, Sequence

import numpy as np

from palimix import boxes
from palimix.metrics import _inputs

# A predicted box counts when it overlaps its reference this much (PASCAL VOC, RefCOCO).
IOU_THRESHOLD = 0.5


def _target_text(target: Any) -> str:
    """The target text; a list of references (as seqio may pass them) is scored by its first."""
    references = _inputs.as_references(target)
    return references[0] if references else ""


def matched_boxes(references: Sequence[boxes.Detection], predictions: Sequence[boxes.Detection]) -> int:
    """How many predictions match a reference of the same label at IoU >= 0.5, one to one."""
    pairs = sorted(((boxes.iou(r.box, p.box), i, j) for i, r in enumerate(references)
                    for j, p in enumerate(predictions) if r.label == p.label), reverse=True)
    used_references, used_predictions = set(), set()
    for overlap, i, j in pairs:
        if overlap < IOU_THRESHOLD:
            break
        if i not in used_references and j not in used_predictions:
            used_references.add(i)
            used_predictions.add(j)
    return len(used_references)


def detection_f1(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    """Precision, recall and F1 (x 100) at IoU >= 0.5 per label:
    {"detection_f1", "detection_precision", "detection_recall"}."""
    targets, predictions = _inputs.check_pairs("detection_f1", targets, predictions)
    true_positives = predicted = expected = 0
    for target, prediction in zip(targets, predictions):
        wanted, found = boxes.parse_loc_text(_target_text(target)), boxes.parse_loc_text(prediction)
        true_positives += matched_boxes(wanted, found)
        predicted += len(found)
        expected += len(wanted)
    precision = true_positives / predicted if predicted else 0.0
    recall = true_positives / expected if expected else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"detection_f1": f1 * 100.0, "detection_precision": precision * 100.0, "detection_recall": recall * 100.0}


# COCOeval's settings for AP: recall points 0, 0.01, ..., 1 and at most this many
# boxes per image and category (maxDets[-1]).
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
MAX_BOXES_PER_LABEL = 100


class _Ranked(NamedTuple):
    """One predicted box for the precision-recall curve of its label."""

    rank: int  # Its position among the objects of its output (the score, lower first).
    example: int  # Its example (ties of rank across examples go in example order).
    hit: bool  # Matched a reference box of its label at IoU >= 0.5.


def _hits(wanted: Sequence[tuple], found: Sequence[tuple]) -> list[bool]:
    """COCOeval's matching in one image for one label: each predicted box in turn (best
    rank first) takes the free reference box of highest IoU >= 0.5 (on a tie, the later one)."""
    taken = [False] * len(wanted)
    hits = []
    for box in found:
        best, best_iou = -1, IOU_THRESHOLD
        for i, reference in enumerate(wanted):
            overlap = boxes.iou(box, reference)
            if not taken[i] and overlap >= best_iou:
                best, best_iou = i, overlap
        if best >= 0:
            taken[best] = True
        hits.append(best >= 0)
    return hits


def _rank_example(index: int, wanted: Sequence[boxes.Detection], found: Sequence[boxes.Detection],
                  ranked: dict[str, list[_Ranked]], references: dict[str, int]) -> None:
    """Adds one example's predicted boxes (per label, with their hits) to `ranked` and
    its reference boxes to `references` (counts per label)."""
    by_label: dict[str, list[tuple[int, tuple]]] = defaultdict(list)
    for rank, detection in enumerate(found):
        by_label[detection.label].append((rank, detection.box))
    wanted_by_label: dict[str, list[tuple]] = defaultdict(list)
    for detection in wanted:
        wanted_by_label[detection.label].append(detection.box)
        references[detection.label] += 1
    for label, predicted in by_label.items():
        predicted = predicted[:MAX_BOXES_PER_LABEL]
        hits = _hits(wanted_by_label.get(label, []), [box for _, box in predicted])
        ranked[label].extend(_Ranked(rank, index, hit) for (rank, _), hit in zip(predicted, hits))


def average_precision(hits: Sequence[bool], num_references: int) -> float:
    """COCOeval's AP of boxes in score order (`hits`: each matched a reference or not):
    the precision envelope read at 101 recall points, 0 past the highest recall."""
    if not hits:
        return 0.0
    true_positives = np.cumsum(hits, dtype=np.float64)
    false_positives = np.cumsum(np.logical_not(hits), dtype=np.float64)
    recall = true_positives / num_references
    precision = true_positives / (true_positives + false_positives + np.spacing(1))
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # Best precision at this recall or beyond.
    at = np.searchsorted(recall, RECALL_POINTS, side="left")
    return float(np.mean(np.where(at < len(hits), envelope[np.minimum(at, len(hits) - 1)], 0.0)))


def detection_map(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    """mAP at IoU 0.5 (x 100), COCO's way, boxes ranked by their position in the output:
    {"detection_map50"}. 0 when no target has a box."""
    targets, predictions = _inputs.check_pairs("detection_map", targets, predictions)
    ranked: dict[str, list[_Ranked]] = defaultdict(list)
    references: dict[str, int] = defaultdict(int)
    for index, (target, prediction) in enumerate(zip(targets, predictions)):
        _rank_example(index, boxes.parse_loc_text(_target_text(target)), boxes.parse_loc_text(prediction),
                      ranked, references)
    per_label = [average_precision([r.hit for r in sorted(ranked.get(label, []))], count)
                 for label, count in references.items()]
    return {"detection_map50": float(np.mean(per_label)) * 100.0 if per_label else 0.0}


def _first_box_iou(target: str, prediction: str) -> float:
    """IoU of the first predicted box with the first reference box (0 when either has none)."""
    wanted, found = boxes.parse_loc_text(target), boxes.parse_loc_text(prediction)
    return boxes.iou(wanted[0].box, found[0].box) if wanted and found else 0.0


def referring_accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    """Accuracy at IoU >= 0.5 and mean IoU (x 100): {"referring_accuracy", "mean_iou"}."""
    targets, predictions = _inputs.check_pairs("referring_accuracy", targets, predictions)
    overlaps = np.array([_first_box_iou(_target_text(t), p) for t, p in zip(targets, predictions)])
    return {"referring_accuracy": float(np.mean(overlaps >= IOU_THRESHOLD)) * 100.0,
            "mean_iou": float(np.mean(overlaps)) * 100.0}
