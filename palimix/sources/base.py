"""What every palimix source shares: records, splits, language views, reading image files.

A *record source* parses its annotation files once (lazily, on first use) into a
list of plain records per split and serves them as a `seqio.DataSource`. Annotation
files and image folders are checked when the source is created (a clear
`MissingFileError` naming the path); single missing images are found while reading
and become counted drops in `palimix.preprocessors.image.decode_image`.
"""

from __future__ import annotations

import abc
import json
import os
import threading
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from palimix import languages
from palimix.errors import PalimixError, UsageError

# Kind-specific fields a source may yield: lists of strings, or single strings.
# `english`: a translated record's English references (build_example's english_answer_share).
LIST_FIELDS = ("captions", "answers", "labels", "english")
STRING_FIELDS = ("question", "text", "label", "expression")
TEXT_FIELDS = LIST_FIELDS + STRING_FIELDS
# Box fields ([y_min, x_min, y_max, x_max] in 0..1, palimix.boxes): `boxes` a list of
# boxes (float32 [n, 4] per record, with `labels`), `box` exactly one (float32 [4]).
BOXES_FIELD, BOX_FIELD = "boxes", "box"
BOX_FIELDS = (BOXES_FIELD, BOX_FIELD)
# Image codes (palimix.image_codes): a VQGAN's code grid of the record's image, row by
# row (int32 [h*w] per record), written next to the records by `palimix encode-images`.
CODES_FIELD = "codes"
KIND_FIELDS = TEXT_FIELDS + BOX_FIELDS + (CODES_FIELD,)
# Keys every record has.
COMMON_KEYS = ("id", "image/encoded", "image/path", "language")


class MissingFileError(PalimixError, FileNotFoundError):
    """An annotation file or image folder that a source was given does not exist."""


def require_path(path: str, what: str) -> str:
    """`path` if it exists, else MissingFileError naming `what` and the path."""
    if not path or not tf.io.gfile.exists(path):
        raise MissingFileError(f"{what} not found: {path!r}")
    return path


def read_json(path: str, what: str):
    require_path(path, what)
    with tf.io.gfile.GFile(path, "r") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise UsageError(f"{what} {path!r} is not valid JSON: {e}") from None


def join(directory: str, name: str) -> str:
    """`name` inside `directory` (local or gs://); absolute paths and URLs stay as they are."""
    if not name or not directory or "://" in name or os.path.isabs(name):
        return name
    return os.path.join(directory, name)


def normalizer(where: str):
    """A cached `languages.normalize` whose errors say which file the code came from."""
    cache: dict[str, str] = {}

    def normalize(code: str) -> str:
        if code not in cache:
            try:
                cache[code] = languages.normalize(code)
            except languages.UnknownLanguageError as e:
                raise languages.UnknownLanguageError(f"{where}: {e}") from None
        return cache[code]

    return normalize


def check_fields(fields: Iterable[str], known: Sequence[str] = KIND_FIELDS) -> tuple[str, ...]:
    """`fields` as a tuple; UsageError for one not in `known` (sources that read only
    text pass TEXT_FIELDS, and a box field gets its own message)."""
    fields = tuple(fields)
    boxes = [f for f in fields if f in BOX_FIELDS and f not in known]
    if boxes:
        raise UsageError(f"This source reads text fields only, not {boxes}; box fields come from JsonLines, "
                         f"CocoDetection and RefCoco.")
    if CODES_FIELD in fields and CODES_FIELD not in known:
        raise UsageError(f"This source reads text fields only, not {CODES_FIELD!r}; image codes come from "
                         f"JsonLines (files written by `palimix encode-images`).")
    unknown = [f for f in fields if f not in known]
    if unknown:
        raise UsageError(f"Unknown record field(s) {unknown}; sources yield {', '.join(known)}.")
    return fields


def as_strings(value) -> list[str]:
    """A JSON value for a list field: a list of strings (a single value becomes [value])."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def as_string(value) -> str:
    return "" if value is None else str(value)


def _box_column(records: Sequence[Mapping], key: str) -> tf.Tensor | tf.RaggedTensor:
    """A box field as a column: `boxes` ragged float32 [records, (n), 4], `box` float32 [records, 4]."""
    if key == BOX_FIELD:
        return tf.constant([r[key] for r in records], tf.float32, shape=[len(records), 4])
    values = [box for r in records for box in r[key]]
    lengths = [len(r[key]) for r in records]
    return tf.RaggedTensor.from_row_lengths(tf.constant(values, tf.float32, shape=[len(values), 4]),
                                            tf.constant(lengths, tf.int64, shape=[len(lengths)]))


def _read_file(path: bytes):
    """Bytes of an image file, or b"" when it does not exist (counted downstream)."""
    name = path.decode("utf-8")
    data = b""
    if name:
        try:
            if "://" in name:
                with tf.io.gfile.GFile(name, "rb") as f:
                    data = f.read()
            else:  # Plain open() is several times faster than GFile for local files.
                with open(name, "rb") as f:
                    data = f.read()
        except (FileNotFoundError, tf.errors.NotFoundError):
            pass
    return np.array(data, dtype=object)  # object, not np.bytes_: keeps trailing NULs.


def read_image_files(example):
    """tf.data map: adds `image/encoded` (the file's bytes) read from `image/path`,
    "" for a file that does not exist (any file system tf.io.gfile knows)."""
    example = dict(example)
    encoded = tf.numpy_function(_read_file, [example["image/path"]], tf.string, stateful=False, name="palimix_read_image")
    encoded.set_shape([])
    example["image/encoded"] = encoded
    return example


def read_existing_image_files(example):
    """Like `read_image_files` for local files whose existence was checked (the
    `_exists` column): `tf.io.read_file`, with no Python in the loop."""
    example = dict(example)
    exists = example.pop("_exists")
    example["image/encoded"] = tf.cond(exists, lambda: tf.io.read_file(example["image/path"]), lambda: tf.constant(""))
    return example


def _is_local(path: str) -> bool:
    return "://" not in path


def records_dataset(records: Sequence[Mapping], fields: Sequence[str], exists: Sequence[bool] | None = None) -> tf.data.Dataset:
    """A dataset of records (dicts with id, image/path, language and `fields`), plus
    an `_exists` column when `exists` is given."""

    def column(key):
        return tf.constant([r[key] for r in records], dtype=tf.string, shape=[len(records)])

    columns = {key: column(key) for key in ("id", "image/path", "language")}
    for key in fields:
        if key in BOX_FIELDS:
            columns[key] = _box_column(records, key)
        elif key == CODES_FIELD:
            columns[key] = tf.RaggedTensor.from_row_lengths(
                tf.constant([c for r in records for c in r[key]], tf.int32, shape=[sum(len(r[key]) for r in records)]),
                tf.constant([len(r[key]) for r in records], tf.int64, shape=[len(records)]))
        elif key in LIST_FIELDS:
            values = [v for r in records for v in r[key]]
            lengths = [len(r[key]) for r in records]
            columns[key] = tf.RaggedTensor.from_row_lengths(
                tf.constant(values, tf.string, shape=[len(values)]), tf.constant(lengths, tf.int64, shape=[len(lengths)])
            )
        else:
            columns[key] = column(key)
    if exists is not None:
        columns["_exists"] = tf.constant(exists, tf.bool, shape=[len(records)])
    return tf.data.Dataset.from_tensor_slices(columns)


class RecordSource(seqio.DataSource):
    """A seqio DataSource over records parsed from annotation files.

    Subclasses set `fields` and implement `_load_split(split) -> list[dict]`, each
    record holding `id`, `image/path` ("" for no image), `language` (normalized) and
    the `fields`. Order is the order of the annotation files, so datasets are
    deterministic when `shuffle=False` (and reproducible with a seed otherwise).
    """

    def __init__(self, splits: Sequence[str], fields: Sequence[str]):
        super().__init__(splits=splits, caching_permitted=True)
        self.fields = check_fields(fields)
        self._records: dict[str, list[dict]] = {}
        self._by_language: dict[str, dict[str, list[dict]]] = {}
        self._exists: dict[str, list[bool]] = {}
        self._lock = threading.Lock()

    @abc.abstractmethod
    def _load_split(self, split: str) -> list[dict]:
        """Parses the annotations of `split` into records."""

    # -- records --------------------------------------------------------------------

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise UsageError(f"{self!r} has no split {split!r}; it has: {', '.join(self.splits)}.")

    def records(self, split: str) -> list[dict]:
        """The split's records (parsed once, then cached)."""
        self._check_split(split)
        with self._lock:
            if split not in self._records:
                self._records[split] = self._load_split(split)
            return self._records[split]

    def records_by_language(self, split: str) -> dict[str, list[dict]]:
        records = self.records(split)
        with self._lock:
            if split not in self._by_language:
                groups: dict[str, list[dict]] = {}
                for record in records:
                    groups.setdefault(record["language"], []).append(record)
                self._by_language[split] = groups
            return self._by_language[split]

    def languages(self, split: str | None = None) -> list[str]:
        """Sorted language codes of the examples (of one split, or of all)."""
        found: set[str] = set()
        for s in [split] if split else self.splits:
            found.update(self.records_by_language(s))
        return sorted(found)

    def for_language(self, code: str) -> "RecordSource":
        """This source's examples in one language, as a source (cheap: shares the parse).

        Unknown codes raise UnknownLanguageError now; a known language the data does
        not contain raises UsageError when the examples are first needed.
        """
        return LanguageView(self, languages.normalize(code))

    def missing_images(self, split: str) -> list[str]:
        """Image files of `split` that do not exist (one stat per file: slow on gs://)."""
        return [r["image/path"] for r in self.records(split) if r["image/path"] and not tf.io.gfile.exists(r["image/path"])]

    def _local_files_exist(self, split: str) -> list[bool] | None:
        """Per record, whether its image file exists, when all are local files (a stat
        each, once per split); None when some are remote (read through gfile then)."""
        records = self.records(split)
        paths = [r["image/path"] for r in records]
        if not all(_is_local(p) for p in paths):
            return None
        with self._lock:
            if split not in self._exists:
                self._exists[split] = [bool(p) and os.path.isfile(p) for p in paths]
            return self._exists[split]

    # -- seqio.DataSource -----------------------------------------------------------

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split: str) -> Sequence[str]:
        return [split]

    def num_input_examples(self, split: str) -> int:
        return len(self.records(split))

    def get_dataset(
        self,
        split: str = "train",
        shuffle: bool = True,
        seed: int | None = None,
        shard_info: seqio.ShardInfo | None = None,
        *,
        sequence_length=None,  # Unused (seqio's signature).
        use_cached: bool = False,  # Unused.
        num_epochs: int | None = 1,  # Unused.
    ) -> tf.data.Dataset:
        """Records with their image file bytes: the keys of COMMON_KEYS plus `fields`."""
        records = self.records(split)
        exists = self._local_files_exist(split)
        dataset = records_dataset(records, self.fields, exists)
        if shard_info and shard_info.num_shards > 1:
            dataset = dataset.shard(shard_info.num_shards, shard_info.index)
        if shuffle:
            # Records are small (strings): shuffle them all, before reading any image.
            dataset = dataset.shuffle(max(len(records), 1), seed=seed, reshuffle_each_iteration=True)
        read = read_existing_image_files if exists is not None else read_image_files
        return dataset.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


class LanguageView(RecordSource):
    """The examples of one language of another record source."""

    def __init__(self, parent: RecordSource, language: str):
        super().__init__(parent.splits, parent.fields)
        self.parent = parent
        self.language = language

    def __repr__(self):
        return f"{self.parent!r}.for_language({self.language!r})"

    def _load_split(self, split: str) -> list[dict]:
        groups = self.parent.records_by_language(split)
        if self.language not in groups:
            raise UsageError(
                f"{self.parent!r} has no {split!r} examples in language {self.language!r}; "
                f"it has: {', '.join(sorted(groups)) or 'none'}."
            )
        return groups[self.language]


class Splits(RecordSource):
    """Several single-split sources as one source with named splits:

        Splits({"train": CocoCaptions(train_json, train_dir),
                "validation": CocoCaptions(val_json, val_dir)})
    """

    def __init__(self, sources: Mapping[str, RecordSource]):
        if not sources:
            raise UsageError("Splits needs at least one {split name: source}.")
        fields = {tuple(s.fields) for s in sources.values()}
        if len(fields) != 1:
            raise UsageError(f"Splits: the sources yield different fields: {sorted(fields)}.")
        for name, source in sources.items():
            if len(source.splits) != 1:
                raise UsageError(f"Splits: the source for {name!r} has several splits ({source.splits}); pass one.")
        super().__init__(list(sources), fields.pop())
        self.sources = dict(sources)

    def __repr__(self):
        return f"Splits({self.sources!r})"

    def _load_split(self, split: str) -> list[dict]:
        source = self.sources[split]
        return source.records(source.splits[0])
