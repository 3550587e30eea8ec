"""Every source format, with small fixtures written here in the real download layouts."""

import functools
import io
import json
import tarfile

import numpy as np
import pytest
import seqio
import tensorflow as tf
from PIL import Image

from palimix import sources
from palimix.errors import UnknownLanguageError, UsageError
from palimix.preprocessors import image


def jpeg_bytes(colour=(200, 30, 30), size=(24, 16)):
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def write_jpeg(path, colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(colour))
    return path


def examples(source, split=None, **kwargs):
    split = split or source.splits[0]
    return list(source.get_dataset(split, shuffle=False, **kwargs).as_numpy_iterator())


def text(values):
    return [v.decode() for v in values]


# --- COCO ------------------------------------------------------------------------


@pytest.fixture
def coco(tmp_path):
    images = tmp_path / "val2017"
    for i in (139, 285, 632):
        write_jpeg(images / f"{i:012d}.jpg")
    annotations = {
        "info": {},
        "images": [{"id": i, "file_name": f"{i:012d}.jpg", "width": 24, "height": 16} for i in (632, 139, 285)],
        "annotations": [
            {"id": 2, "image_id": 139, "caption": "A woman stands in the kitchen. "},
            {"id": 1, "image_id": 139, "caption": "A room with a stove."},
            {"id": 7, "image_id": 632, "caption": "A bedroom."},
        ],
    }
    path = tmp_path / "captions_val2017.json"
    path.write_text(json.dumps(annotations))
    return path, images


def test_coco_captions(coco):
    path, images = coco
    source = sources.CocoCaptions(str(path), str(images), split="validation")
    assert isinstance(source, seqio.DataSource)
    assert source.splits == ("validation",) and source.num_input_examples("validation") == 2
    first, second = examples(source)
    # Sorted by image id; captions in annotation-id order; image 285 has none and is left out.
    assert first["id"] == b"139" and text(first["captions"]) == ["A room with a stove.", "A woman stands in the kitchen."]
    assert second["id"] == b"632" and first["language"] == b"en"
    assert first["image/encoded"] == (images / "000000000139.jpg").read_bytes()
    assert first["image/path"].decode().endswith("val2017/000000000139.jpg")
    assert source.languages() == ["en"]


def test_splits_combine_single_split_sources(coco):
    path, images = coco
    train = sources.CocoCaptions(str(path), str(images))
    validation = sources.CocoCaptions(str(path), str(images), split="validation")
    both = sources.Splits({"train": train, "validation": validation})
    assert both.splits == ("train", "validation")
    assert both.num_input_examples("validation") == 2
    with pytest.raises(UsageError, match="no split 'test'"):
        both.get_dataset("test")


def test_missing_annotation_file_and_image_folder_are_named(tmp_path, coco):
    path, images = coco
    with pytest.raises(sources.MissingFileError, match="nope.json"):
        sources.CocoCaptions(str(tmp_path / "nope.json"), str(images))
    with pytest.raises(FileNotFoundError, match="no_images"):
        sources.CocoCaptions(str(path), str(tmp_path / "no_images"))


def test_missing_image_is_a_counted_drop_not_a_crash(coco):
    path, images = coco
    (images / "000000000139.jpg").unlink()
    source = sources.CocoCaptions(str(path), str(images))
    assert source.missing_images("train") == [str(images / "000000000139.jpg")]
    image.reset_dropped_image_counts("coco_missing")
    ds = image.decode_image(source.get_dataset("train", shuffle=False), image_size=16, task_name="coco_missing")
    assert [e["id"] for e in ds.as_numpy_iterator()] == [b"632"]
    assert image.dropped_image_counts()["coco_missing"] == {"missing": 1}


def test_order_is_deterministic_and_seeded_shuffle_reproducible(coco):
    path, images = coco
    source = sources.CocoCaptions(str(path), str(images))
    assert [e["id"] for e in examples(source)] == [e["id"] for e in examples(source)]

    def shuffled(seed):
        return [e["id"] for e in source.get_dataset("train", shuffle=True, seed=seed).as_numpy_iterator()]

    assert shuffled(3) == shuffled(3)


def test_sharding_splits_the_examples(coco):
    path, images = coco
    source = sources.CocoCaptions(str(path), str(images))
    parts = [examples(source, shard_info=seqio.ShardInfo(i, 2)) for i in range(2)]
    assert sorted(e["id"] for part in parts for e in part) == [b"139", b"632"]


# --- XM3600 ----------------------------------------------------------------------


@pytest.fixture
def xm3600(tmp_path):
    images = tmp_path / "images"
    lines = []
    for key in ("000411001ff7dd4f", "0004b8b4aa8a1cd8"):
        write_jpeg(images / f"{key}.jpg")
        lines.append(
            {
                "image/key": key,
                "image/locale": "de",
                "de": {"caption": [f"Ein Bild {key}"], "caption/tokenized": ["x"]},
                "en": {"caption": [f"A picture {key}", "Another caption"], "caption/tokenized": ["x", "y"]},
                "iw": {"caption": ["תמונה"], "caption/tokenized": ["x"]},
            }
        )
    path = tmp_path / "captions.jsonl"
    path.write_text("\n".join(json.dumps(line, ensure_ascii=False) for line in lines) + "\n")
    return path, images


def test_xm3600_one_example_per_image_and_language(xm3600):
    path, images = xm3600
    source = sources.Xm3600(str(path), str(images))
    assert source.splits == ("test",) and source.num_input_examples("test") == 6
    assert source.languages() == ["de", "en", "he"]  # iw, the release's code, normalized.
    english = source.for_language("en")
    assert isinstance(english, seqio.DataSource) and english.num_input_examples("test") == 2
    first = examples(english)[0]
    assert first["id"] == b"000411001ff7dd4f" and first["language"] == b"en"
    assert text(first["captions"]) == ["A picture 000411001ff7dd4f", "Another caption"]
    assert first["image/encoded"] == (images / "000411001ff7dd4f.jpg").read_bytes()
    assert text(examples(source.for_language("iw"))[0]["captions"]) == ["תמונה"]


def test_unknown_and_absent_languages(xm3600):
    path, images = xm3600
    source = sources.Xm3600(str(path), str(images))
    with pytest.raises(UnknownLanguageError, match="qqq"):
        source.for_language("qqq")
    japanese = source.for_language("ja")  # Known, but not in this file.
    with pytest.raises(UsageError, match="it has: de, en, he"):
        japanese.num_input_examples("test")


def test_unknown_language_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "captions.jsonl"
    path.write_text(json.dumps({"image/key": "k", "image/locale": "en", "zz-bogus": {"caption": ["?"]}}) + "\n")
    (tmp_path / "images").mkdir()
    source = sources.Xm3600(str(path), str(tmp_path / "images"))
    with pytest.raises(UnknownLanguageError, match="captions.jsonl"):
        source.num_input_examples("test")


# --- VQAv2, TextVQA, GQA, xGQA --------------------------------------------------------


def test_vqav2_official_layout(tmp_path):
    images = tmp_path / "val2014"
    write_jpeg(images / "COCO_val2014_000000000042.jpg")
    questions = {
        "data_subtype": "val2014",
        "questions": [
            {"image_id": 42, "question": "What is this?", "question_id": 42000},
            {"image_id": 42, "question": "What color?", "question_id": 42001},
        ],
    }
    answers = [{"answer": f"a{i}", "answer_confidence": "yes", "answer_id": 10 - i} for i in range(1, 11)]
    annotations = {
        "annotations": [
            {"question_id": 42000, "image_id": 42, "answers": answers, "multiple_choice_answer": "a1"},
            {"question_id": 42001, "image_id": 42, "answers": answers[:1], "multiple_choice_answer": "a1"},
        ]
    }
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps(annotations))
    source = sources.Vqav2(str(tmp_path / "q.json"), str(tmp_path / "a.json"), str(images), split="validation")
    first, second = examples(source)
    assert first["id"] == b"42000" and first["question"] == b"What is this?"
    assert text(first["answers"]) == [f"a{i}" for i in range(10, 0, -1)]  # By answer_id.
    assert first["image/encoded"] == (images / "COCO_val2014_000000000042.jpg").read_bytes()
    assert text(second["answers"]) == ["a1"]
    # The test split has no annotations; COCO 2017 folders name files differently.
    write_jpeg(tmp_path / "test2017" / "000000000042.jpg")
    test = sources.Vqav2(str(tmp_path / "q.json"), None, str(tmp_path / "test2017"), image_pattern="{image_id:012d}.jpg")
    assert [len(e["answers"]) for e in examples(test)] == [0, 0] and examples(test)[0]["image/encoded"]


def test_textvqa(tmp_path):
    write_jpeg(tmp_path / "train_images" / "0054c91397f2fe05.jpg")
    data = {
        "dataset_name": "textvqa",
        "dataset_type": "train",
        "data": [
            {
                "question": "what is the brand?",
                "image_id": "0054c91397f2fe05",
                "question_id": 0,
                "answers": ["nokia"] * 9 + ["toshiba"],
                "image_classes": ["Mobile phone"],
            }
        ],
    }
    (tmp_path / "TextVQA_0.5.1_train.json").write_text(json.dumps(data))
    source = sources.TextVqa(str(tmp_path / "TextVQA_0.5.1_train.json"), str(tmp_path / "train_images"))
    (example,) = examples(source)
    assert example["id"] == b"0" and text(example["answers"])[-1] == "toshiba" and example["image/encoded"]


def gqa_questions(translated=""):
    return {
        "20968379": {"imageId": "n288870", "question": f"{translated}Is the sky blue?", "answer": "yes", "fullAnswer": "Yes."},
        "05451384": {"imageId": "n288870", "question": f"{translated}What is it?", "answer": "bird"},
    }


def test_gqa_and_xgqa(tmp_path):
    write_jpeg(tmp_path / "images" / "n288870.jpg")
    (tmp_path / "testdev_balanced_questions.json").write_text(json.dumps(gqa_questions()))
    gqa = sources.Gqa(str(tmp_path / "testdev_balanced_questions.json"), str(tmp_path / "images"), split="validation")
    first, _ = examples(gqa)
    assert first["id"] == b"05451384" and text(first["answers"]) == ["bird"] and first["image/encoded"]

    zero_shot = tmp_path / "zero_shot"
    zero_shot.mkdir()
    for code in ("de", "bn", "zh"):
        (zero_shot / f"testdev_balanced_questions_{code}.json").write_text(json.dumps(gqa_questions(f"[{code}] ")))
    xgqa = sources.Xgqa(str(zero_shot), str(tmp_path / "images"))
    assert xgqa.languages() == ["bn", "de", "zh"] and xgqa.num_input_examples("test") == 6
    german = examples(xgqa.for_language("de"))
    assert [e["question"] for e in german] == [b"[de] What is it?", b"[de] Is the sky blue?"]
    assert text(german[0]["answers"]) == ["bird"]  # Answers stay English, as in xGQA.


# --- ImageFolder -----------------------------------------------------------------------


def test_image_folder_with_translated_labels(tmp_path):
    root = tmp_path / "train"
    write_jpeg(root / "golden_retriever" / "b.jpg")
    write_jpeg(root / "golden_retriever" / "a.JPG")
    write_jpeg(root / "tabby_cat" / "c.png")
    (root / "tabby_cat" / ".DS_Store").write_bytes(b"junk")
    table = tmp_path / "labels.tsv"
    table.write_text("folder\ten\tde\ngolden_retriever\tgolden retriever\tGolden Retriever\ntabby_cat\ttabby cat\tgetigerte Katze\n")
    source = sources.ImageFolder(str(root), labels=str(table))
    assert source.languages() == ["de", "en"] and source.num_input_examples("train") == 6
    german = examples(source.for_language("de"))
    assert [(e["id"], e["label"].decode()) for e in german] == [
        (b"golden_retriever/a.JPG", "Golden Retriever"),
        (b"golden_retriever/b.jpg", "Golden Retriever"),
        (b"tabby_cat/c.png", "getigerte Katze"),
    ]
    assert source.class_names("de") == ["Golden Retriever", "getigerte Katze"]
    # Without a table: folder names as English labels.
    plain = sources.ImageFolder(str(root))
    assert text(e["label"] for e in examples(plain)) == ["golden retriever", "golden retriever", "tabby cat"]
    with pytest.raises(UsageError, match="no row for class folder 'tabby_cat'"):
        sources.ImageFolder(str(root), labels={"golden_retriever": {"en": "dog"}})


# --- JSON Lines -------------------------------------------------------------------------


def test_json_lines_with_field_mapping_and_text_only_lines(tmp_path):
    write_jpeg(tmp_path / "imgs" / "sign.png")
    lines = [
        {"image_id": 7, "file_name": "sign.png", "lang": "fr", "transcription": "SORTIE"},
        {"image_id": 8, "lang": "sw", "transcription": "Habari ya asubuhi"},  # No image: language-only.
    ]
    path = tmp_path / "ocr.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines))
    source = sources.JsonLines(
        str(path), str(tmp_path / "imgs"), fields={"id": "image_id", "image": "file_name", "language": "lang", "text": "transcription"}
    )
    assert source.fields == ("text",) and source.languages() == ["fr", "sw"]
    decoded = list(image.decode_image(source.get_dataset("train", shuffle=False), image_size=16).as_numpy_iterator())
    assert [(e["id"], e["text"], e["has_image"]) for e in decoded] == [(b"7", b"SORTIE", 1), (b"8", b"Habari ya asubuhi", 0)]


def test_json_lines_defaults_and_errors(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"question": "2+2?", "answers": "4"}) + "\n\n" + json.dumps({"question": "1+1?", "answers": ["2"]}))
    source = sources.JsonLines(str(path), language="en")
    assert source.fields == ("answers", "question")
    assert [(e["id"], text(e["answers"])) for e in examples(source)] == [(b"1", ["4"]), (b"3", ["2"])]
    with pytest.raises(UsageError, match="data.jsonl:1: no 'language'"):
        sources.JsonLines(str(path)).num_input_examples("train")
    with pytest.raises(UsageError, match="Unknown record field"):
        sources.JsonLines(str(path), fields={"caption": "c"})


# --- TFDS --------------------------------------------------------------------------------


def test_tfds_source_with_a_tiny_builder(tmp_path):
    import tensorflow_datasets as tfds

    class PalimixTinyShapes(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(16, 24, 3), encoding_format="png"),
                        "label": tfds.features.ClassLabel(names=["circle", "square"]),
                        "captions": tfds.features.Sequence(tfds.features.Text()),
                        "key": tfds.features.Text(),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(3)}

        def _generate_examples(self, n):
            for i in range(n):
                pixels = np.full((16, 24, 3), 40 * i, np.uint8)
                yield i, {"image": pixels, "label": i % 2, "captions": [f"shape {i}", "a shape"], "key": f"k{i}"}

    PalimixTinyShapes(data_dir=str(tmp_path)).download_and_prepare()
    source = sources.Tfds(
        "palimix_tiny_shapes", "train", {"image": "image", "id": "key", "label": "label", "captions": "captions"}, data_dir=str(tmp_path)
    )
    assert source.num_input_examples("train") == 3 and source.for_language("en") is source
    rows = examples(source)
    assert [(e["id"], e["label"]) for e in rows] == [(b"k0", b"circle"), (b"k1", b"square"), (b"k2", b"circle")]
    assert text(rows[1]["captions"]) == ["shape 1", "a shape"]
    assert rows[0]["image/encoded"].startswith(b"\x89PNG") and rows[0]["image/path"] == b"tfds:palimix_tiny_shapes/train[k0]"
    decoded = list(image.decode_image(source.get_dataset("train", shuffle=False), image_size=8).as_numpy_iterator())
    assert decoded[2]["image"][0, 0, 0] == pytest.approx(80 * 2 / 255 - 1, abs=0.02)
    with pytest.raises(UsageError, match="only 'en'"):
        source.for_language("de")


# --- WebDataset --------------------------------------------------------------------------


def write_shard(path, samples):
    with tarfile.open(path, "w") as tar:
        for name, data in samples:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards(tmp_path):
    for shard in range(2):
        samples = []
        for i in range(3):
            key = f"{shard:02d}{i:04d}"
            samples.append((f"{key}.jpg", jpeg_bytes((50 * i, 0, 0))))
            samples.append((f"{key}.txt", f"caption {key}\n".encode()))
            samples.append((f"{key}.json", json.dumps({"lang": ["en", "de", "sw"][i], "url": "http://x"}).encode()))
        write_shard(tmp_path / f"shard-{shard:06d}.tar", samples)
    pattern = str(tmp_path / "shard-{000000..000001}.tar")
    source = sources.WebDataset(pattern, fields={"captions": ".txt", "language": "lang"})
    assert source.num_input_examples("train") == 6 and source.list_shards("train") == sources.expand_shards(str(tmp_path / "*.tar"))
    rows = examples(source)
    assert [e["id"] for e in rows] == [b"000000", b"000001", b"000002", b"010000", b"010001", b"010002"]
    assert text(rows[1]["captions"]) == ["caption 000001"] and rows[1]["language"] == b"de"
    assert rows[0]["image/path"].decode().endswith("shard-000000.tar[000000.jpg]")
    german = source.for_language("de")
    assert german.num_input_examples("train") == 2 and [e["id"] for e in examples(german)] == [b"000001", b"010001"]
    # One tar shard per host when there are enough shards.
    assert [e["id"] for e in examples(source, shard_info=seqio.ShardInfo(1, 2))] == [b"010000", b"010001", b"010002"]
    shuffled = [e["id"] for e in source.get_dataset("train", shuffle=True, seed=1).as_numpy_iterator()]
    assert sorted(shuffled) == [e["id"] for e in rows]
    decoded = list(image.decode_image(source.get_dataset("train", shuffle=False), image_size=8).as_numpy_iterator())
    assert len(decoded) == 6 and all(e["has_image"] == 1 for e in decoded)
    with pytest.raises(sources.MissingFileError, match="shard-000009"):
        sources.WebDataset(str(tmp_path / "shard-000009.tar"))


# --- seqio integration ------------------------------------------------------------------------


def test_source_and_decoder_in_a_seqio_task(coco):
    path, images = coco
    task = seqio.Task(
        "palimix_test_sources_coco",
        source=sources.CocoCaptions(str(path), str(images)),
        preprocessors=[functools.partial(image.decode_image, image_size=16, task_name="palimix_test_sources_coco")],
        output_features={"image": seqio.ContinuousFeature(dtype=tf.float32, rank=3)},
    )
    rows = list(task.get_dataset(None, split="train", shuffle=False).as_numpy_iterator())
    assert [r["id"] for r in rows] == [b"139", b"632"] and rows[0]["image"].shape == (16, 16, 3)
