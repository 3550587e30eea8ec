"""The bundled demo: its data files, its tasks, and that its examples fit the
recommended lengths."""

import json
import os

import numpy as np
import pytest
import seqio

import palimix.tasks
from palimix import languages
from palimix.tasks import demo


def test_demo_data_is_small_and_complete():
    root = demo.data_dir()
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)
    assert total < 20e6
    info = demo.build_info()
    for kind in ("caption", "vqa", "classification", "ocr", "translation", "text"):
        for split in demo.SPLITS:
            with open(os.path.join(root, f"{kind}.{split}.jsonl"), encoding="utf-8") as f:
                assert sum(1 for _ in f) == info["counts"][f"{kind}.{split}"] > 0
    assert len(info["word_table_languages"]) >= 20
    scripts = {languages.get(code).script for code in info["ocr_languages"]}
    assert len(scripts) >= 5


def test_word_table_is_complete_for_every_language():
    table = demo.words()
    required = set(table["en"])
    for lang, words in table.items():
        languages.normalize(lang)
        assert required <= set(words), (lang, required - set(words))
        for shape in ("circle", "square", "triangle"):
            gender = words.get(f"{shape}@gender")
            if gender:
                for color in ("red", "green", "blue", "yellow"):
                    assert words.get(f"{color}@{gender}", words[color])


def test_demo_mixture_has_every_kind_and_100_languages():
    mixture = seqio.get_mixture_or_task(demo.MIXTURE)
    infos = [palimix.tasks.task_info(t.name) for t in mixture.tasks]
    assert {i.kind for i in infos} == {"caption", "vqa", "ocr", "classification", "translation", "span_corruption", "prefix_lm"}
    assert len({code for i in infos for code in i.languages}) >= 100
    assert {i.image_size for i in infos} == {demo.IMAGE_SIZE}
    assert set(mixture.splits) == {"train", "validation"}


@pytest.mark.parametrize("task", ["palimix_demo_caption_mul", "palimix_demo_ocr_mul", "palimix_demo_vqa_mul",
                                  "palimix_demo_span_corruption_mul"])
def test_demo_examples_decode_and_fit_the_lengths(task):
    ds = seqio.get_mixture_or_task(task).get_dataset(None, split="validation", shuffle=False, trim_output_features=False)
    examples = list(ds.as_numpy_iterator())
    assert examples
    fits = [len(ex["inputs"]) <= demo.INPUTS_LENGTH and len(ex["targets"]) <= demo.TARGETS_LENGTH for ex in examples]
    if "span_corruption" in task:  # Language-only text: the longest few are trimmed.
        assert np.mean(fits) >= 0.95
        assert len({ex["language"] for ex in examples}) >= 100
    else:
        assert all(fits)
        assert len({ex["language"] for ex in examples}) >= 13  # Every task is multilingual.
    for ex in examples:
        assert ex["image"].shape == (demo.IMAGE_SIZE, demo.IMAGE_SIZE, 3)
        if ex["has_image"]:
            assert ex["image"].std() > 0.05  # A real picture, not a blank.
    if task == "palimix_demo_caption_mul":
        with open(os.path.join(demo.data_dir(), "caption.validation.jsonl"), encoding="utf-8") as f:
            captions = {(r["language"], r["captions"][0]) for r in map(json.loads, f)}
        assert {(ex["language"].decode(), ex["targets_pretokenized"].decode()) for ex in examples} <= captions
        arabic = [ex for ex in examples if ex["language"] == b"ar"]
        assert arabic and all(ex["inputs_pretokenized"] == b"caption ar" for ex in arabic)


def test_demo_validation_images_are_not_training_images():
    root = demo.data_dir()
    def images(split):
        with open(os.path.join(root, f"caption.{split}.jsonl"), encoding="utf-8") as f:
            return {json.loads(line)["image"] for line in f}
    assert not images("train") & images("validation")
    def phrases(split):
        with open(os.path.join(root, f"translation.{split}.jsonl"), encoding="utf-8") as f:
            return {(r["language"], r["text"]) for r in map(json.loads, f)}
    assert not phrases("train") & phrases("validation")
