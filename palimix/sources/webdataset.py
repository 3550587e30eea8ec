"""WebDataset tar shards (`<key>.jpg` + `<key>.json` / `<key>.txt` ...), as large datasets
are stored (img2dataset writes this layout)."""

from __future__ import annotations

import copy
import json
import os
import tarfile
from collections.abc import Mapping, Sequence

import braceexpand
import numpy as np
import seqio
import tensorflow as tf

from palimix import languages
from palimix.errors import UsageError
from palimix.preprocessors.image_files import member_path
from palimix.sources import base

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")

# Examples held for shuffling within the stream (shard order is shuffled too).
SHUFFLE_BUFFER = 1000


def expand_shards(shards: str | Sequence[str]) -> list[str]:
    """"data/shard-{000000..000099}.tar", a glob, or a list of either -> shard paths."""
    patterns = [shards] if isinstance(shards, str) else list(shards)
    paths = []
    for pattern in patterns:
        for name in braceexpand.braceexpand(pattern):
            if any(c in name for c in "*?["):
                matches = sorted(tf.io.gfile.glob(name))
                if not matches:
                    raise base.MissingFileError(f"No WebDataset shards match {name!r}.")
                paths += matches
            else:
                paths.append(base.require_path(name, "WebDataset shard"))
    if not paths:
        raise UsageError(f"No WebDataset shards in {shards!r}.")
    return paths


def _split_name(member: str) -> tuple[str, str]:
    """WebDataset's convention: the key is the path up to the first dot of the file name."""
    directory, name = os.path.split(member)
    stem, _, extension = name.partition(".")
    return os.path.join(directory, stem), extension.lower()


def read_samples(shard: str):
    """Yields (key, {extension: bytes}, {extension: member name}) per sample, in tar order."""
    with tf.io.gfile.GFile(shard, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        key, data, names = None, {}, {}
        for member in tar:
            if not member.isfile():
                continue
            member_key, extension = _split_name(member.name)
            if member_key != key:
                if key is not None:
                    yield key, data, names
                key, data, names = member_key, {}, {}
            data[extension] = tar.extractfile(member).read()
            names[extension] = member.name
        if key is not None:
            yield key, data, names


class WebDataset(seqio.DataSource):
    """Examples from WebDataset tar shards; one example per key.

    `fields` maps palimix keys to where a sample holds them: ".txt" (a member's
    extension: its text) or a key of the sample's `.json` member. Default:
    `{"captions": ".txt"}` (img2dataset). The first member with an image extension is
    the image. `language` is a fixed code, or give `fields["language"]` (a JSON key).
    Shards are read in order; with `shuffle`, shard order and a buffer of
    SHUFFLE_BUFFER examples are shuffled. Counting examples (`num_input_examples`)
    reads the tar headers once (and the JSON members when filtering by language).
    """

    def __init__(
        self,
        shards: str | Sequence[str],
        *,
        split: str = "train",
        fields: Mapping[str, str] | None = None,
        language: str = "en",
    ):
        super().__init__(splits=[split], caching_permitted=True)
        self.shards = expand_shards(shards)
        self.mapping = dict(fields or {"captions": ".txt"})
        self.fields = base.check_fields((k for k in self.mapping if k not in ("id", "language")), base.TEXT_FIELDS)
        self.language = None if "language" in self.mapping else languages.normalize(language)
        self.only_language: str | None = None  # Set by for_language.
        self._normalize = base.normalizer("WebDataset language")
        self._counts: dict[str, int] = {}

    def __repr__(self):
        where = self.shards[0] + (f" (+{len(self.shards) - 1} more)" if len(self.shards) > 1 else "")
        return f"WebDataset({where!r})" + (f".for_language({self.only_language!r})" if self.only_language else "")

    def _value(self, where: str, data: dict, metadata: dict):
        if where.startswith("."):
            raw = data.get(where[1:].lower())
            return None if raw is None else raw.decode("utf-8").strip()
        return metadata.get(where)

    def _record(self, shard: str, key: str, data: dict, names: dict) -> dict | None:
        try:
            metadata = json.loads(data["json"]) if "json" in data else {}
        except json.JSONDecodeError as e:
            raise UsageError(f"{member_path(shard, names['json'])}: not valid JSON ({e}).") from None
        if self.language:
            language = self.language
        else:
            code = self._value(self.mapping["language"], data, metadata)
            if not code:
                raise UsageError(f"{member_path(shard, key)}: no language ({self.mapping['language']!r}).")
            language = self._normalize(str(code))
        if self.only_language and language != self.only_language:
            return None
        image = next((e for e in names if e in IMAGE_EXTENSIONS), None)
        record = {
            "id": str(self._value(self.mapping["id"], data, metadata) or key) if "id" in self.mapping else key,
            "image/encoded": data[image] if image else b"",
            "image/path": member_path(shard, names[image]) if image else "",
            "language": language,
        }
        for field in self.fields:
            value = self._value(self.mapping[field], data, metadata)
            record[field] = base.as_strings(value) if field in base.LIST_FIELDS else base.as_string(value)
        return record

    def _records(self, shards: Sequence[str]):
        for shard in shards:
            for key, data, names in read_samples(shard):
                record = self._record(shard, key, data, names)
                if record is not None:
                    yield {k: np.array(v, dtype=object) if k in base.LIST_FIELDS else v for k, v in record.items()}

    def _signature(self):
        scalar, vector = tf.TensorSpec([], tf.string), tf.TensorSpec([None], tf.string)
        signature = {key: scalar for key in base.COMMON_KEYS}
        signature.update({f: vector if f in base.LIST_FIELDS else scalar for f in self.fields})
        return signature

    # -- seqio.DataSource -----------------------------------------------------------

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split: str) -> list[str]:
        return list(self.shards)

    def num_input_examples(self, split: str) -> int:
        if split not in self._counts:
            if self.only_language and not self.language:  # Needs each sample's JSON.
                self._counts[split] = sum(1 for _ in self._records(self.shards))
            else:
                self._counts[split] = sum(1 for shard in self.shards for _ in read_samples(shard))
        return self._counts[split]

    def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None, **unused):
        if split not in self.splits:
            raise UsageError(f"{self!r} has no split {split!r}; it has: {', '.join(self.splits)}.")
        shards = list(self.shards)
        element_sharding = None
        if shard_info and shard_info.num_shards > 1:
            if len(shards) >= shard_info.num_shards:
                shards = shards[shard_info.index :: shard_info.num_shards]
            else:
                element_sharding = shard_info
        if shuffle:
            shards = [shards[i] for i in np.random.default_rng(seed).permutation(len(shards))]
        dataset = tf.data.Dataset.from_generator(lambda: self._records(shards), output_signature=self._signature())
        if element_sharding:
            dataset = dataset.shard(element_sharding.num_shards, element_sharding.index)
        if shuffle:
            dataset = dataset.shuffle(SHUFFLE_BUFFER, seed=seed)
        return dataset

    def for_language(self, code: str) -> "WebDataset":
        """The examples in one language (filtered while reading)."""
        code = languages.normalize(code)
        if self.language and code != self.language:
            raise UsageError(f"{self!r} has only {self.language!r} examples, not {code!r}.")
        view = copy.copy(self)
        view.only_language = code
        view._counts = {}
        return view
