"""Box metrics over PaliGemma's `<loc>` text (palimix.boxes): detection and referring expressions.

Targets and predictions are texts such as `<loc0102><loc0205><loc0512><loc0614> cat ;
...`; both are parsed with `palimix.boxes.parse_loc_text`, and a prediction that does
not parse is an answer with no boxes (it scores 0, it is not an error).

- `detection_f1`: a predicted box is a true positive when it has the label of a
  reference box that no other prediction took and their IoU is >= 0.5 (pairs matched
  greedily, highest IoU first, one to one); precision, recall and F1 x 100 over all
  boxes of all examples. Generated text has no confidence per box, so there is no
  ranking to average precision over: this is the single operating point.
- `referring_accuracy`: RefCOCO's accuracy, the share (x 100) of examples whose first
  predicted box has IoU >= 0.5 with the reference box, and their mean IoU (x 100).
"""

from __future__ import annotations

from typing import Any, Sequence

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
