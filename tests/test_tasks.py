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
    for name in ("tt_caption", "tt_vqa", "tt_ocr", "tt_cls", "tt_translation", "tt_span", "tt_prefix", "tt_dup",
                 "tt_bad_text", "tt_bad_source"):
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


# --- errors that are not bad images stop the pipeline ----------------------------------


def _png_bytes(value):
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.full((12, 10, 3), value, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _records_source(make_dataset):
    return seqio.FunctionDataSource(lambda split, shuffle_files, seed=None: make_dataset(), splits=["train"])


def test_text_that_breaks_prompt_building_stops_naming_task_and_example():
    """Text in another encoding (Latin-1 bytes) stops the pipeline with an error that
    names the task and the example id; it is not dropped as a bad image."""
    import tensorflow as tf

    from palimix.preprocessors import image

    image.reset_dropped_image_counts()

    def records():
        return tf.data.Dataset.from_tensor_slices({
            "id": ["ok", "latin1"], "language": ["en", "en"],
            "image/encoded": np.array([_png_bytes(10), _png_bytes(20)], dtype=object),
            "image/path": ["a.png", "b.png"],
            "question": ["what colour?", "welche Größe?".encode("latin-1")],
            "answers": tf.ragged.constant([["red"], ["big"]], dtype=tf.string),
        })

    add_task("tt_bad_text", kind="vqa", source=_records_source(records), languages=["en"], image_size=16, metrics=[])
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"Task tt_bad_text_en: the example with id latin1 has text that is not valid "
                             r"UTF-8 in its field question"):
        _examples("tt_bad_text_en")
    assert image.dropped_image_counts() == {}


def test_an_error_of_the_source_is_not_counted_as_a_bad_image():
    import tensorflow as tf

    from palimix.preprocessors import image

    image.reset_dropped_image_counts()

    def generate():
        yield {"id": "r0", "language": "en", "image/encoded": _png_bytes(10), "image/path": "a.png", "text": "abc"}
        raise ValueError("record r1 is unreadable")

    def records():
        spec = {k: tf.TensorSpec([], tf.string) for k in ("id", "language", "image/encoded", "image/path", "text")}
        return tf.data.Dataset.from_generator(generate, output_signature=spec)

    add_task("tt_bad_source", kind="ocr", source=_records_source(records), languages=["en"], image_size=16, metrics=[])
    with pytest.raises(tf.errors.InvalidArgumentError, match="record r1 is unreadable"):
        _examples("tt_bad_source_en")
    assert image.dropped_image_counts() == {}


# --- registration is all-or-nothing ------------------------------------------------------


def _group_state(name):
    names = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
    return sorted(n for n in names if n == name or n.startswith(name + "_"))


def test_a_source_failing_on_a_later_language_registers_nothing(records):
    by_language = {"en": records.for_language("en"), "de": records.for_language("de")}
    with pytest.raises(UsageError, match="no entry for language 'fr'"):
        add_task("tt_caption", kind="caption", source=by_language, languages=["en", "de", "fr"], image_size=16)
    assert _group_state("tt_caption") == [] and task_info("tt_caption_en") is None


def test_a_failing_overwrite_keeps_the_group_it_would_replace(records):
    add_task("tt_dup", kind="ocr", source=records, languages=["en"], image_size=16, metrics=[])
    before = _group_state("tt_dup")
    old_task = seqio.get_mixture_or_task("tt_dup_en")
    # Fails while the tasks are planned: a language the source dict lacks.
    with pytest.raises(UsageError, match="no entry for language 'de'"):
        add_task("tt_dup", kind="caption", source={"en": records}, languages=["en", "de"], image_size=16,
                 overwrite=True)
    # Fails after the new tasks are built, in the mixture: a rate for a task it does not have.
    with pytest.raises(UsageError, match="rate dict"):
        add_task("tt_dup", kind="caption", source=records, languages=["de"], image_size=16, overwrite=True,
                 rate={"tt_dup_fr": 1.0})
    assert _group_state("tt_dup") == before == ["tt_dup", "tt_dup_en"]
    assert seqio.get_mixture_or_task("tt_dup_en") is old_task and task_info("tt_dup_en").kind == "ocr"
    assert [t.name for t in seqio.get_mixture_or_task("tt_dup").tasks] == ["tt_dup_en"]
    assert task_info("tt_dup_de") is None


def test_unknown_kind_options_are_refused(records):
    with pytest.raises(UsageError, match=r"\['noise_density'\] is not an option of caption tasks"):
        add_task("tt_caption", kind="caption", source=records, languages=["en"], noise_density=0.5)
    assert _group_state("tt_caption") == []


# --- a multilingual task reports each language ------------------------------------------


def test_multilingual_task_metrics_are_per_language_through_seqio_evaluator(records):
    """seqio.Evaluator (what t5x.eval runs) on one task over two languages: keys per
    language, each scored with that language's metrics, and their macro average."""
    from palimix import kinds
    from palimix.metrics import per_language
    from palimix.models.feature_converter import PaliFeatureConverter
    from palimix.runner import eval as eval_lib

    add_task("tt_caption", kind="caption", source=records, languages=["en", "de"], image_size=16, per_language=False)
    task = seqio.get_mixture_or_task("tt_caption_mul")
    evaluator = seqio.Evaluator("tt_caption_mul", feature_converter=PaliFeatureConverter(pack=False), eval_split="train",
                                sequence_length=LENGTHS, use_memory_cache=False)
    examples = list(evaluator.cached_task_datasets["tt_caption_mul"].as_numpy_iterator())
    vocabulary = task.output_features["targets"].vocabulary
    answers = {"r0": "caption 0", "r1": "something else", "r2": "caption 2", "r3": "caption 3"}

    def predict(dataset, model_feature_shapes=None):  # Fixed-length rows, as t5x returns them.
        rows = [vocabulary.encode(answers[ex["id"].decode()]) + [vocabulary.eos_id] for ex in examples]
        return [(i, row + [0] * (LENGTHS["targets"] - len(row))) for i, row in zip(range(len(list(dataset))), rows)]

    metrics, _ = evaluator.evaluate(compute_metrics=True, predict_fn=predict, score_fn=None)
    values = {k: getattr(v, "value", v) for k, v in metrics.result()["tt_caption_mul"].items()}
    assert {"cider/en", "cider/de", "cider/macro", "bleu4/de", "rouge_l/en", "examples/en"} <= set(values)
    assert values["examples/en"] == 2 and values["examples/de"] == 2
    de = [ex for ex in examples if ex["language"] == b"de"]
    expected = kinds.get("caption").metric_fns("de")[0]([[r.decode() for r in ex["references"]] for ex in de],
                                                       [answers[ex["id"].decode()] for ex in de])["cider"]
    assert values["cider/de"] == pytest.approx(expected)
    assert values["cider/macro"] == pytest.approx((values["cider/en"] + values["cider/de"]) / 2)
    assert values["cider/en"] > values["cider/de"]
    # palimix eval's table reads the same keys: one row per language.
    rows = eval_lib._task_entries("tt_caption_mul", "en", "caption", 4, values)
    assert sorted(rows) == ["tt_caption_mul:de", "tt_caption_mul:en"]
    assert rows["tt_caption_mul:de"]["metrics"]["cider"] == values["cider/de"]
    assert per_language.split_keys({"cider": 1.0}) == {}
