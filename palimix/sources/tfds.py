"""Any TensorFlow Datasets dataset, its features mapped to palimix's record keys."""

from __future__ import annotations

from collections.abc import Mapping

import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from palimix import languages
from palimix.errors import UsageError
from palimix.preprocessors.image_files import member_path
from palimix.sources import base


def _nested(path: str, leaf):
    """"a/b" -> {"a": {"b": leaf}} (TFDS decoders are nested like the features)."""
    tree = leaf
    for part in reversed(path.split("/")):
        tree = {part: tree}
    return tree


def _get(example, path: str):
    for part in path.split("/"):
        example = example[part]
    return example


class Tfds(seqio.DataSource):
    """A TFDS dataset as a palimix source.

        Tfds("coco_captions", "train", {"image": "image", "id": "image/id",
                                        "captions": "captions/text"})

    `mapping` maps palimix keys (`image`, `id`, `language`, and the text kind fields
    captions, answers, question, text, label, labels, expression) to TFDS feature
    paths ("a/b" for nested features). The image is read undecoded (`tfds.decode.SkipDecoding`), so
    palimix's decoder handles it like any file. ClassLabel features become their
    names. `split` is a split name or {palimix split: TFDS split or slice}.
    `language` is a fixed code unless `mapping["language"]` names a feature.
    Without an `id` feature the id is "<split>/<position>" (stable without shuffling).
    `name` may omit the version ("coco_captions"): the prepared one is used.
    """

    def __init__(
        self,
        name: str,
        split: str | Mapping[str, str] = "train",
        mapping: Mapping[str, str] | None = None,
        *,
        data_dir: str | None = None,
        language: str = "en",
    ):
        splits = {split: split} if isinstance(split, str) else dict(split)
        super().__init__(splits=list(splits), caching_permitted=True)
        self.name = name
        self.mapping = dict(mapping or {"image": "image"})
        self.fields = base.check_fields((k for k in self.mapping if k not in ("image", "id", "language")), base.TEXT_FIELDS)
        self.language = None if "language" in self.mapping else languages.normalize(language)
        image = self.mapping.get("image")
        decoders = _nested(image, tfds.decode.SkipDecoding()) if image else None
        if ":" not in name:  # seqio wants "name:version"; use the version that is prepared.
            name = f"{name}:{tfds.builder(name, data_dir=data_dir).version}"
        self._tfds = seqio.TfdsDataSource(tfds_name=name, tfds_data_dir=data_dir, splits=splits, decoders=decoders)

    def __repr__(self):
        return f"Tfds({self.name!r})"

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return self._tfds.supports_arbitrary_sharding

    def list_shards(self, split: str) -> list[str]:
        return self._tfds.list_shards(split)

    def num_input_examples(self, split: str) -> int:
        return self._tfds.num_input_examples(split)

    def _feature(self, path: str):
        feature = self._tfds.tfds_dataset.info.features
        for part in path.split("/"):
            feature = feature[part]
        return feature

    def _as_text(self, key: str, value, feature) -> tf.Tensor:
        """A feature value as strings: ClassLabel ids -> names, numbers -> decimal."""
        inner = getattr(feature, "feature", feature)  # Sequence(ClassLabel) too.
        if isinstance(inner, tfds.features.ClassLabel):
            value = tf.gather(tf.constant(inner.names, tf.string), value)
        elif value.dtype != tf.string:
            value = tf.strings.as_string(value)
        if key in base.LIST_FIELDS:
            return tf.reshape(value, [-1])
        if value.shape.rank != 0:
            raise UsageError(f"TFDS feature {self.mapping[key]!r} is not a single value; map it to a list field.")
        return value

    def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None, **unused):
        dataset = self._tfds.get_dataset(split=split, shuffle=shuffle, seed=seed, shard_info=shard_info)
        features = {key: self._feature(path) for key, path in self.mapping.items() if key not in ("image", "id")}
        container = f"tfds:{self.name}/{split}"

        def convert(position, example):
            if "id" in self.mapping:
                example_id = self._as_text("id", _get(example, self.mapping["id"]), self._feature(self.mapping["id"]))
            else:
                example_id = tf.strings.join([split, tf.strings.as_string(position)], "/")
            record = {"id": example_id}
            if "image" in self.mapping:
                record["image/encoded"] = _get(example, self.mapping["image"])
                record["image/path"] = tf.strings.join([container + "[", example_id, "]"])
            else:
                record["image/encoded"] = tf.constant("")
                record["image/path"] = tf.constant("")
            if self.language:
                record["language"] = tf.constant(self.language)
            else:
                record["language"] = self._as_text("language", _get(example, self.mapping["language"]), features["language"])
            for key in self.fields:
                record[key] = self._as_text(key, _get(example, self.mapping[key]), features[key])
            return record

        return dataset.enumerate().map(lambda i, e: convert(i, e), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def for_language(self, code: str) -> "Tfds":
        """The examples in one language: this source when its language is fixed,
        else a filtered copy (counting its examples reads the split once)."""
        code = languages.normalize(code)
        if self.language:
            if code != self.language:
                raise UsageError(f"{self!r} has only {self.language!r} examples, not {code!r}.")
            return self
        return _TfdsLanguageView(self, code)


class _TfdsLanguageView(seqio.DataSource):
    def __init__(self, parent: Tfds, language: str):
        super().__init__(splits=parent.splits, caching_permitted=True)
        self.parent, self.language, self.fields = parent, language, parent.fields
        self._counts: dict[str, int] = {}

    def __repr__(self):
        return f"{self.parent!r}.for_language({self.language!r})"

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return self.parent.supports_arbitrary_sharding

    def list_shards(self, split):
        return self.parent.list_shards(split)

    def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None, **unused):
        dataset = self.parent.get_dataset(split, shuffle=shuffle, seed=seed, shard_info=shard_info)
        return dataset.filter(lambda r: tf.equal(r["language"], self.language))

    def num_input_examples(self, split: str) -> int:
        if split not in self._counts:
            dataset = self.get_dataset(split, shuffle=False).map(lambda r: r["language"])
            self._counts[split] = int(dataset.reduce(0, lambda n, _: n + 1))
        return self._counts[split]
