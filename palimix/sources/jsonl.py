"""JSON Lines: one example per line, the way most people ship their own data."""

from __future__ import annotations

import json
from collections.abc import Mapping

import tensorflow as tf

from palimix.sources import base

# Output keys other than the kind fields that `fields` may rename.
_SPECIAL = ("id", "image", "language")


class JsonLines(base.RecordSource):
    """Examples from a .jsonl file: `{"id": ..., "image": "relative/path.jpg",
    "language": "de", "captions": [...]}` per line (any of the kind fields
    captions, answers, question, text, label).

    `fields` maps palimix's names to the file's keys where they differ, e.g.
    `{"image": "file_name", "captions": "sentences", "id": "image_id"}`. Without
    a kind field in `fields`, every kind field that occurs in the file is used.
    Image paths are relative to `image_dir`; lines without an image are
    language-only examples. Without an id the line number is the id. `language=`
    fixes the language of every line instead of reading it from the file.
    """

    def __init__(
        self,
        path: str,
        image_dir: str = "",
        *,
        fields: Mapping[str, str] | None = None,
        split: str = "train",
        language: str | None = None,
    ):
        self.path = base.require_path(path, "JSON Lines file")
        self.image_dir = image_dir and base.require_path(image_dir, "image folder")
        self.language = language and base.normalizer(path)(language)
        mapping = dict(fields or {})
        kind = [k for k in mapping if k not in _SPECIAL]
        base.check_fields(kind)
        self.mapping = {**{k: k for k in _SPECIAL + base.KIND_FIELDS}, **mapping}
        if not kind:  # Nothing named: the kind fields the file has (one read of the file).
            kind = self._kind_fields_in_file()
        super().__init__([split], kind)

    def __repr__(self):
        return f"JsonLines({self.path!r})"

    def _lines(self):
        with tf.io.gfile.GFile(self.path, "r") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield number, json.loads(line)
                    except json.JSONDecodeError as e:
                        raise base.UsageError(f"{self.path}:{number}: not valid JSON ({e}).") from None

    def _kind_fields_in_file(self) -> list[str]:
        found = set()
        for _, entry in self._lines():
            found.update(k for k in base.KIND_FIELDS if self.mapping[k] in entry)
        return [k for k in base.KIND_FIELDS if k in found]

    def _load_split(self, split: str) -> list[dict]:
        normalize = base.normalizer(self.path)
        m = self.mapping
        records = []
        for number, entry in self._lines():
            if self.language:
                language = self.language
            elif entry.get(m["language"]):
                language = normalize(str(entry[m["language"]]))
            else:
                raise base.UsageError(f"{self.path}:{number}: no {m['language']!r} key; pass language= for a one-language file.")
            record = {
                "id": base.as_string(entry.get(m["id"], number)),
                "image/path": base.join(self.image_dir, base.as_string(entry.get(m["image"]))),
                "language": language,
            }
            for key in self.fields:
                value = entry.get(m[key])
                record[key] = base.as_strings(value) if key in base.LIST_FIELDS else base.as_string(value)
            records.append(record)
        return records
