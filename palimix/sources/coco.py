"""COCO captions in the official annotation layout (`captions_train2017.json`, ...)."""

from __future__ import annotations

from palimix.sources import base


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
