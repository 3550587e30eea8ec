"""palimix.tasks.add_task: every kind from real files through the real pipeline."""

import json

import numpy as np
import pytest
import seqio
from PIL import Image

from palimix import sources
from palimix.errors import UnknownLanguageError, UsageError
from palimix.tasks import add_task, remove, task_info

LENGTHS = {"inputs": 64, "targets": 32, "image": 16}


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """A JSON Lines file in two languages with real PNG files (and one broken image)."""
    root = tmp_path_factory.mktemp("records")
    (root / "img").mkdir()
    lines = []
    for i in range(4):
        Image.fromarray(np.full((20, 24, 3), 60 * i, np.uint8)).save(root / "img" / f"{i}.png")
        lines.append({"id": f"r{i}", "image": f"{i}.png", "language": "de" if i % 2 else "en",
                      "captions": [f"caption {i}", f"second {i}"], "question": f"what is {i}?",
                      "answers": ["x", "y", "y"], "text": f"word{i} alpha beta gamma delta", "label": f"class{i % 2}"})
    (root / "img" / "broken.png").write_bytes(b"not a png")
    lines.append({"id": "bad", "image": "broken.png", "language": "en", "captions": ["never"], "question": "q",
                  "answers": ["a"], "text": "t u v", "label": "c"})
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return sources.JsonLines(str(path), str(root / "img"))


@pytest.fixture(autouse=True)
def cleanup():
    yield
    for name in ("tt_caption", "tt_vqa", "tt_ocr", "tt_cls", "tt_translation", "tt_span", "tt_prefix", "tt_dup"):
        remove(name)


def _examples(task_name, split="train", seed=0):
    task = seqio.get_mixture_or_task(task_name)
    ds = task.get_dataset(LENGTHS, split=split, shuffle=False, seed=seed)
    return list(ds.as_numpy_iterator())


def _check_contract(ex, kind, language, has_image):
    assert ex["image"].shape == (16, 16, 3) and ex["image"].dtype == np.float32
    assert -1.0 <= ex["image"].min() <= ex["image"].max() <= 1.0
    assert ex["has_image"] == has_image
    if not has_image:
        assert not ex["image"].any()
    assert ex["inputs"].dtype == np.int32 and ex["inputs"][-1] == 1  # EOS.
    assert ex["targets"][-1] == 1
    assert ex["kind"] == kind.encode() and ex["language"] == language.encode()
    assert ex["inputs_pretokenized"] and ex["targets_pretokenized"] and ex["id"]
    assert "image_pretokenized" not in ex and "image/encoded" not in ex


def test_caption_tasks_per_language_with_references(records):
    from palimix.preprocessors import image

    image.reset_dropped_image_counts()
    mixture = add_task("tt_caption", kind="caption", source=records, languages=["en", "de"], image_size=16, metrics=[])
    assert sorted(t.name for t in mixture.tasks) == ["tt_caption_de", "tt_caption_en"]
    assert task_info("tt_caption_de").kind == "caption"
    en = _examples("tt_caption_en")
    assert [ex["id"] for ex in en] == [b"r0", b"r2"]  # The broken image is dropped...
    assert image.num_dropped_images("tt_caption_en") == 1  # ... and counted.
    for ex in en:
        _check_contract(ex, "caption", "en", 1)
        assert ex["inputs_pretokenized"] == b"caption en"
        assert ex["targets_pretokenized"] in list(ex["references"])
    task = seqio.get_mixture_or_task("tt_caption_en")
    assert task.postprocess_fn(b"caption 0", example=en[0], is_target=True) == ["caption 0", "second 0"]
    assert task.postprocess_fn(" predicted ", example=en[0], is_target=False) == "predicted"


def test_every_kind_builds_its_prompt_and_target(records):
    add_task("tt_vqa", kind="vqa", source=records, languages=["de"], image_size=16, metrics=[])
    (vqa, _) = _examples("tt_vqa_de")
    _check_contract(vqa, "vqa", "de", 1)
    assert vqa["inputs_pretokenized"] == b"answer de what is 1?"
    assert vqa["targets_pretokenized"] == b"y"  # The most frequent answer.
    assert list(vqa["references"]) == [b"x", b"y", b"y"]

    add_task("tt_ocr", kind="ocr", source=records, languages="de", image_size=16, metrics=[])
    ocr = _examples("tt_ocr_de")[0]
    assert (ocr["inputs_pretokenized"], ocr["targets_pretokenized"]) == (b"ocr", b"word1 alpha beta gamma delta")

    add_task("tt_cls", kind="classification", source=records, languages=["en"], image_size=16, metrics=[],
             classes={"en": ["class0", "class1"]})
    cls = _examples("tt_cls_en")[0]
    assert cls["inputs_pretokenized"] == b"classify en class0 ; class1"
    assert cls["targets_pretokenized"] == b"class0"

    add_task("tt_translation", kind="translation", source=records, languages=["de"], image_size=16, metrics=[],
             source_language="en")
    tr = _examples("tt_translation_de")[0]
    _check_contract(tr, "translation", "de", 0)
    assert tr["inputs_pretokenized"] == b"translate en de: word1 alpha beta gamma delta"

    add_task("tt_span", kind="span_corruption", source=records, languages=["de"], image_size=16, metrics=[])
    span = _examples("tt_span_de")[0]
    _check_contract(span, "span_corruption", "de", 0)
    assert span["inputs_pretokenized"].startswith(b"fill de ") and b"<extra_id_0>" in span["inputs_pretokenized"]
    assert span["targets"][0] == seqio.get_mixture_or_task("tt_span_de").output_features["targets"].vocabulary.vocab_size - 1

    add_task("tt_prefix", kind="prefix_lm", source=records, languages=["de"], image_size=16, metrics=[],
             max_target_units=2)
    prefix = _examples("tt_prefix_de")[0]
    _check_contract(prefix, "prefix_lm", "de", 1)  # prefix LM keeps the image when there is one.
    assert prefix["inputs_pretokenized"].startswith(b"continue de word1")
    assert 1 <= len(prefix["targets_pretokenized"].split()) <= 2


def test_standard_metrics_and_determinism(records):
    add_task("tt_caption", kind="caption", source=records, languages=["en"], image_size=16)
    task = seqio.get_mixture_or_task("tt_caption_en")
    assert [fn.__name__ for fn in task.metric_fns][:1] == ["cider_en"]
    first = [ex["targets_pretokenized"] for ex in _examples("tt_caption_en", seed=5)]
    second = [ex["targets_pretokenized"] for ex in _examples("tt_caption_en", seed=5)]
    assert first == second


def test_examples_are_trimmed_to_the_sequence_length_with_eos(records):
    """The task trims in its own preprocessor (seqio's trimming map is left out)."""
    add_task("tt_vqa", kind="vqa", source=records, languages=["en"], image_size=16, metrics=[])
    task = seqio.get_mixture_or_task("tt_vqa_en")
    examples = list(task.get_dataset({"inputs": 3, "targets": 2, "image": 16}, split="train", shuffle=False).as_numpy_iterator())
    assert examples
    for ex in examples:
        assert len(ex["inputs"]) == 3 and len(ex["targets"]) <= 2  # "answer en what is 0?" is longer.
        assert ex["inputs"][-1] == 1 and ex["targets"][-1] == 1


def test_bad_registrations_are_clear_errors(records):
    with pytest.raises(UnknownLanguageError, match="xx-nope"):
        add_task("tt_caption", kind="caption", source=records, languages=["en", "xx-nope"], metrics=[])
    assert "tt_caption_en" not in seqio.TaskRegistry.names()  # Nothing half-registered.
    with pytest.raises(UsageError, match="Unknown task kind"):
        add_task("tt_caption", kind="captions", source=records, languages=["en"], metrics=[])
    with pytest.raises(UsageError, match="source_language"):
        add_task("tt_translation", kind="translation", source=records, languages=["de"], metrics=[])
    add_task("tt_dup", kind="ocr", source=records, languages=["en"], image_size=16, metrics=[])
    with pytest.raises(UsageError, match="already registered"):
        add_task("tt_dup", kind="ocr", source=records, languages=["en"], image_size=16, metrics=[])
    mixture = add_task("tt_dup", kind="caption", source=records, languages=["de"], image_size=16, metrics=[],
                       overwrite=True)
    assert [t.name for t in mixture.tasks] == ["tt_dup_de"]
    assert "tt_dup_en" not in seqio.TaskRegistry.names()
    only_labels = sources.JsonLines(records.path, records.image_dir, fields={"label": "label"})
    with pytest.raises(UsageError, match="need the record fields"):
        add_task("tt_vqa", kind="vqa", source=only_labels, languages=["en"], metrics=[])


def test_multilingual_task_prompts_each_example_in_its_language(records):
    mixture = add_task("tt_span", kind="span_corruption", source=records, languages=["de", "en"], image_size=16,
                       metrics=[], per_language=False)
    assert [t.name for t in mixture.tasks] == ["tt_span_mul"]
    assert task_info("tt_span_mul").languages == ("de", "en")
    examples = _examples("tt_span_mul")
    assert {ex["language"] for ex in examples} == {b"de", b"en"}
    for ex in examples:
        assert ex["inputs_pretokenized"].startswith(b"fill " + ex["language"] + b" ")
    add_task("tt_cls", kind="classification", source=records, languages=["de"], image_size=16, metrics=[],
             per_language=False, classes=["a", "b"])
    assert all(ex["language"] == b"de" for ex in _examples("tt_cls_mul"))  # Other languages left out.
