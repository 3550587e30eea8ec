"""The SentencePiece vocabulary palimix tokenizes prompts and targets with.

`default_vocabulary()` is a `seqio.SentencePieceVocabulary` over a small multilingual
model that ships with palimix (`palimix/data/vocab/sentencepiece.model`, 8,092 pieces
plus 100 extra ids = 8,192 ids, ~100 KB), trained by `scripts/train_vocab.py` on text
from PyPI packages (gflanguages' UDHR samples of ~640 living languages, CLDR names from
babel). Its pieces are sized for the CPU demo, where a tiny model's output softmax is
most of its compute; `palimix/data/vocab/build_info.json` records how it was built.

It round-trips any Unicode text exactly: no normalization (NFKC would rewrite full-width
punctuation, ligatures, math letters), spaces kept as they are, and characters outside
its pieces spelled as UTF-8 byte pieces (never <unk>).

For real training use the mT5 vocabulary (250k pieces, 100 extra ids inside the model
file), by path or with gin:

    vocab = palimix.vocab.default_vocabulary(palimix.vocab.MT5_VOCABULARY_PATH, extra_ids=0)
    vocab = palimix.vocab.mt5_vocabulary()

    # in a gin file
    palimix.vocab.default_vocabulary.path = "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model"
    palimix.vocab.default_vocabulary.extra_ids = 0
    VOCABULARY = @palimix.vocab.default_vocabulary()

A model's embedding and softmax size is `vocabulary.vocab_size` (8,192 here, 250,100 for
mT5; t5x configs round it up to a multiple of 128).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import os

import gin

from palimix.errors import UsageError

# mT5's vocabulary (Xue et al. 2021), also PaLI's text vocabulary. Its model file
# already holds the 100 sentinel pieces (hence "100extra"): load it with extra_ids=0.
MT5_VOCABULARY_PATH = "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model"
# Sentinels for span corruption (<extra_id_0> ... <extra_id_99>), as T5 and mT5.
EXTRA_IDS = 100


def default_vocabulary_path() -> str:
    """The path of the SentencePiece model that ships with palimix."""
    return str(importlib.resources.files("palimix") / "data" / "vocab" / "sentencepiece.model")


@gin.configurable(module="palimix.vocab")
def default_vocabulary(path: str | os.PathLike | None = None, extra_ids: int = EXTRA_IDS):
    """The vocabulary palimix uses: the shipped model, or the SentencePiece model at
    `path` (a local path or any URL tf.io.gfile reads, such as gs://), with `extra_ids`
    sentinel ids appended. Returns a (cached) seqio.SentencePieceVocabulary.

    gin-configurable (`palimix.vocab.default_vocabulary.path = ...`)."""
    return load_vocabulary(path, extra_ids)


def load_vocabulary(path: str | os.PathLike | None = None, extra_ids: int = EXTRA_IDS):
    """`default_vocabulary` without gin (what the CLI uses)."""
    path = os.fspath(path) if path else default_vocabulary_path()
    if "://" not in path and not os.path.isfile(path):
        raise UsageError(f"No SentencePiece model file at {path!r}.")
    if not isinstance(extra_ids, int) or extra_ids < 0:
        raise UsageError(f"extra_ids must be a non-negative integer, got {extra_ids!r}.")
    return _vocabulary(path, extra_ids)


def mt5_vocabulary():
    """mT5's 250k vocabulary (needs access to gs://t5-data or a copy at that path)."""
    return default_vocabulary(MT5_VOCABULARY_PATH, extra_ids=0)


@functools.lru_cache(maxsize=None)
def _vocabulary(path: str, extra_ids: int):
    import seqio

    return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)


@dataclasses.dataclass(frozen=True)
class VocabularyInfo:
    path: str
    vocab_size: int  # Rows of the embedding/softmax: pieces + extra ids.
    pieces: int  # In the model file (for mT5 including its sentinels).
    extra_ids: int  # Appended by seqio.
    model_type: str  # "UNIGRAM", "BPE", ...
    byte_fallback: bool
    normalization: str  # The normalizer's rule name ("identity": text is kept exactly).
    pad_id: int
    eos_id: int
    unk_id: int


def describe(vocabulary) -> VocabularyInfo:
    """What a seqio.SentencePieceVocabulary is made of (read from its model proto)."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto.FromString(vocabulary.sp_model)
    return VocabularyInfo(
        path=vocabulary.sentencepiece_model_file,
        vocab_size=vocabulary.vocab_size,
        pieces=vocabulary.vocab_size - vocabulary.extra_ids,
        extra_ids=vocabulary.extra_ids,
        model_type=sentencepiece_model_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type),
        byte_fallback=proto.trainer_spec.byte_fallback,
        normalization=proto.normalizer_spec.name,
        pad_id=vocabulary.pad_id,
        eos_id=vocabulary.eos_id,
        unk_id=vocabulary.unk_id,
    )
