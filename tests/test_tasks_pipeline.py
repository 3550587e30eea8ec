"""The fused task pipeline (build + tokenize + EOS in one map) gives seqio's examples."""

import io

import numpy as np
import pytest
import seqio
import tensorflow as tf

from palimix import features
from palimix.preprocessors import image, prompts, text


@pytest.fixture(scope="module")
def output_features():
    return features.output_features(image_size=8)


def records(language_of=lambda i: "en"):
    captions = [["a red circle", "a circle"], ["", "a blue square on the left of the picture, far far away"], [], ["x"]]
    return tf.data.Dataset.from_tensor_slices({
        "id": [str(i) for i in range(4)],
        "language": [language_of(i) for i in range(4)],
        "question": ["what colour?", "", "where?", "wie viele Formen?"],
        "captions": tf.ragged.constant(captions, dtype=tf.string),
        "answers": tf.ragged.constant([["red"], ["two", "2", "two"], [], ["drei"]], dtype=tf.string),
    })


def as_lists(dataset):
    return [{k: np.asarray(v).tolist() for k, v in e.items()} for e in dataset.as_numpy_iterator()]


CASES = [
    ("caption", "en", None),  # A prompt fixed when the task is built: tokenized once.
    ("vqa", "en", {"inputs": 6, "targets": 3}),  # Per-example prompts, trimmed before EOS.
    ("caption", ["en", "de"], {"inputs": 4, "targets": 5}),  # Multilingual: prompts looked up per language.
]


@pytest.mark.parametrize("kind,language,lengths", CASES)
def test_build_with_tokenize_equals_seqio_tokenize_and_eos(output_features, kind, language, lengths):
    source = records(lambda i: ["en", "de"][i % 2]) if isinstance(language, list) else records()

    def separate():
        with seqio.utils.map_seed_manager(7):
            ds = prompts.build_example(source, kind=kind, language=language)
            ds = text.tokenize_text(ds, output_features)
            return seqio.preprocessors.append_eos_after_trim(ds, output_features, lengths)

    def fused():
        with seqio.utils.map_seed_manager(7):
            return prompts.build_example(source, kind=kind, language=language, tokenize=True,
                                         output_features=output_features, sequence_length=lengths)

    expected, got = as_lists(separate()), as_lists(fused())
    assert got == expected and len(got) >= 2
    assert fused().element_spec["inputs"].dtype == tf.int32
    eos = output_features["inputs"].vocabulary.eos_id
    assert all(e["inputs"][-1] == eos and e["targets"][-1] == eos for e in got)


def test_static_text_is_a_graph_constant_with_the_same_ids(output_features):
    tokenize = text.tokenize_and_append_eos_fn(output_features, {"inputs": 3, "targets": 8})
    example = {"inputs": tf.constant("caption de"), "targets": tf.constant("ein roter Kreis")}
    static = tokenize(example)
    dynamic = tf.function(tokenize)({"inputs": tf.constant("caption de"), "targets": tf.constant("ein roter Kreis")})
    assert tf.get_static_value(static["inputs"]) is not None
    for key in ("inputs", "targets"):
        assert static[key].numpy().tolist() == dynamic[key].numpy().tolist()
    assert len(static["inputs"].numpy()) == 3  # Trimmed to 2 tokens + EOS.


def test_build_with_tokenize_needs_output_features():
    with pytest.raises(Exception, match="output_features"):
        prompts.build_example(records(), kind="caption", language="en", tokenize=True)


def _png(value):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((12, 10, 3), value, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg_failing_in_tensorflow():
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 48, 3), 90, np.uint8)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    table = data.index(b"\xff\xc4") + 5  # A bogus Huffman table: headers still parse.
    data[table:table + 16] = b"\xff" * 16
    return bytes(data)


def test_one_map_and_one_filter_drop_bad_images_and_empty_targets(output_features):
    """decode_images=True: the image is decoded in the build map, and one filter drops
    a bad image (counted), a record without a target (that image decodes fine), and
    a JPEG that fails inside tf.io.decode_jpeg (counted, also as the last example)."""
    image.reset_dropped_image_counts("t_fused")
    failing = _jpeg_failing_in_tensorflow()
    records = tf.data.Dataset.from_tensor_slices({
        "id": ["good", "broken", "no_caption", "tf_fails", "good2", "tf_fails_last"],
        "language": ["en"] * 6,
        "image/encoded": np.array([_png(10), b"not an image", _png(20), failing, _png(30), failing], dtype=object),
        "image/path": ["a.png", "broken.png", "c.png", "e.jpg", "d.png", "f.jpg"],
        "captions": tf.ragged.constant([["one"], ["two"], [], ["x"], ["four", ""], ["y"]], dtype=tf.string),
    })
    ds = prompts.build_example(records, kind="caption", language="en", tokenize=True, decode_images=True,
                               image_size=8, task_name="t_fused", output_features=output_features,
                               sequence_length={"inputs": 8, "targets": 8})
    examples = list(ds.as_numpy_iterator())
    assert [e["id"] for e in examples] == [b"good", b"good2"]
    assert all(e["has_image"].tolist() == [1] and e["image"].shape == (8, 8, 3) for e in examples)
    assert examples[1]["targets_pretokenized"] == b"four"
    assert image.dropped_image_counts()["t_fused"] == {"not_an_image": 1, "corrupt": 2}


def test_blank_image_kinds_drop_empty_targets_in_the_same_filter(output_features):
    records = tf.data.Dataset.from_tensor_slices({
        "id": ["a", "b"], "language": ["en", "en"], "text": ["hello world", "  "],
        "answers": tf.ragged.constant([["hallo welt"], ["leer"]], dtype=tf.string),
    })
    ds = prompts.build_example(records, kind="translation", language="de", source_language="en", blank_image=True,
                               image_size=8)
    (only,) = list(ds.as_numpy_iterator())
    assert only["id"] == b"a" and only["has_image"].tolist() == [0] and not only["image"].any()
