"""palimix's vocabulary in tf.data pipelines: the same ids as the Python tokenizer,
iterator checkpoints save and restore, and a pipeline built after
`tf.random.set_seed` (which clears TensorFlow's kernel cache, where a tokenizer's
model resource lives when it is created eagerly) still tokenizes."""

import tensorflow as tf

from palimix import vocab

TEXTS = ["a caption in English", "eine Bildunterschrift", "คำบรรยายภาพ", "صورة", "图片说明"] * 3


def test_pipelines_tokenize_as_the_python_tokenizer_and_checkpoint_their_position(tmp_path):
    vocabulary = vocab.default_vocabulary()
    dataset = tf.data.Dataset.from_tensor_slices(TEXTS).shuffle(8, seed=1).map(vocabulary.encode_tf)
    iterator = iter(dataset)
    first = [next(iterator).numpy().tolist() for _ in range(4)]
    assert all(vocabulary.decode(ids) in TEXTS for ids in first)
    path = tf.train.Checkpoint(iterator=iterator).write(str(tmp_path / "position"))
    expected = [next(iterator).numpy().tolist() for _ in range(4)]
    restored = iter(dataset)
    tf.train.Checkpoint(iterator=restored).read(path).assert_consumed()
    assert [next(restored).numpy().tolist() for _ in range(4)] == expected
    assert [vocabulary.encode(vocabulary.decode(ids)) for ids in expected] == expected


def test_pipelines_built_after_a_global_seed_still_tokenize():
    vocabulary = vocab.default_vocabulary()
    for seed in (1, 2):  # The runner's inputs set the global seed before each build.
        tf.random.set_seed(seed)
        dataset = tf.data.Dataset.from_tensor_slices(TEXTS).map(vocabulary.encode_tf)
        assert [vocabulary.decode(ids.tolist()) for ids in dataset.as_numpy_iterator()] == TEXTS
