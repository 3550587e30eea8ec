"""palimix.vocab tokensets: PaliGemma's <loc>/<seg> tokens as single pieces, on the
shipped model (opt-in, for detection) and on a Gemma-style model (paligemma_vocabulary).

Gemma's SentencePiece cannot be downloaded here: a stand-in is the shipped model with
Gemma's special ids and a few <loc> pieces already inside (as big_vision's files may
have them), which must keep their ids."""

import pathlib

import gin
import pytest
from sentencepiece import sentencepiece_model_pb2

from palimix import vocab
from palimix.errors import UsageError
from tests.vocab_cache import vocab_cache_dir  # noqa: F401 (a fixture)

SHIPPED_PIECES = 8092


pytestmark = pytest.mark.usefixtures("vocab_cache_dir")  # derived models in a temporary cache


@pytest.fixture(scope="module")
def with_loc():
    return vocab.default_vocabulary(tokensets=("loc",))


def test_loc_tokens_are_single_ids_that_decode_back(with_loc):
    ids = with_loc.encode("<loc0512>")
    assert ids == [SHIPPED_PIECES + 512]  # appended after the model's pieces, in order
    assert with_loc.decode(ids) == "<loc0512>"
    target = "<loc0100><loc0200><loc0300><loc0400> cat ; <loc0000><loc0001><loc1022><loc1023> dog"
    ids = with_loc.encode(target)
    assert ids[:4] == [SHIPPED_PIECES + i for i in (100, 200, 300, 400)]
    assert with_loc.decode(ids) == target
    assert with_loc.encode_tf(target).numpy().tolist() == ids  # TensorFlow's tokenizer agrees


def test_extra_ids_stay_last_after_the_added_tokens(with_loc):
    assert with_loc.vocab_size == SHIPPED_PIECES + 1024 + 100 == 9216  # a multiple of 128
    ids = with_loc.encode("chat <extra_id_0><loc0007>")  # seqio's sentinels begin with a space
    assert ids[-2:] == [9215, SHIPPED_PIECES + 7]


def test_shipped_default_is_unchanged(with_loc):
    default = vocab.default_vocabulary()
    assert default.vocab_size == 8192
    assert default.sentencepiece_model_file == vocab.default_vocabulary_path()
    assert len(default.encode("<loc0512>")) > 1  # no <loc> piece in the default


def _gemma_like_model(tmp_path) -> str:
    """The shipped pieces, then <loc0000> and <loc0001> as ordinary pieces (ids kept)."""
    proto = sentencepiece_model_pb2.ModelProto.FromString(pathlib.Path(vocab.default_vocabulary_path()).read_bytes())
    for token in ("<loc0000>", "<loc0001>"):
        proto.pieces.add(piece=token, score=-20.0, type=sentencepiece_model_pb2.ModelProto.SentencePiece.NORMAL)
    path = tmp_path / "gemma_like.model"
    path.write_bytes(proto.SerializeToString())
    return str(path)


def test_paligemma_vocabulary_adds_loc_and_seg_keeping_existing_ids(tmp_path):
    model = _gemma_like_model(tmp_path)
    v = vocab.paligemma_vocabulary(model)
    assert v.extra_ids == 0
    assert v.vocab_size == SHIPPED_PIECES + 1024 + 128  # two <loc> pieces were already there
    assert v.encode("<loc0000>") == [SHIPPED_PIECES] and v.encode("<loc0001>") == [SHIPPED_PIECES + 1]
    assert v.encode("<loc0002>") == [SHIPPED_PIECES + 2]
    assert v.encode("<seg127>") == [v.vocab_size - 1]
    assert v.decode(v.encode("segment cat <seg000><seg064>")) == "segment cat <seg000><seg064>"
    assert vocab.paligemma_vocabulary(model) is v  # cached


def test_gin_options(tmp_path):
    model = _gemma_like_model(tmp_path)
    with gin.unlock_config():
        gin.parse_config(
            f"palimix.vocab.default_vocabulary.path = '{model}'\n"
            "palimix.vocab.default_vocabulary.extra_ids = 0\n"
            "palimix.vocab.default_vocabulary.tokensets = ('loc', 'seg')\n"
            f"palimix.vocab.paligemma_vocabulary.path = '{model}'\n"
        )
    try:
        by_default = vocab.default_vocabulary()
        assert by_default.vocab_size == SHIPPED_PIECES + 1024 + 128
        assert vocab.paligemma_vocabulary() is by_default
    finally:
        gin.clear_config()
    assert vocab.default_vocabulary().vocab_size == 8192


def test_unknown_tokenset_is_a_usage_error():
    with pytest.raises(UsageError, match="Unknown tokensets \\['box'\\]"):
        vocab.default_vocabulary(tokensets=("box",))
