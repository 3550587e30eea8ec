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
