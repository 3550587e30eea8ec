"""ImageFolder: `<root>/<class name>/<image file>`, labels optionally translated."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence

import tensorflow as tf

from palimix import languages as languages_lib
from palimix.sources import base

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def read_label_table(path: str) -> dict[str, dict[str, str]]:
    """A TSV with a `folder` column and one column per language code:

        folder      en      de      sw
        golden_retriever    golden retriever    Golden Retriever    ...
    """
    base.require_path(path, "label table")
    with tf.io.gfile.GFile(path, "r") as f:
        rows = list(csv.DictReader(io.StringIO(f.read()), delimiter="\t"))
    if not rows or "folder" not in rows[0]:
        raise base.UsageError(f"Label table {path!r} needs a header with a 'folder' column and language codes.")
    return {row["folder"]: {code: text for code, text in row.items() if code != "folder" and text} for row in rows}


class ImageFolder(base.RecordSource):
    """Classification images in class folders; `label` is the class in each language.

    Without `labels`, the label is the folder name ("golden_retriever" ->
    "golden retriever") in `languages` (default English). With `labels` (a TSV path
    as `read_label_table` reads, or {folder: {language: label}}), each image is an
    example in each language of the table (or of `languages`): one task per
    language via `for_language`. Files whose extension is not an image's are skipped
    (.DS_Store, Thumbs.db). `class_names(language)` lists the labels in order.
    """

    def __init__(
        self,
        root: str,
        *,
        split: str = "train",
        labels: str | Mapping[str, Mapping[str, str]] | None = None,
        languages: Sequence[str] | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ):
        super().__init__([split], ["label"])
        self.root = base.require_path(root, "image folder")
        self.extensions = tuple(e.lower() for e in extensions)
        self.folders = sorted(d.rstrip("/") for d in tf.io.gfile.listdir(root) if tf.io.gfile.isdir(base.join(root, d.rstrip("/"))))
        if not self.folders:
            raise base.UsageError(f"{root!r} has no class folders (expected <root>/<class>/<image>).")
        if isinstance(labels, str):
            labels = read_label_table(labels)
        normalize = base.normalizer("ImageFolder labels")
        if labels is None:
            self.table = {f: {} for f in self.folders}
            codes = [normalize(c) for c in (languages or ["en"])]
        else:
            self.table = {folder: {normalize(c): text for c, text in row.items()} for folder, row in labels.items()}
            table_codes = sorted({c for row in self.table.values() for c in row})
            codes = [normalize(c) for c in languages] if languages else table_codes
        self.label_languages = codes
        for folder in self.folders:
            row = self.table.get(folder)
            if labels is not None and row is None:
                raise base.UsageError(f"The label table has no row for class folder {folder!r}.")
            for code in codes:
                if labels is not None and code not in row:
                    raise base.UsageError(f"The label table has no {languages_lib.get(code).name} ({code}) label for {folder!r}.")

    def __repr__(self):
        return f"ImageFolder({self.root!r})"

    def label(self, folder: str, language: str) -> str:
        return self.table[folder].get(language) or folder.replace("_", " ")

    def class_names(self, language: str = "en") -> list[str]:
        """Labels of all classes in `language`, in folder order."""
        code = languages_lib.normalize(language)
        return [self.label(folder, code) for folder in self.folders]

    def _load_split(self, split: str) -> list[dict]:
        images = []
        for folder in self.folders:
            directory = base.join(self.root, folder)
            for name in sorted(tf.io.gfile.listdir(directory)):
                if name.lower().endswith(self.extensions):
                    images.append((folder, name, base.join(directory, name)))
        return [
            {"id": f"{folder}/{name}", "image/path": path, "language": code, "label": self.label(folder, code)}
            for code in self.label_languages
            for folder, name, path in images
        ]
