"""mBLIP's task files and its benchmarks (MaXM, XVNLI, MaRVL, xFlickrCO), from files
written here in the public layouts, with real images, through real tasks."""

import json

import numpy as np
import pytest
import seqio
from PIL import Image

from palimix import sources
from palimix.errors import UsageError
from palimix.tasks import add_task, remove

LENGTHS = {"inputs": 64, "targets": 32, "image": 16}
GROUPS = ("tm_mix", "tm_caption", "tm_eval")


@pytest.fixture(autouse=True)
def cleanup():
    yield
    for name in GROUPS:
        remove(name)


def _image(path, value, size=(12, 14)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path)


def _examples(name):
    return list(seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split="train", shuffle=False).as_numpy_iterator())


# --- mBLIP task files -----------------------------------------------------------------------

# Records as mBLIP's data/*/generate_train.py write them (json.dump of a list).
MIX = [
    {"context": "Caption the image in German.", "label": "Ein Hund im Gras.", "image_id": "COCO_train2014_000000000009.jpg"},
    {"context": "Wie viele Katzen? Short English answer:", "label": "2", "image_id": "COCO_train2014_000000000025.jpg"},
    {"context": "Given the image, generate a question in French whose answer is: rouge. Question:",
     "label": "De quelle couleur est le bus ?", "image_id": "COCO_train2014_000000000009.jpg"},
]


@pytest.fixture(scope="module")
def mblip_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mblip")
    for i, entry in enumerate(MIX):
        _image(root / "images" / entry["image_id"], 40 * i)
    (root / "task_mix_v2_mt.json").write_text(json.dumps(MIX, ensure_ascii=False, indent=2), encoding="utf-8")
    return root


def test_the_released_mix_trains_as_is_with_the_verbatim_style(mblip_dir):
    source = sources.MblipTaskFile(str(mblip_dir / "task_mix_v2_mt.json"), str(mblip_dir / "images"), language="en")
    assert source.fields == ("question", "answers")
    assert source.num_input_examples("train") == 3
    add_task("tm_mix", kind="vqa", source=source, languages=["en"], prompt_style="verbatim", image_size=16, metrics=[])
    examples = _examples("tm_mix_en")
    assert [(e["id"].decode(), e["inputs_pretokenized"].decode(), e["targets_pretokenized"].decode()) for e in examples] == [
        (str(i), entry["context"], entry["label"]) for i, entry in enumerate(MIX)]
    assert all(e["has_image"] == 1 for e in examples)
    # Records 0 and 2 name the same file, record 1 another: decoded from the files.
    assert np.array_equal(examples[0]["image"], examples[2]["image"])
    assert not np.array_equal(examples[0]["image"], examples[1]["image"])


def test_translated_json_lines_with_languages_and_english_originals(mblip_dir):
    lines = [
        {"id": "7", "image_id": MIX[0]["image_id"], "context": "Décris l'image.", "label": "Un chien.", "language": "fr",
         "english_label": "A dog."},
        {"id": "8", "image_id": MIX[1]["image_id"], "context": "Beschreibe das Bild.", "label": "Zwei Katzen.",
         "language": "de", "english_label": "Two cats."},
    ]
    path = mblip_dir / "coco_mt.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    source = sources.MblipTaskFile(str(path), str(mblip_dir / "images"), kind="caption")
    assert source.fields == ("captions", "english")
    assert source.languages() == ["de", "fr"]
    records = source.records("train")
    assert records[0]["captions"] == ["Un chien."] and records[0]["english"] == ["A dog."] and records[0]["id"] == "7"
    add_task("tm_caption", kind="caption", source=source, languages=["de", "fr"], prompt_style="instruct",
             per_language=False, image_size=16, metrics=[], english_answer_share=1.0)
    targets = sorted(e["targets_pretokenized"].decode() for e in _examples("tm_caption_mul"))
    assert targets == ["A dog.", "Two cats."]


def test_evaluation_files_take_text_label_and_a_context_template(mblip_dir):
    # mBLIP's data/xgqa and data/maxm evaluation records: empty label, references in text_label.
    records = [{"context": "How many dogs?", "label": "", "image_id": "COCO_train2014_000000000009", "text_label": ["2", "two"]}]
    path = mblip_dir / "eval.json"
    path.write_text(json.dumps(records))
    source = sources.MblipTaskFile(str(path), str(mblip_dir / "images"), language="en",
                                   context_template="Question: {} Short answer in English:", image_extension=".jpg")
    [record] = source.records("train")
    assert record["question"] == "Question: How many dogs? Short answer in English:"
    assert record["answers"] == ["2", "two"]
    assert record["image/path"].endswith("COCO_train2014_000000000009.jpg")


@pytest.mark.parametrize("records, message", [
    ({"context": "x"}, "a JSON list of records, not a JSON dict"),
    (["text"], "record 0: expected an object"),
    ([{"context": "x", "label": "y"}], "record 0: no image_id"),
    ([{"context": 3, "label": "y", "image_id": "a.jpg"}], "record 0: 'context' must be text"),
    ([{"context": "x", "image_id": "a.jpg"}], "record 0: 'label' must be text"),
    ([{"context": "x", "label": "", "image_id": "a.jpg", "text_label": [1]}], "'text_label' must be text"),
    ([{"context": "x", "label": "", "left_image": "a.jpg", "right_image": "b.jpg"}], "palimix.sources.Marvl"),
])
def test_malformed_task_files_are_clear_errors(tmp_path, records, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(records))
    with pytest.raises(UsageError, match=message):
        sources.MblipTaskFile(str(path), str(tmp_path), language="en").records("train")


def test_a_record_without_any_target_is_left_out_by_the_task(mblip_dir):
    path = mblip_dir / "partly_empty.json"
    path.write_text(json.dumps([{**MIX[0], "label": ""}, MIX[1]]))
    source = sources.MblipTaskFile(str(path), str(mblip_dir / "images"), language="en")
    assert [r["answers"] for r in source.records("train")] == [[], [MIX[1]["label"]]]
    add_task("tm_eval", kind="vqa", source=source, languages=["en"], prompt_style="verbatim", image_size=16, metrics=[])
    assert [e["targets_pretokenized"].decode() for e in _examples("tm_eval_en")] == [MIX[1]["label"]]


def test_a_file_without_languages_needs_language(mblip_dir):
    source = sources.MblipTaskFile(str(mblip_dir / "task_mix_v2_mt.json"), str(mblip_dir / "images"))
    with pytest.raises(UsageError, match="no 'language' key .* pass language="):
        source.records("train")
    with pytest.raises(UsageError, match="kind 'vqa'"):
        sources.MblipTaskFile(str(mblip_dir / "task_mix_v2_mt.json"), str(mblip_dir / "images"), kind="ocr")


# --- mBLIP's benchmarks, in IGLUE's and MaXM's layouts ------------------------------------

BENCHMARK_GROUPS = ("xflickrco", "xvnli", "marvl", "maxm")
RED, BLUE = (255, 0, 0), (0, 0, 255)
NFKD_CONCEPT = "12-café"  # Stored decomposed (NFKD) on disk, written composed (NFC) in the annotations.


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def _colour(path, rgb, size=(20, 20)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.tile(np.array(rgb, np.uint8), (*size, 1))).save(path)


@pytest.fixture(scope="module")
def benchmark_dir(tmp_path_factory):
    import unicodedata

    root = tmp_path_factory.mktemp("mblip_benchmarks")
    for name, value in (("1007129816", 10), ("759822302", 20), ("2245916742", 30)):
        _image(root / "flickr30k" / "images" / f"{name}.jpg", value)
    _image(root / "coco" / "val2014" / "COCO_val2014_000000391895.jpg", 40)
    # xFlickrCO (IGLUE datasets/xFlickrCO/annotations/<lang>/test.jsonl): COCO ids are numbers.
    for language, words in (("de", ["Ein Mann.", "Ein Hund."]), ("en", ["A man.", "A dog."])):
        _jsonl(root / "xflickrco" / "annotations" / language / "test.jsonl", [
            {"sentences": [words[0]], "id": "1007129816", "img_path": "1007129816.jpg"},
            {"sentences": [words[1]], "id": 391895, "img_path": "COCO_val2014_000000391895.jpg"}])
    # XVNLI (datasets/XVNLI/annotations/<lang>/test.jsonl), with one pair without a gold label.
    for language, hypotheses in (("fr", ["Il porte le journal sur sa tête.", "Il lit le journal.", "Il est juif."]),
                                 ("en", ["He wears the paper on his head.", "He reads the paper.", "He is Jewish."])):
        _jsonl(root / "xvnli" / "annotations" / language / "test.jsonl", [
            {"gold_label": label, "sentence1": "premise", "sentence2": hypothesis, "captionID": "759822302.jpg#2",
             "pairID": f"759822302.jpg#2r1{label[0]}", "Flikr30kID": "759822302"}
            for label, hypothesis in zip(["contradiction", "entailment", "-"], hypotheses)])
    # MaRVL (datasets/marvl/zero_shot/annotations/marvl-<lang>.jsonl; images <lang>/images/<concept>/<file>).
    marvl_images = root / "marvl" / "images"
    _colour(marvl_images / "zh" / "images" / "82-铅笔" / "82-6.jpg", RED)
    _colour(marvl_images / "zh" / "images" / "82-铅笔" / "82-1.jpg", BLUE, size=(40, 30))
    _colour(marvl_images / "sw" / "images" / unicodedata.normalize("NFKD", NFKD_CONCEPT) / "1.jpg", BLUE)
    _colour(marvl_images / "sw" / "images" / unicodedata.normalize("NFKD", NFKD_CONCEPT) / "2.jpg", RED)
    info = {"annotator_info": {"annotator_id": "zh_01"}, "chapter": "Cognition"}
    _jsonl(root / "marvl" / "zero_shot" / "annotations" / "marvl-zh.jsonl", [
        {"concept": "82-铅笔", "language": "zh", "caption": "左圖有好幾隻鉛筆。", "left_img": "82-6.jpg",
         "right_img": "82-1.jpg", **info, "id": "zh-0", "label": False},
        {"concept": "82-铅笔", "language": "zh", "caption": "右圖只有一支鉛筆。", "left_img": "82-6.jpg",
         "right_img": "82-404.jpg", **info, "id": "zh-1", "label": True}])  # Its right image is missing.
    _jsonl(root / "marvl" / "zero_shot" / "annotations" / "marvl-sw.jsonl", [
        {"concept": NFKD_CONCEPT, "language": "sw", "caption": "Picha ya kulia ni nyekundu.", "left_img": "1.jpg",
         "right_img": "2.jpg", **info, "id": "sw-0", "label": True}])
    # MaXM (maxm_v1_release/maxm_v1_<lang>.json; images are XM3600's <image_id>.jpg).
    _image(root / "xm3600" / "images" / "000411001ff7dd4f.jpg", 50)
    for language, question, answers in (("fr", "Quelle couleur ?", ["rouge", "rouges"]), ("iw", "מה הצבע?", ["אדום"])):
        release = {"dataset": "maxm", "version": "v1", "split": language, "annotations": [
            {"image_id": "000411001ff7dd4f", "image_url": "https://example.org/x.jpg", "qa_pairs": [
                {"question_id": f"{language}-q1", "question": question, "answers": [a.upper() for a in answers],
                 "processed_answers": answers, "is_collection": False}]}]}
        path = root / "maxm" / "maxm_v1_release" / f"maxm_v1_{language}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(release, ensure_ascii=False), encoding="utf-8")
    return root


@pytest.fixture
def registered(benchmark_dir):
    from palimix.tasks import register_benchmarks

    names = register_benchmarks(str(benchmark_dir), image_size=16)
    yield names
    for name in BENCHMARK_GROUPS:
        remove(name)


def _test_examples(name):
    return list(seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split="test", shuffle=False).as_numpy_iterator())


def test_register_benchmarks_finds_mblips_benchmarks(registered):
    assert registered == list(BENCHMARK_GROUPS)
    tasks = set(seqio.TaskRegistry.names())
    assert {"xflickrco_de", "xflickrco_en", "xvnli_en", "xvnli_fr", "marvl_sw", "marvl_zh", "maxm_fr", "maxm_he"} <= tasks
    metrics = {name: [f.__name__ for f in seqio.get_mixture_or_task(name).metric_fns]
               for name in ("xvnli_fr", "marvl_zh", "maxm_he", "xflickrco_de")}
    assert metrics == {"xvnli_fr": ["accuracy"], "marvl_zh": ["accuracy"], "maxm_he": ["exact_match"],
                       "xflickrco_de": ["cider_de", "bleu_de", "rouge_l_de"]}


def test_xvnli_examples_ask_for_an_english_label(registered):
    examples = _test_examples("xvnli_fr")
    assert [(e["inputs_pretokenized"].decode(), e["targets_pretokenized"].decode()) for e in examples] == [
        ("answer en Il porte le journal sur sa tête.", "no"), ("answer en Il lit le journal.", "yes")]


def test_xvnli_reader_counts_skips_and_names_bad_lines(benchmark_dir, tmp_path):
    source = sources.Xvnli(str(benchmark_dir / "xvnli" / "annotations"), str(benchmark_dir / "flickr30k" / "images"))
    assert sorted(source.files) == ["en", "fr"] and len(source.records("test")) == 4
    assert source.skipped == {"en": 1, "fr": 1}
    assert source.records("test")[0]["image/path"].endswith("759822302.jpg")
    _jsonl(tmp_path / "ann" / "de" / "test.jsonl", [{"gold_label": "neutral", "sentence2": "x", "pairID": "p"}])
    with pytest.raises(UsageError, match=r"test.jsonl:1: not an XVNLI line \(missing 'Flikr30kID'\)"):
        sources.Xvnli(str(tmp_path / "ann"), str(tmp_path)).records("test")


def test_side_by_side_scales_to_the_smaller_height():
    import io

    def png(rgb, size):
        buffer = io.BytesIO()
        Image.fromarray(np.tile(np.array(rgb, np.uint8), (*size, 1))).save(buffer, "PNG")
        return buffer.getvalue()

    pair = Image.open(io.BytesIO(sources.side_by_side(png(RED, (20, 10)), png(BLUE, (40, 30)))))
    assert pair.size == (10 + 15, 20)  # Right image 30x40 scaled to height 20: 15 wide.
    pixels = np.asarray(pair).astype(int)
    assert np.abs(pixels[10, 3] - RED).max() < 10 and np.abs(pixels[10, 20] - BLUE).max() < 10


def test_marvl_examples_show_both_images_side_by_side(registered, caplog):
    import logging

    from palimix.preprocessors import image

    image.reset_dropped_image_counts()
    with caplog.at_level(logging.WARNING):
        examples = _test_examples("marvl_zh")
    # zh-1's right image is missing: that example is dropped and counted.
    assert [e["id"].decode() for e in examples] == ["zh-0"]
    assert image.dropped_image_counts()["marvl_zh"] and "82-404.jpg" in caplog.text
    [example] = examples
    assert example["inputs_pretokenized"].decode() == "answer en 左圖有好幾隻鉛筆。"
    assert example["targets_pretokenized"].decode() == "no"
    pixels = example["image"]  # 16x16 in [-1, 1]: red 20x20 | blue 30x40 scaled to 15x20.
    assert np.abs(pixels[8, 2] - (1, -1, -1)).max() < 0.1 and np.abs(pixels[8, 14] - (-1, -1, 1)).max() < 0.1
    # The NFKD-stored concept folder is found from the composed (NFC) name in the annotations.
    [swahili] = _test_examples("marvl_sw")
    assert swahili["targets_pretokenized"].decode() == "yes" and swahili["has_image"] == 1
    assert np.abs(swahili["image"][8, 2] - (-1, -1, 1)).max() < 0.1


def test_maxm_and_xflickrco_examples(registered):
    [french] = _test_examples("maxm_fr")
    assert french["inputs_pretokenized"].decode() == "answer fr Quelle couleur ?"
    assert [r.decode() for r in french["references"]] == ["rouge", "rouges"]  # processed_answers.
    [hebrew] = _test_examples("maxm_he")  # MaXM's "iw" is palimix's "he".
    assert hebrew["targets_pretokenized"].decode() == "אדום"
    german = {e["id"].decode(): e for e in _test_examples("xflickrco_de")}
    assert sorted(german) == ["1007129816.jpg", "COCO_val2014_000000391895.jpg"]
    assert german["COCO_val2014_000000391895.jpg"]["targets_pretokenized"].decode() == "Ein Hund."


def test_instruct_benchmark_prompts_name_the_answer_language(benchmark_dir):
    from palimix.tasks import register_benchmarks

    try:
        register_benchmarks(str(benchmark_dir), image_size=16, prompt_style="instruct")
        from palimix import prompts

        for example in _test_examples("xvnli_fr"):  # English labels: the prompts ask for English.
            example_id, count = example["id"].decode(), len(prompts.variants("vqa", "fr", "instruct"))
            question = {"759822302.jpg#2r1c": "Il porte le journal sur sa tête.",
                        "759822302.jpg#2r1e": "Il lit le journal."}[example_id]
            assert example["inputs_pretokenized"].decode() == prompts.prompt(
                "vqa", "fr", style="instruct", answer_language="en", question=question,
                variant=prompts.variant_for(example_id, "fr", count))
            assert "anglais" in example["inputs_pretokenized"].decode()  # The French rows name English so.
        [french] = _test_examples("maxm_fr")
        assert "français" in french["inputs_pretokenized"].decode()
        # The natural style cannot ask for English: XVNLI keeps its language's prompt.
        register_benchmarks(str(benchmark_dir), image_size=16, prompt_style="natural", overwrite=True)
        assert _test_examples("xvnli_fr")[0]["targets_pretokenized"].decode() == "no"
    finally:
        for name in BENCHMARK_GROUPS:
            remove(name)
