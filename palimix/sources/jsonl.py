"""JSON Lines: one example per line, the way most people ship their own data."""

from __future__ import annotations

from collections.abc import Mapping

from palimix import boxes as box_text
from palimix.sources import base, lines

# Output keys other than the kind fields that `fields` may rename.
_SPECIAL = ("id", "image", "language")


class JsonLines(base.RecordSource):
    """Examples from a .jsonl file: `{"id": ..., "image": "relative/path.jpg",
    "language": "de", "captions": [...]}` per line (any of the kind fields
    captions, answers, question, text, label, labels, expression, boxes, box).

    Boxes are `[y_min, x_min, y_max, x_max]` in 0..1 (palimix.boxes): detection
    lines have `"boxes": [[...], ...]` with as many `"labels"`, referring lines one
    `"box": [...]` and an `"expression"`. A box that is not four numbers, lies
    outside 0..1 (pixels?) or has a minimum above its maximum, and a boxes/labels
    count mismatch, are UsageErrors naming the file and line when the file is read.

    `"codes": [...]` is the image's VQGAN code grid, row by row (`palimix encode-images`
    writes it; the text_to_image and prefix_image kinds read it): a square number of
    integers in 0..1023, else a UsageError naming the file and line.

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
        return lines.json_lines(self.path)

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
                record[key] = self._value(key, entry.get(m[key]), f"{self.path}:{number}")
            if base.BOXES_FIELD in self.fields and "labels" in self.fields:
                _check_counts(record, f"{self.path}:{number}")
            records.append(record)
        return records

    def _value(self, key: str, value, where: str):
        """A line's value for `key`, checked when it is a box field."""
        if key == base.BOXES_FIELD:
            return _boxes(value, f"{where}: {self.mapping[key]!r}")
        if key == base.BOX_FIELD:
            return _box(value, f"{where}: {self.mapping[key]!r}")
        if key == base.CODES_FIELD:
            return _codes(value, f"{where}: {self.mapping[key]!r}")
        return base.as_strings(value) if key in base.LIST_FIELDS else base.as_string(value)


def _box(value, where: str) -> list[float]:
    """One [y_min, x_min, y_max, x_max] box in 0..1, checked (palimix.boxes.check_box)."""
    if not (isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise base.UsageError(f"{where}: {value!r} is not a box [y_min, x_min, y_max, x_max] (four numbers in 0..1).")
    try:
        return list(box_text.check_box(value))
    except box_text.BoxError as e:
        raise base.UsageError(f"{where}: {e}") from None


def _boxes(value, where: str) -> list[list[float]]:
    """A list of boxes (missing: none)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise base.UsageError(f"{where}: {value!r} is not a list of boxes [[y_min, x_min, y_max, x_max], ...].")
    return [_box(box, f"{where} box {i}") for i, box in enumerate(value)]


def _codes(value, where: str) -> list[int]:
    """An image's code grid (missing: none, and the kinds leave the record out)."""
    from palimix import image_codes

    if value is None:
        return []
    try:
        return image_codes.check_codes(value)
    except image_codes.CodesError as e:
        raise base.UsageError(f"{where}: {e}") from None


def _check_counts(record: dict, where: str) -> None:
    if len(record[base.BOXES_FIELD]) != len(record["labels"]):
        raise base.UsageError(f"{where}: {len(record[base.BOXES_FIELD])} boxes but {len(record['labels'])} labels "
                              f"(one label per box).")
