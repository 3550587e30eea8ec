"""Box sources: COCO instances, RefCOCO's refs pickle + instances.json, and JSON Lines with
boxes, from files written here in the release layouts (real JSON, pickle and JPEG files),
through to detection and referring tasks and the registered benchmarks."""

import collections
import io
import json
import logging
import pickle

import numpy as np
import pytest
import seqio
from PIL import Image

from palimix import boxes, sources, vocab
from palimix.errors import UsageError
from palimix.sources import base
from palimix.tasks import add_task, register_benchmarks, remove
from tests.vocab_cache import vocab_cache_dir  # noqa: F401 (a fixture)

LENGTHS = {"inputs": 32, "targets": 48, "image": 16}


def write_jpeg(path, size=(40, 20), colour=(30, 120, 200)):
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue())
    return path


def examples(source, split=None):
    return list(source.get_dataset(split or source.splits[0], shuffle=False).as_numpy_iterator())


CATEGORIES = [{"id": 1, "name": "person", "supercategory": "person"}, {"id": 18, "name": "dog", "supercategory": "animal"}]


def instances_file(path, images, annotations):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"info": {}, "licenses": [], "images": images, "annotations": annotations,
                                "categories": CATEGORIES}))
    return path


def annotation(id, image_id, category_id, bbox, iscrowd=0):
    return {"id": id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "iscrowd": iscrowd,
            "area": float(np.prod(bbox[2:])), "segmentation": [[0, 0, 1, 1, 1, 0]]}


def image_entry(id, width=40, height=20):
    return {"id": id, "file_name": f"{id:012d}.jpg", "width": width, "height": height}


@pytest.fixture
def coco_dir(tmp_path):
    """A COCO layout: annotations/instances_val2017.json and val2017/*.jpg."""
    for i in (139, 285, 632, 724):
        write_jpeg(tmp_path / "val2017" / f"{i:012d}.jpg")
    instances_file(tmp_path / "annotations" / "instances_val2017.json",
                   [image_entry(i) for i in (632, 139, 285, 724)],
                   [annotation(12, 139, 18, [20, 10, 20, 10]),  # x, y, w, h in pixels of 40 x 20
                    annotation(11, 139, 1, [0, 0, 10, 20]),
                    annotation(13, 139, 1, [0, 0, 40, 20], iscrowd=1),  # a crowd region: left out
                    annotation(21, 285, 1, [4, 2, 36.0004, 18.0002]),  # a hair past the border: clipped
                    annotation(31, 724, 18, [0, 0, 40, 20], iscrowd=1)])  # only a crowd: image left out
    return tmp_path  # 632 has no annotations: left out


def test_coco_detection_reads_boxes_in_loc_order_and_leaves_out_crowds(coco_dir, caplog):
    source = sources.CocoDetection(str(coco_dir / "annotations" / "instances_val2017.json"),
                                   str(coco_dir / "val2017"), split="validation")
    with caplog.at_level(logging.INFO, logger="palimix.sources.coco"):
        records = source.records("validation")
    assert [r["id"] for r in records] == ["139", "285"]
    first, second = records
    assert first["labels"] == ["person", "dog"]  # annotation-id order
    np.testing.assert_allclose(first["boxes"], [[0.0, 0.0, 1.0, 0.25], [0.5, 0.5, 1.0, 1.0]])
    np.testing.assert_allclose(second["boxes"], [[0.1, 0.1, 1.0, 1.0]])
    assert source.counts == {"crowd_regions_left_out": 2, "images": 2, "boxes": 3, "images_without_objects_left_out": 2}
    assert "left out 2 crowd regions and 2 images without (non-crowd) objects" in caplog.text

    first, second = examples(source)
    assert first["boxes"].dtype == np.float32 and first["boxes"].shape == (2, 4)
    assert list(first["labels"]) == [b"person", b"dog"]
    assert first["image/encoded"][:2] == b"\xff\xd8" and first["language"] == b"en"
    assert second["boxes"].shape == (1, 4)


def test_coco_detection_bad_annotations_are_clear_errors(tmp_path):
    write_jpeg(tmp_path / "val2017" / "000000000001.jpg")
    cases = [
        ([image_entry(1)], [annotation(5, 1, 1, [0, 0, -3, 4])], "annotation 5: bbox .* negative width or height"),
        ([image_entry(1)], [annotation(5, 1, 1, [0, 0, 4])], r"annotation 5: bbox \[0, 0, 4\] is not \[x, y, width"),
        ([image_entry(1)], [annotation(5, 1, 1, [30, 0, 20, 4])], r"bbox \[30, 0, 20, 4\] reaches outside the 40 x 20"),
        ([image_entry(1)], [annotation(5, 1, 7, [0, 0, 4, 4])], "annotation 5 has category 7, which is not in"),
        ([image_entry(1)], [annotation(5, 2, 1, [0, 0, 4, 4])], "annotation 5 is for image 2, which is not in"),
        ([{"id": 1, "file_name": "000000000001.jpg"}], [], "image 1 has no positive width and height"),
    ]
    for images, annotations, message in cases:
        path = instances_file(tmp_path / "annotations" / "instances.json", images, annotations)
        source = sources.CocoDetection(str(path), str(tmp_path / "val2017"))
        with pytest.raises(UsageError, match=message):
            source.records("train")
    (tmp_path / "captions.json").write_text(json.dumps({"images": [], "annotations": [{"caption": "x"}]})[:-1])
    with pytest.raises(UsageError, match="not valid JSON"):
        sources.CocoDetection(str(tmp_path / "captions.json"), str(tmp_path / "val2017")).records("train")


# --- RefCOCO --------------------------------------------------------------------------


def ref(ref_id, ann_id, image_id, split, sentences):
    return {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split, "category_id": 1,
            "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
            "sent_ids": [s[0] for s in sentences],
            "sentences": [{"sent_id": i, "sent": sent, "raw": raw, "tokens": sent.split()} for i, sent, raw in sentences]}


@pytest.fixture
def refcoco_dir(tmp_path):
    """The `refer` layout: refcoco/refs(unc).p and refcoco/instances.json; coco/train2014/*.jpg."""
    images = [{"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "width": 40, "height": 20} for i in (9, 25)]
    for entry in images:
        write_jpeg(tmp_path / "coco" / "train2014" / entry["file_name"])
    instances_file(tmp_path / "refcoco" / "instances.json", images,
                   [annotation(100, 9, 1, [0, 0, 20, 20]), annotation(101, 9, 18, [20, 10, 20, 10]),
                    annotation(200, 25, 1, [10, 5, 10, 10])])
    refs = [
        ref(2, 101, 9, "val", [(20, "dog on the right", "Dog on the right!")]),
        ref(1, 100, 9, "train", [(10, "left person", "Left person"), (11, "man in blue", "man in blue ")]),
        ref(3, 200, 25, "testA", [(30, "guy in the middle", "guy in the middle")]),
    ]
    with open(tmp_path / "refcoco" / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)  # The release was written by Python 2.
    return tmp_path


def refcoco(root, **kwargs):
    return sources.RefCoco(str(root / "refcoco" / "refs(unc).p"), str(root / "refcoco" / "instances.json"),
                           str(root / "coco" / "train2014"), **kwargs)


def test_refcoco_gives_one_example_per_sentence_with_its_box(refcoco_dir):
    source = refcoco(refcoco_dir)
    assert list(source.splits) == ["train", "validation", "testA", "testB"]
    train = examples(source, "train")
    assert [e["id"] for e in train] == [b"1-10", b"1-11"]
    assert [e["expression"] for e in train] == [b"left person", b"man in blue"]
    np.testing.assert_allclose(train[0]["box"], [0.0, 0.0, 1.0, 0.5])
    assert train[0]["box"].dtype == np.float32 and train[0]["image/encoded"][:2] == b"\xff\xd8"
    (validation,) = examples(source, "validation")  # the release's "val"
    np.testing.assert_allclose(validation["box"], [0.5, 0.5, 1.0, 1.0])
    (test_a,) = examples(source, "testA")
    np.testing.assert_allclose(test_a["box"], [0.25, 0.25, 0.75, 0.5])
    with pytest.raises(UsageError, match=r"has no refs in split 'testB'; it has: "):
        source.records("testB")
    raw = refcoco(refcoco_dir, sentence="raw", splits=["validation"])
    assert raw.records("validation")[0]["expression"] == "Dog on the right!"


def test_refcoco_refuses_mismatched_or_foreign_files(refcoco_dir):
    with pytest.raises(UsageError, match="unknown split"):
        refcoco(refcoco_dir, splits=["val"])
    refs_path = refcoco_dir / "refcoco" / "refs(unc).p"
    with open(refs_path, "wb") as f:
        pickle.dump([ref(4, 999, 9, "train", [(40, "a", "a")])], f, protocol=2)
    with pytest.raises(UsageError, match="ref 4: 999 is not in .*instances.json"):
        refcoco(refcoco_dir).records("train")
    with open(refs_path, "wb") as f:  # Any class in the pickle is refused, not imported.
        pickle.dump([collections.OrderedDict(ref_id=1)], f, protocol=2)
    with pytest.raises(UsageError, match="refers to collections.OrderedDict"):
        refcoco(refcoco_dir).records("train")
    refs_path.write_bytes(b"not a pickle")
    with pytest.raises(UsageError, match="not a RefCOCO refs pickle"):
        refcoco(refcoco_dir).records("train")


# --- JSON Lines -----------------------------------------------------------------------


def jsonl(tmp_path, lines):
    write_jpeg(tmp_path / "img" / "a.jpg")
    path = tmp_path / "boxes.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_jsonl_reads_detection_and_referring_fields(tmp_path):
    path = jsonl(tmp_path, [
        {"id": "a", "image": "a.jpg", "language": "de", "boxes": [[0.1, 0.2, 0.5, 0.6], [0, 0, 1, 1]],
         "labels": ["Katze", "Hund"]},
        {"id": "b", "image": "a.jpg", "language": "de"},  # no objects: no boxes
    ])
    source = sources.JsonLines(str(path), str(tmp_path / "img"))
    assert source.fields == ("labels", "boxes")
    first, second = examples(source)
    np.testing.assert_allclose(first["boxes"], [[0.1, 0.2, 0.5, 0.6], [0, 0, 1, 1]])
    assert list(first["labels"]) == [b"Katze", b"Hund"]
    assert second["boxes"].shape == (0, 4) and list(second["labels"]) == []

    path = jsonl(tmp_path, [{"image": "a.jpg", "bbox": [0.25, 0.25, 0.75, 0.75], "sentence": "the cat"}])
    source = sources.JsonLines(str(path), str(tmp_path / "img"), language="en",
                               fields={"box": "bbox", "expression": "sentence"})
    (example,) = examples(source)
    np.testing.assert_allclose(example["box"], [0.25, 0.25, 0.75, 0.75])
    assert example["expression"] == b"the cat" and example["id"] == b"1"


@pytest.mark.parametrize("line, message", [
    ({"boxes": [[10, 20, 40, 60]], "labels": ["cat"]}, r"boxes.jsonl:1: 'boxes' box 0: .*outside 0..1"),
    ({"boxes": [[0.5, 0.2, 0.1, 0.6]], "labels": ["cat"]}, "minimum above its maximum"),
    ({"boxes": [[0.1, 0.2, 0.5]], "labels": ["cat"]}, "got 3 numbers"),
    ({"boxes": [0.1, 0.2, 0.5, 0.6], "labels": ["cat"]}, r"'boxes' box 0: 0.1 is not a box"),
    ({"boxes": "0.1 0.2 0.5 0.6", "labels": ["cat"]}, "is not a list of boxes"),
    ({"boxes": [[0, 0, 1, 1], [0, 0, 1, 1]], "labels": ["cat"]}, "2 boxes but 1 labels"),
    ({"boxes": [["0", 0, 1, 1]], "labels": ["cat"]}, "is not a box"),
    ({"box": None, "expression": "the cat"}, r"'box': None is not a box"),
])
def test_jsonl_malformed_boxes_are_clear_errors(tmp_path, line, message):
    path = jsonl(tmp_path, [{"image": "a.jpg", "language": "en", **line}])
    source = sources.JsonLines(str(path), str(tmp_path / "img"), fields={k: k for k in line})
    with pytest.raises(UsageError, match=message):
        source.records("train")


def test_text_only_sources_refuse_box_fields():
    with pytest.raises(UsageError, match=r"reads text fields only, not \['boxes'\]"):
        base.check_fields(["labels", "boxes"], base.TEXT_FIELDS)
    assert base.check_fields(["boxes", "labels"]) == ("boxes", "labels")


# --- tasks ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def with_loc(vocab_cache_dir):  # noqa: F811
    return vocab.default_vocabulary(tokensets=("loc",))


def task_examples(name, split):
    task = seqio.get_mixture_or_task(name)
    return list(task.get_dataset(LENGTHS, split=split, shuffle=False).as_numpy_iterator())


def test_detection_and_referring_tasks_from_the_readers(coco_dir, refcoco_dir, with_loc):
    detection = sources.CocoDetection(str(coco_dir / "annotations" / "instances_val2017.json"),
                                      str(coco_dir / "val2017"))
    referring = refcoco(refcoco_dir)
    try:
        add_task("tsd_coco", kind="detection", source=detection, languages=["en"], image_size=16, vocabulary=with_loc)
        add_task("tsd_refcoco", kind="referring", source=referring, languages=["en"], image_size=16,
                 vocabulary=with_loc)
        first, _ = task_examples("tsd_coco_en", "train")
        assert first["inputs_pretokenized"] == b"detect person ; dog"
        assert first["targets_pretokenized"].decode() == boxes.to_loc_text(
            [[0.0, 0.0, 1.0, 0.25], [0.5, 0.5, 1.0, 1.0]], ["person", "dog"])
        (example,) = task_examples("tsd_refcoco_en", "validation")
        assert example["inputs_pretokenized"] == b"detect dog on the right"
        assert example["targets_pretokenized"] == b"<loc0512><loc0512><loc1023><loc1023> dog on the right"
    finally:
        remove("tsd_coco")
        remove("tsd_refcoco")


def test_register_benchmarks_finds_detection_and_refcoco(coco_dir, refcoco_dir, with_loc):
    # Both fixtures write into one tmp_path: move COCO 2017 under coco/ next to train2014.
    assert coco_dir == refcoco_dir
    (coco_dir / "annotations").rename(coco_dir / "coco" / "annotations")
    (coco_dir / "val2017").rename(coco_dir / "coco" / "val2017")
    registered = register_benchmarks(str(coco_dir), image_size=16, overwrite=True)
    try:
        assert registered == ["coco_detection", "refcoco"]
        task = seqio.get_mixture_or_task("coco_detection_en")
        assert list(task.source.splits) == ["validation"]
        assert [m.__name__ for m in task.metric_fns] == ["detection_f1", "detection_map"]
        assert len(task_examples("coco_detection_en", "validation")) == 2
        refcoco_task = seqio.get_mixture_or_task("refcoco_en")
        assert list(refcoco_task.source.splits) == ["train", "validation", "testA", "testB"]
        assert [e["id"] for e in task_examples("refcoco_en", "train")] == [b"1-10", b"1-11"]
    finally:
        for name in registered:
            remove(name)
