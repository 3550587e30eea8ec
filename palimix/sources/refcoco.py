"""RefCOCO, RefCOCO+ and RefCOCOg as their public release stores them (the `refer`
layout): `refs(unc).p` / `refs(umd).p` / `refs(google).p` next to `instances.json`."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Sequence

import tensorflow as tf

from palimix.sources import base, coco

log = logging.getLogger(__name__)

# The release's split names -> palimix's ("val" is "validation" as in every other source).
SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test", "testA": "testA", "testB": "testB"}
# The splits of each release (the `refer` README): UNC's for RefCOCO and RefCOCO+,
# UMD's (Nagaraja et al.) and Google's (Mao et al.) for RefCOCOg.
RELEASE_SPLITS = {
    "unc": ("train", "validation", "testA", "testB"),
    "umd": ("train", "validation", "test"),
    "google": ("train", "validation"),
}


class _BuiltinsOnly(pickle.Unpickler):
    """Unpickles lists, dicts, strings and numbers only: a refs file holds nothing
    else, and refusing classes keeps a tampered file from running code."""

    def find_class(self, module, name):
        raise base.UsageError(f"The refs pickle refers to {module}.{name}; a RefCOCO refs file holds only lists, "
                              f"dicts, strings and numbers.")


def read_refs(path: str) -> list[dict]:
    """The refs of a `refs(...).p` file (written by Python 2; its strings are ASCII/UTF-8)."""
    base.require_path(path, "RefCOCO refs file")
    with tf.io.gfile.GFile(path, "rb") as f:
        try:
            refs = _BuiltinsOnly(f, encoding="utf-8").load()
        except (pickle.UnpicklingError, EOFError, UnicodeDecodeError) as e:
            raise base.UsageError(f"{path!r} is not a RefCOCO refs pickle: {e}") from None
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise base.UsageError(f"{path!r} does not hold a list of refs (dicts with ref_id, ann_id, sentences, ...).")
    return refs


class RefCoco(base.RecordSource):
    """Referring expressions: one example per sentence, each with its object's `box`
    ([y_min, x_min, y_max, x_max] in 0..1) and the sentence as `expression`.

    `refs_pickle` is the release's list of refs {ref_id, ann_id, image_id, split,
    sentences: [{sent_id, sent, raw, tokens}]}; `instances_json` (next to it) holds
    the COCO annotation `ann_id` whose pixel `bbox` is the box, and the image's
    `file_name`, width and height. Images are `<image_dir>/<file_name>` (COCO
    train2014). A ref has several sentences describing the same object: each is an
    example of its own, id `<ref_id>-<sent_id>` (the RefCOCO metric is per sentence).
    `sentence` picks the text: "sent" (the release's cleaned, lower-cased text, what
    results are reported on) or "raw" (as the annotator typed it).

    `splits` are palimix's names for the release's splits ("val" is "validation");
    a split the file has no refs for is a UsageError when it is read. Blank sentences
    stay in the records: the referring kind leaves them out (`required_text`).
    """

    def __init__(
        self,
        refs_pickle: str,
        instances_json: str,
        image_dir: str,
        *,
        splits: Sequence[str] = RELEASE_SPLITS["unc"],
        sentence: str = "sent",
        language: str = "en",
    ):
        unknown = sorted(set(splits) - set(SPLIT_NAMES.values()))
        if unknown:
            raise base.UsageError(f"RefCoco: unknown split(s) {unknown}; RefCOCO splits are "
                                  f"{', '.join(SPLIT_NAMES.values())}.")
        if sentence not in ("sent", "raw"):
            raise base.UsageError(f"RefCoco: sentence={sentence!r}; use 'sent' (cleaned) or 'raw'.")
        super().__init__(list(splits), ["box", "expression"])
        self.refs_pickle = base.require_path(refs_pickle, "RefCOCO refs file")
        self.instances_json = base.require_path(instances_json, "RefCOCO instances file")
        self.image_dir = base.require_path(image_dir, "RefCOCO image folder (COCO train2014)")
        self.sentence = sentence
        self.language = base.normalizer(refs_pickle)(language)
        self._all_splits: dict[str, list[dict]] | None = None

    def __repr__(self):
        return f"RefCoco({self.refs_pickle!r})"

    def _boxes_and_paths(self) -> tuple[dict, dict]:
        """{ann_id: normalised box} and {image_id: image path} from instances.json."""
        data = base.read_json(self.instances_json, "RefCOCO instances file")
        if "images" not in data or "annotations" not in data:
            raise base.UsageError(f"{self.instances_json!r} has no 'images' and 'annotations': not an instances file.")
        sizes = coco.image_sizes(data["images"], self.instances_json)
        paths = {info["id"]: base.join(self.image_dir, info["file_name"]) for info in data["images"]}
        boxes = {}
        for a in data["annotations"]:
            if a["image_id"] not in sizes:
                raise base.UsageError(f"{self.instances_json}: annotation {a['id']} is for image {a['image_id']}, "
                                      f"which is not in 'images'.")
            boxes[a["id"]] = coco.normalized_box(a.get("bbox"), sizes[a["image_id"]],
                                                 f"{self.instances_json}: annotation {a['id']}")
        return boxes, paths

    def _ref_records(self, ref: dict, boxes: dict, paths: dict) -> list[dict]:
        """One record per sentence of a ref."""
        where = f"{self.refs_pickle}: ref {ref.get('ref_id')!r}"
        try:
            box, path = boxes[ref["ann_id"]], paths[ref["image_id"]]
        except KeyError as e:
            raise base.UsageError(f"{where}: {e} is not in {self.instances_json!r} (refs and instances of "
                                  f"different releases?).") from None
        return [{"id": f"{ref['ref_id']}-{s['sent_id']}", "image/path": path, "language": self.language,
                 "box": box, "expression": base.as_string(s.get(self.sentence)).strip()}
                for s in ref.get("sentences", [])]

    def _parse(self) -> dict[str, list[dict]]:
        """Every split's records (both files read once), in ref-id order."""
        boxes, paths = self._boxes_and_paths()
        by_split: dict[str, list[dict]] = {}
        for ref in sorted(read_refs(self.refs_pickle), key=lambda r: r.get("ref_id", 0)):
            split = SPLIT_NAMES.get(ref.get("split"))
            if split is None:
                raise base.UsageError(f"{self.refs_pickle}: ref {ref.get('ref_id')!r} has split {ref.get('split')!r}; "
                                      f"known: {', '.join(SPLIT_NAMES)}.")
            by_split.setdefault(split, []).extend(self._ref_records(ref, boxes, paths))
        log.info("%r: sentences per split %s.", self, {s: len(r) for s, r in by_split.items()})
        return by_split

    def _load_split(self, split: str) -> list[dict]:
        if self._all_splits is None:
            self._all_splits = self._parse()
        if split not in self._all_splits:
            raise base.UsageError(f"{self.refs_pickle!r} has no refs in split {split!r}; it has: "
                                  f"{', '.join(self._all_splits) or 'none'}.")
        return self._all_splits[split]
