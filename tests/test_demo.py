"""The bundled demo: its data files, its tasks, and that its examples fit the
recommended lengths."""

import json
import os

import numpy as np
import pytest
import seqio

import palimix.tasks
from palimix import languages
from palimix.models import configs
from palimix.tasks import demo


def test_demo_data_is_small_and_complete():
    root = demo.data_dir()
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)
    assert total < 20e6
    info = demo.build_info()
    for kind in ("caption", "vqa", "classification", "detection", "ocr", "translation", "text", "text_to_image"):
        for split in demo.SPLITS:
            with open(os.path.join(root, f"{kind}.{split}.jsonl"), encoding="utf-8") as f:
                assert sum(1 for _ in f) == info["counts"][f"{kind}.{split}"] > 0
    assert len(info["word_table_languages"]) >= 20
    tokenizer = os.path.join(root, demo.TOKENIZER_DIR)
    assert sum(os.path.getsize(os.path.join(tokenizer, f)) for f in os.listdir(tokenizer)) < 400e3
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
    assert {i.kind for i in infos} == {"caption", "vqa", "ocr", "classification", "detection", "translation",
                                       "span_corruption", "prefix_lm", "text_to_image"}
    assert len({code for i in infos for code in i.languages}) >= 100
    assert {i.image_size for i in infos} == {demo.IMAGE_SIZE}
    assert set(mixture.splits) == {"train", "validation"}


@pytest.mark.parametrize("task", ["palimix_demo_caption_mul", "palimix_demo_ocr_mul", "palimix_demo_vqa_mul",
                                  "palimix_demo_detection_mul", "palimix_demo_span_corruption_mul",
                                  "palimix_demo_text_to_image_mul"])
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
        if task == "palimix_demo_text_to_image_mul":
            assert not ex["has_image"]  # the prompt alone
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


def _texts(split):
    with open(os.path.join(demo.data_dir(), f"text.{split}.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _build_script():
    """scripts/build_demo_data.py as a module (scripts/ is not a package)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "build_demo_data.py")
    spec = importlib.util.spec_from_file_location("build_demo_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_text_validation_is_held_out():
    """No validation text of span corruption / prefix LM (UDHR chunk or scene sentence)
    is a training text of its language; the scene sentences' words are all seen in
    training, so a validation sentence is a new combination of known words."""
    train, validation = _texts("train"), _texts("validation")
    seen = {(r["language"], r["text"]) for r in train}
    assert not {(r["language"], r["text"]) for r in validation} & seen
    spaced = {code for code in demo.words() if languages.get(code).segmentation == "space"}
    train_words = {}
    for r in train:
        train_words.setdefault(r["language"], set()).update(r["text"].split())
    scene = [r for r in validation if "-scene-" in r["id"]]
    assert len(scene) >= 4 * len(demo.words())
    for r in scene:
        if r["language"] in spaced:
            assert set(r["text"].split()) <= train_words[r["language"]], r


def test_demo_text_languages_have_enough_text():
    """Every text language has training and validation text; the word-table languages
    have scene sentences, the text the tiny model can learn in the demo's budget."""
    info = demo.build_info()
    counts = {}
    for split in demo.SPLITS:
        for r in _texts(split):
            scene = "-scene-" in r["id"]
            counts[(r["language"], split, scene)] = counts.get((r["language"], split, scene), 0) + 1
    assert len(info["text_languages"]) >= 100
    for lang in info["text_languages"]:
        assert counts.get((lang, "train", False), 0) + counts.get((lang, "train", True), 0) >= 2, lang
        assert counts.get((lang, "validation", False), 0) + counts.get((lang, "validation", True), 0) >= 2, lang
    for lang in demo.words():
        assert counts.get((lang, "train", True), 0) >= 50, lang
        assert counts.get((lang, "validation", True), 0) >= 8, lang


def test_demo_scene_text_is_what_the_build_script_makes():
    """The scene sentences in text.*.jsonl are the seeded output of the build script
    (generated, never hand-edited; the same every run)."""
    import babel

    info = demo.build_info()
    if babel.__version__ != info["versions"]["babel"]:
        pytest.skip(f"babel {babel.__version__} here, {info['versions']['babel']} built the data (CLDR list patterns)")
    script = _build_script()
    texts = {split: _texts(split) for split in demo.SPLITS}
    for lang, words in demo.words().items():
        built = script.scene_texts(lang, words)
        assert built == script.scene_texts(lang, words)
        for split in demo.SPLITS:
            stored = [r["text"] for r in texts[split] if r["language"] == lang and "-scene-" in r["id"]]
            assert stored == built[split], (lang, split)


def _records(stem, split):
    with open(os.path.join(demo.data_dir(), f"{stem}.{split}.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _drawn_box(path):
    """[y_min, x_min, y_max, x_max] in 0..1 of the pixels that differ from the scene's
    background (its corner pixel): where the shape is."""
    from PIL import Image

    pixels = np.asarray(Image.open(path).convert("RGB"), np.int32)
    shape = np.abs(pixels - pixels[0, 0]).sum(-1) > 60
    rows, cols = np.nonzero(shape)
    side = pixels.shape[0]
    return [rows.min() / side, cols.min() / side, (rows.max() + 1) / side, (cols.max() + 1) / side]


@pytest.mark.parametrize("split", demo.SPLITS)
def test_demo_detection_boxes_are_where_the_shapes_are(split):
    """Each detection record's box covers its scene's shape (found from the pixels) and
    its label is the shape's word in the record's language, as classification says."""
    from palimix import boxes

    table = demo.words()
    shapes = {lang: {words[s]: s for s in ("circle", "square", "triangle")} for lang, words in table.items()}
    records = _records("detection", split)
    assert len({r["language"] for r in records}) == len(table)
    shape_of = {r["image"]: shapes[r["language"]][r["label"]] for r in _records("classification", split)}
    checked = 0
    for r in records:
        (box,), (label,) = r["boxes"], r["labels"]
        shape = shapes[r["language"]][label]
        assert shape_of.get(r["image"], shape) == shape, r
        checked += r["image"] in shape_of
        assert boxes.iou(box, _drawn_box(os.path.join(demo.data_dir(), r["image"]))) > 0.8, r
    assert checked >= 50  # scenes that both files use agree on the shape


def test_demo_detection_targets_are_loc_tokens_of_the_box():
    """The detection task's target is the record's box as four single <loc> ids and the
    label; the demo vocabulary (every demo task's) has the <loc> tokens."""
    from palimix import boxes, vocab

    task = seqio.get_mixture_or_task("palimix_demo_detection_mul")
    vocabulary = task.output_features["targets"].vocabulary
    assert configs.PALIMIX_LOC_VOCAB_SIZE < vocabulary.vocab_size <= configs.PALIMIX_DEMO_VOCAB_SIZE
    for other in seqio.get_mixture_or_task(demo.MIXTURE).tasks:
        assert other.output_features["inputs"].vocabulary == vocabulary, other.name
    records = {r["id"]: r for r in _records("detection", "validation")}
    ds = task.get_dataset(None, split="validation", shuffle=False, trim_output_features=False)
    examples = list(ds.as_numpy_iterator())
    assert len(examples) == len(records)
    first_loc = vocabulary.encode(vocab.TOKENSETS["loc"][0])[0]
    for ex in examples[:50]:
        record = records[ex["id"].decode()]
        assert ex["inputs_pretokenized"].decode() == f"detect {record['labels'][0]}"
        assert ex["targets_pretokenized"].decode() == boxes.to_loc_text(record["boxes"], record["labels"])
        bins = [round(v * 1023) for v in record["boxes"][0]]
        assert list(ex["targets"][:4]) == [first_loc + b for b in bins]


def test_demo_scenes_and_boxes_are_what_the_build_script_draws():
    """A few scenes redrawn by the build script: the same PNG bytes and the same box as
    stored (generated data, never hand-edited)."""
    import PIL

    info = demo.build_info()
    if PIL.__version__ != info["versions"]["pillow"]:
        pytest.skip(f"Pillow {PIL.__version__} here, {info['versions']['pillow']} drew the scenes")
    script = _build_script()
    combos = [(c, s, p) for c in script.COLORS for s in script.SHAPES for p in script.POSITIONS]
    per_combo = script.SCENES_PER_COMBO["validation"]
    stored = {r["image"]: r["boxes"][0] for r in _records("detection", "validation")}
    for path, box in sorted(stored.items())[:6]:
        index = int(os.path.basename(path).split(".")[0])
        image, drawn = script.draw_scene(*combos[index // per_combo], script.stable_rng("validation", index))
        assert drawn == box
        with open(os.path.join(demo.data_dir(), path), "rb") as f:
            assert script.encode(image, "PNG") == f.read()


def test_demo_settings_take_the_recipe_and_explicit_values():
    from palimix.errors import UsageError
    from palimix.runner.demo import RECIPES, DemoSettings

    assert set(RECIPES) == {"tiny", "tiny_decoder", "mblip"}
    for name in ("tiny", "tiny_decoder"):
        assert configs.get(name).vocab_size >= demo.vocabulary().vocab_size  # the demo's <loc>/<img> vocabulary fits
        assert [s.model for s in RECIPES[name].stages] == [name]
    assert DemoSettings(recipe_name="tiny_decoder").recipe() == RECIPES["tiny_decoder"]
    mine = DemoSettings(recipe_name="tiny_decoder", steps=7, learning_rate=0.5).recipe().final
    assert (mine.steps, mine.learning_rate, mine.batch_size) == (7, 0.5, RECIPES["tiny_decoder"].final.batch_size)
    # Explicit values go to every stage of a staged recipe.
    assert {s.steps for s in DemoSettings(recipe_name="mblip", steps=3).recipe().stages} == {3}
    with pytest.raises(UsageError, match="tiny_decoder"):
        DemoSettings(recipe_name="tiny_decodr").recipe()
    assert DemoSettings().run_dir() == "palimix_runs/demo"
    assert DemoSettings(recipe_name="mblip").run_dir() == "palimix_runs/demo_mblip"


def test_demo_flags_recipe_and_its_alias_model():
    from palimix import cli

    parser = cli.build_parser()
    assert parser.parse_args(["demo", "--recipe", "mblip"]).recipe == "mblip"
    assert parser.parse_args(["demo", "--model", "tiny_decoder"]).recipe == "tiny_decoder"
    assert parser.parse_args(["demo"]).recipe == "tiny"


def test_demo_text_to_image_targets_are_the_records_codes_as_single_ids():
    """The text_to_image task: prompt "generate <lang> <caption with position>", target
    `<img>` and the record's 16 codes, each one id of the demo vocabulary, then EOS
    (18 of the 32 target tokens)."""
    from palimix import image_codes, vocab

    task = seqio.get_mixture_or_task("palimix_demo_text_to_image_mul")
    vocabulary = task.output_features["targets"].vocabulary
    records = demo.text_to_image_records("validation")
    examples = list(task.get_dataset(None, split="validation", shuffle=False, trim_output_features=False)
                    .as_numpy_iterator())
    assert len(examples) == len(records) == 4 * len(demo.words())
    first_code = vocabulary.encode(vocab.TOKENSETS["img"][1])[0]
    for ex in examples[:30]:
        record = records[ex["id"].decode()]
        assert ex["inputs_pretokenized"].decode() == f"generate {record['language']} {record['captions'][0]}"
        assert ex["targets_pretokenized"].decode() == image_codes.to_code_text(record["codes"])
        assert list(ex["targets"][1:-1]) == [first_code + c for c in record["codes"]]
        assert len(ex["targets"]) == 18 and ex["targets"][-1] == vocabulary.eos_id


def test_demo_text_to_image_kind_is_scored_by_faithfulness():
    """The demo reports faithfulness first for text_to_image; its baseline is the task's
    most frequent target (one scene for every prompt)."""
    from palimix import kinds
    from palimix.runner.demo import demo_primary_metric

    assert kinds.get("text_to_image").baseline == kinds.MOST_FREQUENT_OF_TASK
    metrics = {"code_accuracy": 1.0, "faithfulness": 2.0, "faithfulness_color": 3.0}
    assert demo_primary_metric("text_to_image", metrics) == "faithfulness"
    assert demo_primary_metric("text_to_image", {"code_accuracy": 1.0}) == "code_accuracy"
    assert demo_primary_metric("vqa", {"vqa_accuracy": 1.0}) == "vqa_accuracy"


def test_demo_tokenizer_training_is_deterministic():
    """The build script's tokenizer training, a few steps on a few scenes, twice: the
    same bytes (the shipped tokenizer is rebuilt bit for bit on the same versions), and
    the shipped one has the script's config and training settings."""
    from PIL import Image

    script = _build_script()
    paths = sorted(r["image"] for r in demo.text_to_image_records("train").values())[:8]
    pixels = []
    for path in paths:
        with Image.open(os.path.join(demo.data_dir(), path)) as picture:
            pixels.append(np.asarray(picture.convert("RGB"), np.float32) / 127.5 - 1.0)
    images = np.stack(pixels)

    def files():
        params, result = script.train_tokenizer(images[:6], images[6:], steps=3, batch_size=4, learning_rate=3e-3,
                                                seed=0)
        return script.tokenizer_files(params, result)

    first, second = files(), files()
    assert first == second
    with open(os.path.join(demo.data_dir(), "tokenizer", "tokenizer.json"), encoding="utf-8") as f:
        shipped = json.load(f)
    assert shipped["config"] == json.loads(first["tokenizer/tokenizer.json"])["config"]
    assert {k: shipped[k] for k in script.TOKENIZER_TRAINING} == script.TOKENIZER_TRAINING
    assert shipped["psnr"] > shipped["psnr_mean_image"]
    assert set(script.TOKENIZER_LIBRARIES) <= set(demo.build_info()["versions"])
