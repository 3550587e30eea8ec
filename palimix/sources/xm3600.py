"""Crossmodal-3600 (XM3600) in its official release layout."""

from __future__ import annotations

import json

import tensorflow as tf

from palimix.sources import base


class Xm3600(base.RecordSource):
    """3600 images with captions in 36 languages: one example per (image, language).

    `captions_jsonl` is the release's `captions.jsonl`: one JSON object per image
    with `image/key`, `image/locale` (where the photo was taken) and, per language,
    `{"caption": [...], ...}`. Images are `<image_dir>/<image/key>.jpg`.
    XM3600 is an evaluation set, hence the default split name "test".

        Xm3600(jsonl, images).for_language("sw")   # the Swahili examples only
    """

    def __init__(self, captions_jsonl: str, image_dir: str, *, split: str = "test", image_pattern: str = "{key}.jpg"):
        super().__init__([split], ["captions"])
        self.captions_jsonl = base.require_path(captions_jsonl, "XM3600 captions file")
        self.image_dir = base.require_path(image_dir, "XM3600 image folder")
        self.image_pattern = image_pattern

    def __repr__(self):
        return f"Xm3600({self.captions_jsonl!r})"

    def _load_split(self, split: str) -> list[dict]:
        normalize = base.normalizer(self.captions_jsonl)
        records = []
        with tf.io.gfile.GFile(self.captions_jsonl, "r") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    key = entry["image/key"]
                except (json.JSONDecodeError, KeyError) as e:
                    raise base.UsageError(f"{self.captions_jsonl}:{number}: not an XM3600 line ({e}).") from None
                path = base.join(self.image_dir, self.image_pattern.format(key=key))
                for locale in sorted(k for k, v in entry.items() if isinstance(v, dict) and "caption" in v):
                    records.append(
                        {
                            "id": key,
                            "image/path": path,
                            "language": normalize(locale),
                            "captions": base.as_strings(entry[locale]["caption"]),
                        }
                    )
        return records
