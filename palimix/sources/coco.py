"""COCO in the official annotation layouts: captions (`captions_train2017.json`, ...)
and object detection (`instances_train2017.json`, ...)."""

from __future__ import annotations

import dataclasses
import logging
import math

from palimix.sources import base

log = logging.getLogger(__name__)

# How far (pixels) a COCO bbox may reach past the image border and be cut at it.
_BORDER_PIXELS = 1.0


class CocoCaptions(base.RecordSource):
    """One example per image with all its captions (`captions`), from a COCO
    captions annotation file: `images` [{id, file_name}], `annotations`
    [{id, image_id, caption}]. Images are `<image_dir>/<file_name>`.

    Files in the same format in other languages (STAIR Captions, COCO-CN...) work
    with `language=`. Image-info files without `annotations` (the test split) give
    every image with no captions; otherwise images without captions are left out.
    """

    def __init__(self, annotations_json: str, image_dir: str, *, split: str = "train", language: str = "en"):
        super().__init__([split], ["captions"])
        self.annotations_json = base.require_path(annotations_json, "COCO annotations file")
        self.image_dir = base.require_path(image_dir, "COCO image folder")
        self.language = base.normalizer(annotations_json)(language)

    def __repr__(self):
        return f"CocoCaptions({self.annotations_json!r})"

    def _load_split(self, split: str) -> list[dict]:
        data = base.read_json(self.annotations_json, "COCO annotations file")
        if "images" not in data:
            raise base.UsageError(f"{self.annotations_json!r} has no 'images' list: not a COCO annotations file.")
        has_annotations = "annotations" in data
        captions: dict[int, list[tuple[int, str]]] = {}
        for annotation in data.get("annotations", []):
            captions.setdefault(annotation["image_id"], []).append((annotation.get("id", 0), annotation["caption"].strip()))
        records = []
        for info in sorted(data["images"], key=lambda i: i["id"]):
            image_captions = [text for _, text in sorted(captions.get(info["id"], []))]
            if has_annotations and not image_captions:
                continue
            records.append(
                {
                    "id": str(info["id"]),
                    "image/path": base.join(self.image_dir, info["file_name"]),
                    "language": self.language,
                    "captions": image_captions,
                }
            )
        return records


# --- detection: COCO instances ---------------------------------------------------------


def image_sizes(images: list, where: str) -> dict[int, tuple[int, int]]:
    """{image id: (width, height)} of a COCO `images` list (boxes are normalised by them)."""
    sizes = {}
    for info in images:
        width, height = info.get("width"), info.get("height")
        if not (isinstance(width, (int, float)) and isinstance(height, (int, float)) and width > 0 and height > 0):
            raise base.UsageError(f"{where}: image {info.get('id')!r} has no positive width and height "
                                  f"(got {width!r} x {height!r}); boxes are normalised by them.")
        sizes[info["id"]] = (width, height)
    return sizes


def normalized_box(bbox, size: tuple[int, int], where: str) -> list[float]:
    """A COCO `bbox` [x, y, width, height] in pixels -> [y_min, x_min, y_max, x_max] in 0..1.

    A box up to a pixel past the border is cut at it (COCO's boxes bound polygons
    whose float corners can lie a fraction of a pixel outside); a bbox that is not
    four numbers, has a negative width or height, or reaches further out, is a
    UsageError naming `where`."""
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)):
        raise base.UsageError(f"{where}: bbox {bbox!r} is not [x, y, width, height] (four numbers, in pixels).")
    x, y, w, h = bbox
    if w < 0 or h < 0:
        raise base.UsageError(f"{where}: bbox {bbox!r} has a negative width or height.")
    width, height = size
    if min(x, y) < -_BORDER_PIXELS or x + w > width + _BORDER_PIXELS or y + h > height + _BORDER_PIXELS:
        raise base.UsageError(f"{where}: bbox {bbox!r} reaches outside the {width} x {height} image.")
    clip = lambda v: min(max(v, 0.0), 1.0)  # noqa: E731
    return [clip(y / height), clip(x / width), clip((y + h) / height), clip((x + w) / width)]


@dataclasses.dataclass
class _Objects:
    """The boxes and labels of one image (parallel lists)."""

    boxes: list = dataclasses.field(default_factory=list)
    labels: list = dataclasses.field(default_factory=list)


class CocoDetection(base.RecordSource):
    """COCO object detection (`instances_train2017.json`, ...): one example per image
    with its objects as `boxes` ([y_min, x_min, y_max, x_max] in 0..1, from the
    pixel `bbox` [x, y, w, h] and the image's width and height) and `labels` (the
    category names), in annotation-id order.

    Crowd regions (`iscrowd: 1`: one box around many objects, which COCO's own
    evaluation treats as "ignore") are left out of the targets; images whose
    annotations are all crowd regions, or that have none, are left out (the detection
    kind's prompt names the classes present, so such an image has no example). Both
    are counted and logged when the file is read (`counts` holds the numbers).
    Images are `<image_dir>/<file_name>`.
    """

    def __init__(self, instances_json: str, image_dir: str, *, split: str = "train", language: str = "en"):
        super().__init__([split], ["boxes", "labels"])
        self.instances_json = base.require_path(instances_json, "COCO instances file")
        self.image_dir = base.require_path(image_dir, "COCO image folder")
        self.language = base.normalizer(instances_json)(language)
        self.counts: dict[str, int] = {}

    def __repr__(self):
        return f"CocoDetection({self.instances_json!r})"

    def _objects(self, data: dict) -> dict[int, _Objects]:
        """{image id: its non-crowd objects}; counts the crowd regions left out."""
        where = self.instances_json
        names = {c["id"]: c["name"].strip() for c in data.get("categories", [])}
        sizes = image_sizes(data["images"], where)
        objects: dict[int, _Objects] = {image_id: _Objects() for image_id in sizes}
        crowd = 0
        for annotation in sorted(data["annotations"], key=lambda a: a["id"]):
            at = f"{where}: annotation {annotation['id']}"
            if annotation["image_id"] not in sizes:
                raise base.UsageError(f"{at} is for image {annotation['image_id']}, which is not in 'images'.")
            if annotation["category_id"] not in names:
                raise base.UsageError(f"{at} has category {annotation['category_id']}, which is not in 'categories'.")
            if annotation.get("iscrowd"):
                crowd += 1
                continue
            found = objects[annotation["image_id"]]
            found.boxes.append(normalized_box(annotation.get("bbox"), sizes[annotation["image_id"]], at))
            found.labels.append(names[annotation["category_id"]])
        self.counts["crowd_regions_left_out"] = crowd
        return objects

    def _load_split(self, split: str) -> list[dict]:
        data = base.read_json(self.instances_json, "COCO instances file")
        if "images" not in data or "annotations" not in data:
            raise base.UsageError(f"{self.instances_json!r} has no 'images' and 'annotations': not a COCO instances file.")
        objects = self._objects(data)
        records = []
        for info in sorted(data["images"], key=lambda i: i["id"]):
            found = objects[info["id"]]
            if found.boxes:
                records.append({"id": str(info["id"]), "image/path": base.join(self.image_dir, info["file_name"]),
                                "language": self.language, "boxes": found.boxes, "labels": found.labels})
        self.counts.update(images=len(records), boxes=sum(len(r["boxes"]) for r in records),
                           images_without_objects_left_out=len(objects) - len(records))
        log.info("%r: %d images with %d boxes; left out %d crowd regions and %d images without (non-crowd) objects.",
                 self, self.counts["images"], self.counts["boxes"], self.counts["crowd_regions_left_out"],
                 self.counts["images_without_objects_left_out"])
        return records
