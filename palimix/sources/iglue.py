"""IGLUE's multilingual benchmarks that mBLIP evaluates on: XVNLI, MaRVL and xFlickrCO,
in the layout of IGLUE's `datasets/` folder (github.com/e-bug/iglue).

- XVNLI (`datasets/XVNLI/annotations/<lang>/test.jsonl`): visual entailment on
  Flickr30k images: is the statement (`sentence2`) true of the image? Labels as mBLIP
  asks for them: entailment "yes", contradiction "no", neutral "maybe" (English).
- MaRVL (`datasets/marvl/zero_shot/annotations/marvl-<lang>.jsonl`): is the statement
  (`caption`) true of a PAIR of images? Labels "yes"/"no" (English). The two images
  are composed side by side into one image (see `side_by_side`), so the pair is one
  example of palimix's one-image contract.
- xFlickrCO (`datasets/xFlickrCO/annotations/<lang>/test.jsonl`): captions of 1000
  Flickr30k and 1000 COCO val2014 images in 8 languages.

XVNLI and MaRVL are read as `vqa` records (question = the statement, answers = [the
label]) and scored by accuracy; `palimix.tasks.register_benchmarks` registers them so.
"""

from __future__ import annotations

import io
import logging
import os
import re
import unicodedata

import numpy as np
import tensorflow as tf

from palimix import languages
from palimix.sources import base, lines

log = logging.getLogger(__name__)

XVNLI_LABELS = {"entailment": "yes", "contradiction": "no", "neutral": "maybe"}  # mBLIP's label_map.
MARVL_LABELS = {True: "yes", False: "no"}  # mBLIP's target2str.
_MARVL_FILE = re.compile(r"^marvl-([A-Za-z]{2,3})\.jsonl$")
# xFlickrCO's COCO images are named as in COCO's val2014 folder; the others are Flickr30k's.
_COCO_PREFIX = "COCO_val2014_"
# Side-by-side images are stored as JPEG of this quality before the usual decoding.
COMPOSED_JPEG_QUALITY = 95


def _language_folders(annotations_dir: str, file_name: str) -> dict[str, str]:
    """{language: <annotations_dir>/<lang>/<file_name>} for each language folder that has the file."""
    folder = base.require_path(annotations_dir, "IGLUE annotations folder")
    files = {}
    for name in sorted(tf.io.gfile.listdir(folder)):
        name = name.rstrip("/")
        path = base.join(base.join(folder, name), file_name)
        if tf.io.gfile.exists(path):
            files[languages.normalize(name)] = path
    if not files:
        raise base.UsageError(f"{folder!r} has no <language>/{file_name} files (IGLUE's layout).")
    return files


class Xvnli(base.RecordSource):
    """XVNLI: `annotations_dir` is IGLUE's `datasets/XVNLI/annotations` (a folder per
    language with `test.jsonl`, `train_<n>.jsonl`); `split` names the file
    (`split="train_10"` reads the 10-shot files). Images: `<image_dir>/<Flikr30kID>.jpg`.
    Pairs without a gold label ("-": the annotators did not agree; 14 per language in
    test) are left out, counted (`skipped`) and logged."""

    def __init__(self, annotations_dir: str, image_dir: str, *, split: str = "test",
                 image_pattern: str = "{image_id}.jpg"):
        super().__init__([split], ["question", "answers"])
        self.files = _language_folders(annotations_dir, f"{split}.jsonl")
        self.image_dir = base.require_path(image_dir, "Flickr30k image folder")
        self.image_pattern = image_pattern
        self.skipped: dict[str, int] = {}  # language -> pairs left out (no gold label).

    def __repr__(self):
        return f"Xvnli({sorted(self.files)})"

    def _load_split(self, split: str) -> list[dict]:
        return [record for code in sorted(self.files) for record in self._records_of(code)]

    def _records_of(self, code: str) -> list[dict]:
        path, records, skipped = self.files[code], [], 0
        for number, entry in lines.json_lines(path):
            try:
                label, image_id = entry["gold_label"], entry["Flikr30kID"]
                record = {"id": str(entry["pairID"]), "language": code, "question": entry["sentence2"],
                          "image/path": base.join(self.image_dir, self.image_pattern.format(image_id=image_id))}
            except (KeyError, TypeError) as e:
                raise base.UsageError(f"{path}:{number}: not an XVNLI line (missing {e}).") from None
            if label not in XVNLI_LABELS:
                skipped += 1
                continue
            records.append({**record, "answers": [XVNLI_LABELS[label]]})
        if skipped:
            log.info("XVNLI %s: left out %d pairs without a gold label (%s).", code, skipped, path)
        self.skipped[code] = skipped
        return records


def side_by_side(left: bytes, right: bytes) -> bytes:
    """The two encoded images as one JPEG: left | right, both scaled (bicubic, aspect
    kept) to the smaller of their heights. The result, about twice as wide as high,
    is then resized to the model's square like any image (so each half is squeezed
    horizontally). Raises the Pillow error for a file that is not an image."""
    from PIL import Image

    with Image.open(io.BytesIO(left)) as a, Image.open(io.BytesIO(right)) as b:
        a, b = a.convert("RGB"), b.convert("RGB")
        height = min(a.height, b.height)
        a, b = (im.resize((max(1, round(im.width * height / im.height)), height), Image.BICUBIC)
                if im.height != height else im for im in (a, b))
        pair = Image.new("RGB", (a.width + b.width, height))
        pair.paste(a, (0, 0))
        pair.paste(b, (a.width, 0))
    out = io.BytesIO()
    pair.save(out, "JPEG", quality=COMPOSED_JPEG_QUALITY)
    return out.getvalue()


def _compose(left: bytes, right_path: bytes, left_path: bytes):
    """numpy_function: the side-by-side image, or b"" (dropped and counted by the image
    decoder) when a file is missing or not an image, with a warning naming both."""
    from PIL import Image

    data = b""
    try:
        with tf.io.gfile.GFile(right_path.decode("utf-8"), "rb") as f:
            right = f.read()
        if left:
            data = side_by_side(left, right)
    # A missing file, and Pillow's errors for a file that is not a (safe) image.
    except (tf.errors.NotFoundError, OSError, ValueError, Image.DecompressionBombError) as e:
        log.warning("MaRVL: cannot compose %s and %s: %s", left_path.decode(), right_path.decode(), e)
    return np.array(data, dtype=object)


class _SideBySide:
    """get_dataset whose `image/encoded` is a record's left and right images side by
    side (`image/path` "left | right"); records carry the right image in `image/right`."""

    def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None, **kwargs):
        dataset = super().get_dataset(split, shuffle, seed, shard_info, **kwargs)  # Reads the left files.
        records = self.records(split)
        right = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant([r["id"] for r in records], tf.string, shape=[len(records)]),
            tf.constant([r["image/right"] for r in records], tf.string, shape=[len(records)])), default_value="")

        def compose(example):
            example = dict(example)
            right_path = right.lookup(example["id"])
            encoded = tf.numpy_function(_compose, [example["image/encoded"], right_path, example["image/path"]],
                                        tf.string, stateful=False, name="palimix_side_by_side")
            encoded.set_shape([])
            example["image/encoded"] = encoded
            example["image/path"] = tf.strings.join([example["image/path"], " | ", right_path])
            return example

        return dataset.map(compose, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


class Marvl(_SideBySide, base.RecordSource):
    """MaRVL: `annotations` is IGLUE's `datasets/marvl/zero_shot/annotations` (files
    `marvl-<lang>.jsonl`: concept, language, caption, left_img, right_img, id, label)
    and `image_dir` the MaRVL image release (`<lang>/images/<concept>/<file>`). One
    example per line: question = caption, answers = ["yes"] or ["no"], the image the
    left and right images side by side (`side_by_side`). Concept folders with
    non-ASCII names may be stored decomposed (NFKD) by the unzip: the path as written,
    else its NFKD form where only that exists (as mBLIP reads them)."""

    def __init__(self, annotations: str, image_dir: str, *, split: str = "test"):
        super().__init__([split], ["question", "answers"])
        folder = base.require_path(annotations, "MaRVL annotations folder")
        self.files = {languages.normalize(m.group(1)): base.join(folder, name)
                      for name in sorted(tf.io.gfile.listdir(folder)) if (m := _MARVL_FILE.match(name))}
        if not self.files:
            raise base.UsageError(f"{folder!r} has no MaRVL files (marvl-<lang>.jsonl).")
        self.image_dir = base.require_path(image_dir, "MaRVL image folder")

    def __repr__(self):
        return f"Marvl({sorted(self.files)})"

    def for_language(self, code: str) -> "base.RecordSource":
        return _MarvlLanguageView(self, languages.normalize(code))

    def _load_split(self, split: str) -> list[dict]:
        records = [record for code in sorted(self.files) for record in self._records_of(code)]
        ids = [r["id"] for r in records]
        if len(set(ids)) != len(ids):
            raise base.UsageError(f"{self!r}: example ids repeat; each line needs its own `id`.")
        return records

    def _records_of(self, code: str) -> list[dict]:
        path, records = self.files[code], []
        for number, entry in lines.json_lines(path):
            try:
                folder = base.join(base.join(self.image_dir, entry["language"]), os.path.join("images", entry["concept"]))
                label = entry["label"]
                record = {"id": str(entry["id"]), "language": code, "question": entry["caption"],
                          "image/path": _existing(base.join(folder, entry["left_img"])),
                          "image/right": _existing(base.join(folder, entry["right_img"]))}
            except (KeyError, TypeError) as e:
                raise base.UsageError(f"{path}:{number}: not a MaRVL line (missing {e}).") from None
            if label not in MARVL_LABELS:
                raise base.UsageError(f"{path}:{number}: label {label!r} is not true or false.")
            records.append({**record, "answers": [MARVL_LABELS[label]]})
        return records


class _MarvlLanguageView(_SideBySide, base.LanguageView):
    """One language of a Marvl source, its images composed too."""


def _existing(path: str) -> str:
    """`path`, or its NFKD form when only that exists (zips made on macOS)."""
    if tf.io.gfile.exists(path):
        return path
    decomposed = unicodedata.normalize("NFKD", path)
    return decomposed if decomposed != path and tf.io.gfile.exists(decomposed) else path


class XFlickrCo(base.RecordSource):
    """xFlickrCO: `annotations_dir` is IGLUE's `datasets/xFlickrCO/annotations` (a
    folder per language with `test.jsonl`: {sentences, id, img_path}). Images named
    `COCO_val2014_*.jpg` are in `coco_image_dir` (COCO's val2014), the others in
    `flickr_image_dir` (Flickr30k). One example per (image, language); its id is the
    image file name (Flickr30k and COCO ids are different numberings)."""

    def __init__(self, annotations_dir: str, flickr_image_dir: str, coco_image_dir: str, *, split: str = "test"):
        super().__init__([split], ["captions"])
        self.files = _language_folders(annotations_dir, f"{split}.jsonl")
        self.flickr_image_dir = base.require_path(flickr_image_dir, "Flickr30k image folder")
        self.coco_image_dir = base.require_path(coco_image_dir, "COCO val2014 image folder")

    def __repr__(self):
        return f"XFlickrCo({sorted(self.files)})"

    def _load_split(self, split: str) -> list[dict]:
        records = []
        for code in sorted(self.files):
            for number, entry in lines.json_lines(self.files[code]):
                try:
                    name = entry["img_path"]
                    folder = self.coco_image_dir if name.startswith(_COCO_PREFIX) else self.flickr_image_dir
                    records.append({"id": name, "image/path": base.join(folder, name), "language": code,
                                    "captions": base.as_strings(entry["sentences"])})
                except (KeyError, TypeError, AttributeError) as e:
                    raise base.UsageError(f"{self.files[code]}:{number}: not an xFlickrCO line ({e!r}).") from None
        return records
