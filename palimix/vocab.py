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

PaliGemma's vocabulary is Gemma's 256k SentencePiece plus 1,024 `<loc0000>`..`<loc1023>`
(box corners) and 128 `<seg000>`..`<seg127>` (mask codes) tokens: 257,152 ids. The model
file cannot be downloaded here; give its path (big_vision publishes it at
gs://big_vision/paligemma_tokenizer.model, the plain Gemma one at
gs://big_vision/gemma_tokenizer.model -- the tokens are added to either, as big_vision does):

    vocab = palimix.vocab.paligemma_vocabulary("/data/paligemma_tokenizer.model")

    # in a gin file (either form)
    VOCABULARY = @palimix.vocab.paligemma_vocabulary()
    palimix.vocab.paligemma_vocabulary.path = "gs://big_vision/paligemma_tokenizer.model"

    palimix.vocab.default_vocabulary.path = "gs://big_vision/gemma_tokenizer.model"
    palimix.vocab.default_vocabulary.extra_ids = 0
    palimix.vocab.default_vocabulary.tokensets = ("loc", "seg")

`default_vocabulary(tokensets=("img",))` adds `<img>` and `<img0000>`..`<img1023>` for the
image-generation kinds (text_to_image, prefix_image): 8,092 + 1,025 pieces + 100 extra ids
= 9,217 ids.

`tokensets` works on any model: `default_vocabulary(tokensets=("loc",))` is the shipped
vocabulary with the `<loc>` tokens for the detection kind (8,092 + 1,024 pieces, then the
100 extra ids: 9,216 ids, so a model for it needs vocab_size=9216). Each token is one
USER_DEFINED piece, matched before SentencePiece's segmentation: `<loc0512>` is one id
wherever it stands. The model with the added pieces is written once, content-addressed,
under $XDG_CACHE_HOME/palimix/vocab (~/.cache/...), and seqio loads it from there.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.resources
import os

import gin

from palimix.errors import UsageError

# mT5's vocabulary (Xue et al. 2021), also PaLI's text vocabulary. Its model file
# already holds the 100 sentinel pieces (hence "100extra"): load it with extra_ids=0.
MT5_VOCABULARY_PATH = "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model"
# Sentinels for span corruption (<extra_id_0> ... <extra_id_99>), as T5 and mT5.
EXTRA_IDS = 100
# PaliGemma's tokenizer (Gemma's SentencePiece; big_vision adds the tokensets to it).
PALIGEMMA_VOCABULARY_PATH = "gs://big_vision/paligemma_tokenizer.model"
# big_vision's tokensets (pp/tokenizer.py): box coordinates binned to 1024, and the 128
# codes of a mask's VQ-VAE. Added in this order, after the model's own pieces.
TOKENSETS = {
    "loc": tuple(f"<loc{i:04d}>" for i in range(1024)),
    "seg": tuple(f"<seg{i:03d}>" for i in range(128)),
    # Image targets (palimix.image_codes): the image-begin token, then one token per code
    # of a VQGAN codebook of up to 1024 codes (DaVinci's; palimix.models.vqgan).
    "img": ("<img>",) + tuple(f"<img{i:04d}>" for i in range(1024)),
}


def default_vocabulary_path() -> str:
    """The path of the SentencePiece model that ships with palimix."""
    return str(importlib.resources.files("palimix") / "data" / "vocab" / "sentencepiece.model")


@gin.configurable(module="palimix.vocab")
def default_vocabulary(path: str | os.PathLike | None = None, extra_ids: int = EXTRA_IDS, tokensets=()):
    """The vocabulary palimix uses: the shipped model, or the SentencePiece model at
    `path` (a local path or any URL tf.io.gfile reads, such as gs://), with the tokens
    of `tokensets` ("loc", "seg": see TOKENSETS) added as single pieces, then
    `extra_ids` sentinel ids appended. Returns a (cached) seqio.SentencePieceVocabulary.

    gin-configurable (`palimix.vocab.default_vocabulary.path = ...`)."""
    return load_vocabulary(path, extra_ids, tokensets)


def load_vocabulary(path: str | os.PathLike | None = None, extra_ids: int = EXTRA_IDS, tokensets=()):
    """`default_vocabulary` without gin (what the CLI uses)."""
    path = os.fspath(path) if path else default_vocabulary_path()
    if "://" not in path and not os.path.isfile(path):
        raise UsageError(f"No SentencePiece model file at {path!r}.")
    if not isinstance(extra_ids, int) or extra_ids < 0:
        raise UsageError(f"extra_ids must be a non-negative integer, got {extra_ids!r}.")
    if isinstance(tokensets, str):  # ("loc") in gin is the string "loc"
        tokensets = (tokensets,)
    unknown = [t for t in tokensets if t not in TOKENSETS]
    if unknown:
        raise UsageError(f"Unknown tokensets {unknown}: use some of {sorted(TOKENSETS)}.")
    if tokensets:
        path = _with_tokensets(path, tuple(tokensets))
    return _vocabulary(path, extra_ids)


@gin.configurable(module="palimix.vocab")
def paligemma_vocabulary(path: str | os.PathLike = PALIGEMMA_VOCABULARY_PATH):
    """PaliGemma's vocabulary: the Gemma SentencePiece model at `path` with the <loc> and
    <seg> tokens and no extra ids (Gemma: pad 0, eos 1, bos 2, unk 3; 257,152 ids)."""
    return load_vocabulary(path, extra_ids=0, tokensets=("loc", "seg"))


@functools.lru_cache(maxsize=None)
def _with_tokensets(path: str, tokensets: tuple) -> str:
    """The model at `path` with the tokensets' pieces, written once to the cache folder."""
    model = _add_pieces(_read_bytes(path), [t for name in tokensets for t in TOKENSETS[name]])
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "palimix", "vocab")
    target = os.path.join(cache, f"{hashlib.sha256(model).hexdigest()[:20]}.model")
    if not os.path.isfile(target):
        os.makedirs(cache, exist_ok=True)
        partial = f"{target}.{os.getpid()}.partial"  # whole files only, even with racing processes
        with open(partial, "wb") as f:
            f.write(model)
        os.replace(partial, target)
    return target


def _read_bytes(path: str) -> bytes:
    if "://" in path:
        import tensorflow as tf

        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def _add_pieces(model: bytes, tokens: list) -> bytes:
    """USER_DEFINED pieces (SentencePiece matches them whole, before segmenting): a token the
    model already has becomes user-defined where it is (its id is kept), a new one is
    appended -- as big_vision's tokenizer adds its tokensets, so ids agree with its files."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto.FromString(model)
    user_defined = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
    existing = {p.piece: i for i, p in enumerate(proto.pieces)}
    for token in dict.fromkeys(tokens):
        if token in existing:
            piece = proto.pieces[existing[token]]
            piece.score, piece.type = 0.0, user_defined
        else:
            proto.pieces.add(piece=token, score=0.0, type=user_defined)
    return proto.SerializeToString()


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
