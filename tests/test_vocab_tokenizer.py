"""palimix's vocabulary builds its TensorFlow tokenizer once per process (seqio builds
one, loading the model again, per use); pipelines share it, and their iterator
checkpoints still save and restore."""

import tensorflow as tf

from palimix import vocab

TEXTS = ["a caption in English", "eine Bildunterschrift", "คำบรรยายภาพ", "صورة", "图片说明"] * 3


def test_one_tokenizer_per_process():
    vocabulary = vocab.default_vocabulary()
    assert vocabulary.tf_tokenizer is vocabulary.tf_tokenizer


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
