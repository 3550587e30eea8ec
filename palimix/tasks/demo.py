"""The bundled demo mixture `palimix_demo`: every task kind, 100+ languages, on CPU.

Data: `palimix/data/demo/` (built by `scripts/build_demo_data.py`, ~2.7 MB):
synthetic scenes (one red/green/blue/yellow circle/square/triangle at the
left/right/top/bottom of a 64 x 64 image), words rendered in 6 scripts for OCR,
captions, questions, answers, class labels and translations in 25 languages from a
hand-written word table (`words.tsv`), and text for span corruption and prefix LM:
UDHR sample sentences of 138 languages from `gflanguages`, and in the 25 word-table
languages scene sentences built from the same words (a caption, a colour or shape
question and its answer; two captions in the language's CLDR list pattern), the text
the tiny model learns in the demo's budget (one UDHR text per language it does not).

| mixture | kind | languages | train / validation examples |
|---|---|---|---|
| palimix_demo_caption | caption | 25 | 1200 / 200 |
| palimix_demo_vqa | vqa (colour, shape, position) | 25 | 1800 / 300 |
| palimix_demo_classification | classification (3 shapes, listed) | 25 | 600 / 600 |
| palimix_demo_detection | detection ("detect <shape>" -> its `<loc>` box, labelled in the language) | 25 | 1200 / 600 |
| palimix_demo_ocr | ocr (Latin, Cyrillic, Greek, Arabic, Devanagari, Thai) | 13 | 546 / 91 |
| palimix_demo_translation | translation from English | 24 | 480 / 72 |
| palimix_demo_span_corruption | span_corruption (one multilingual task, `_mul`) | 138 | 2265 / 476 |
| palimix_demo_prefix_lm | prefix_lm (text only; one multilingual task) | 138 | 2265 / 476 |
| palimix_demo_text_to_image | text_to_image ("a red circle. Where is the shape? left" -> 16 codes) | 25 | 600 / 100 |

text_to_image's targets are the scenes' codes from the demo's own VQGAN tokenizer
(`tokenizer/`, 4 x 4 codes of 256 at stride 16, trained by the build script on the
training scenes; `image_tokenizer()`). The demo scores the generated codes as images:
drawn by that tokenizer, then read by a rule-based checker (palimix.metrics.scene:
colour, shape, position) and compared with the scene the prompt describes
(`faithfulness`, its headline metric: `PRIMARY_METRICS`), next to `code_accuracy`.

Every demo task tokenizes with `vocabulary()`: the shipped SentencePiece model plus
PaliGemma's 1,024 `<loc>` tokens (the detection targets) and the 1,025 `<img>` tokens
(the text_to_image targets; `palimix.vocab`), 10,241 ids (the tiny configs embed
`configs.PALIMIX_DEMO_VOCAB_SIZE`, 10,368). Other text tokenizes as with the plain
model; only the span-corruption sentinels' ids move up by 2,049.

Each kind is ONE multilingual task, `palimix_demo_<kind>_mul` (`per_language=False`):
every example is prompted in its record's language, `palimix eval` scores each
language on its own with that language's metrics, and the sub-mixture
`palimix_demo_<kind>` is that task. Why not a task per language, as `add_task` does by
default: building a task's tf.data pipeline costs ~0.5 s of tracing on a laptop CPU
(once for training, once for evaluation), and 114 per-language tasks spent ~2 of the
demo's 10 minutes on it; 7 tasks build in seconds and sample the languages in
proportion to their examples, which is what the per-language mixture did.

Validation images are other renders than the training ones, and the translation
phrases and texts of the validation split are held out of training. Images are 64 px
(`IMAGE_SIZE`): a tiny PaLI learns the image kinds in ~1,500 CPU steps at this size.
"""

from __future__ import annotations

import csv
import functools
import importlib.resources
import json
import os

from palimix.features import task_feature_lengths

MIXTURE = "palimix_demo"
IMAGE_SIZE = 64
PREFIX = "palimix_demo_"
# Sub-mixture per kind (evaluate these, or their per-language tasks).
KIND_MIXTURES = {
    kind: PREFIX + kind
    for kind in ("caption", "vqa", "ocr", "classification", "detection", "translation", "span_corruption",
                 "prefix_lm", "text_to_image")
}
# Share of each kind in palimix_demo: the image kinds the demo must learn get most of it.
KIND_RATES = {
    "caption": 0.2,
    "vqa": 0.25,
    "ocr": 0.2,
    "classification": 0.1,
    "detection": 0.2,
    "translation": 0.15,
    "span_corruption": 0.05,
    "prefix_lm": 0.05,
    "text_to_image": 0.15,
}
# The demo's headline metric where it is not the kind's own: its text-to-image images are
# scored for the scene they show (palimix.metrics.scene), not only code by code.
PRIMARY_METRICS = {"text_to_image": "faithfulness"}
# Text lengths (tokens, palimix vocabulary, EOS included). Every caption, VQA,
# classification, OCR and translation example fits (their longest: 46 input, 28
# target tokens); span corruption and prefix LM (p99 55 / 24 tokens) lose the tail of
# their few longest texts to seqio's trimming. `palimix stats palimix_demo` prints
# the percentiles; tests/test_demo.py checks these numbers.
INPUTS_LENGTH = 64
TARGETS_LENGTH = 32
TASK_FEATURE_LENGTHS = task_feature_lengths(INPUTS_LENGTH, TARGETS_LENGTH, IMAGE_SIZE)
SPLITS = ("train", "validation")
# The demo's vocabulary: palimix's shipped model plus these tokensets (palimix.vocab):
# <loc> for detection, then <img> for text_to_image (configs.PALIMIX_DEMO_VOCAB_SIZE).
TOKENSETS = ("loc", "img")
TOKENIZER_DIR = "tokenizer"  # the demo's image tokenizer, under data_dir()
# Prefix LM: at most this many words (characters in unsegmented scripts) to predict.
PREFIX_LM_TARGET_UNITS = 3


def data_dir() -> str:
    return str(importlib.resources.files("palimix") / "data" / "demo")


@functools.lru_cache(maxsize=None)
def words() -> dict[str, dict[str, str]]:
    """{language: {key: text}} from words.tsv."""
    table: dict[str, dict[str, str]] = {}
    with open(os.path.join(data_dir(), "words.tsv"), encoding="utf-8") as f:
        for row in csv.DictReader((line for line in f if not line.startswith("#")), delimiter="\t"):
            table.setdefault(row["language"], {})[row["key"]] = row["text"]
    return table


@functools.lru_cache(maxsize=None)
def build_info() -> dict:
    with open(os.path.join(data_dir(), "build_info.json"), encoding="utf-8") as f:
        return json.load(f)


def vocabulary():
    """The demo tasks' vocabulary (not gin's: the demo data is tokenized one way)."""
    from palimix import vocab

    return vocab.load_vocabulary(tokensets=TOKENSETS)


@functools.lru_cache(maxsize=None)
def image_tokenizer():
    """The demo's VQGAN tokenizer (palimix.image_tokenizer), loaded on first use."""
    from palimix import image_tokenizer as tokenizers

    return tokenizers.load(os.path.join(data_dir(), TOKENIZER_DIR))


@functools.lru_cache(maxsize=None)
def text_to_image_records(split: str) -> dict[str, dict]:
    """{id: record} of text_to_image.{split}.jsonl (the real image, scene and codes)."""
    return {r["id"]: r for r in _read_jsonl(os.path.join(data_dir(), f"text_to_image.{split}.jsonl"))}


@functools.lru_cache(maxsize=None)
def _scenes_by_code_text() -> dict:
    from palimix import image_codes
    from palimix.metrics import scene

    return {image_codes.to_code_text(r["codes"]): scene.Scene(**r["scene"])
            for split in SPLITS for r in text_to_image_records(split).values()}


def scene_of_target(target: str):
    """The scene a text_to_image target's prompt describes, found by the target's codes
    (the build checks that no two scenes of different attributes share codes)."""
    from palimix.errors import UsageError

    scene = _scenes_by_code_text().get(target.strip())
    if scene is None:
        raise UsageError(f"{target[:40]!r}...: not the codes of a demo text_to_image record.")
    return scene


def text_to_image_metrics() -> list:
    """Scene faithfulness (the generated codes drawn by the demo tokenizer, then read;
    palimix.metrics.scene) and code accuracy."""
    from palimix.image_codes import image_code_accuracy
    from palimix.metrics import scene

    def decode_texts(texts):
        return image_tokenizer().decode_texts(texts)

    return [scene.faithfulness_metric(decode_texts, scene_of_target), image_code_accuracy]


def _detection_source():
    """detection.{split}.jsonl as a seqio source of palimix records (id, language,
    image/path, image/encoded) with `boxes` (float32 [n, 4]) and `labels` [n]: the
    detection kind's fields, which `sources.JsonLines` (text fields only) does not read."""
    import seqio

    root = data_dir()
    records = {split: _read_jsonl(os.path.join(root, f"detection.{split}.jsonl")) for split in SPLITS}

    def dataset(split, shuffle_files=False, seed=None):
        import tensorflow as tf

        lines = records[split]
        columns = {
            "id": [r["id"] for r in lines],
            "language": [r["language"] for r in lines],
            "image/path": [os.path.join(root, r["image"]) for r in lines],
            "labels": tf.ragged.constant([r["labels"] for r in lines], dtype=tf.string),
            "boxes": tf.ragged.constant([r["boxes"] for r in lines], dtype=tf.float32, ragged_rank=1),
        }
        ds = tf.data.Dataset.from_tensor_slices(columns)
        if shuffle_files:
            ds = ds.shuffle(len(lines), seed=seed)
        return ds.map(lambda r: {**r, "image/encoded": tf.io.read_file(r["image/path"])},
                      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    return seqio.FunctionDataSource(dataset, splits=SPLITS,
                                    num_input_examples={split: len(lines) for split, lines in records.items()})


def _read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _source(stem: str, fields: dict[str, str]):
    from palimix import sources

    root = data_dir()
    return sources.Splits({
        split: sources.JsonLines(os.path.join(root, f"{stem}.{split}.jsonl"), root, fields=fields, split=split)
        for split in SPLITS
    })


def register(overwrite: bool = False) -> None:
    """Registers the demo tasks and mixtures (palimix.tasks does on import)."""
    from palimix.mixtures import add_mixture
    from palimix.tasks.registry import add_task

    info = build_info()
    table = words()
    word_languages = info["word_table_languages"]
    # One multilingual task per kind (see the module docstring for why).
    common = dict(image_size=IMAGE_SIZE, overwrite=overwrite, per_language=False, vocabulary=vocabulary())
    add_task(KIND_MIXTURES["caption"], kind="caption", source=_source("caption", {"captions": "captions"}),
             languages=word_languages, **common)
    add_task(KIND_MIXTURES["vqa"], kind="vqa", source=_source("vqa", {"question": "question", "answers": "answers"}),
             languages=word_languages, **common)
    add_task(KIND_MIXTURES["classification"], kind="classification", source=_source("classification", {"label": "label"}),
             languages=word_languages, classes={lang: [table[lang][s] for s in ("circle", "square", "triangle")]
                                                for lang in word_languages}, **common)
    add_task(KIND_MIXTURES["detection"], kind="detection", source=_detection_source(), languages=word_languages,
             **common)
    add_task(KIND_MIXTURES["ocr"], kind="ocr", source=_source("ocr", {"text": "text"}),
             languages=info["ocr_languages"], **common)
    add_task(KIND_MIXTURES["translation"], kind="translation",
             source=_source("translation", {"text": "text", "answers": "answers"}),
             languages=[lang for lang in word_languages if lang != "en"], source_language="en", **common)
    text = _source("text", {"text": "text"})
    add_task(KIND_MIXTURES["span_corruption"], kind="span_corruption", source=text,
             languages=info["text_languages"], **common)
    add_task(KIND_MIXTURES["prefix_lm"], kind="prefix_lm", source=text, languages=info["text_languages"],
             images=False, max_target_units=PREFIX_LM_TARGET_UNITS, **common)
    add_task(KIND_MIXTURES["text_to_image"], kind="text_to_image",
             source=_source("text_to_image", {"captions": "captions", "codes": "codes"}), languages=word_languages,
             metrics=text_to_image_metrics(), **common)
    add_mixture(MIXTURE, list(KIND_MIXTURES.values()),
                rate={KIND_MIXTURES[kind]: rate for kind, rate in KIND_RATES.items()}, overwrite=overwrite)


def languages() -> list[str]:
    """Every language of the demo (sorted codes)."""
    info = build_info()
    return sorted(set(info["word_table_languages"]) | set(info["ocr_languages"]) | set(info["text_languages"]))
