"""palimix.vocab: the shipped vocabulary round-trips every script exactly, in Python
and in TensorFlow; its build is recorded; other models load by path or gin."""

import json
import pathlib
import shutil

import gin
import pytest

from palimix import vocab
from palimix.errors import UsageError

# One sample per script, chosen to include what a normalizing tokenizer would change:
# combining marks, full-width and compatibility characters, zero-width (non-)joiners,
# bidi marks, characters surely outside an 8k vocabulary.
SAMPLES = {
    "latin_diacritics": "Ærøskøbing, Łódź, Şişli, Nguyễn Thị Minh Khai, naïve café, Ǆemal",
    "latin_decomposed": "Cafe\u0301 vs Café: e + U+0301 stays decomposed",
    "cyrillic": "Съешь же ещё этих мягких французских булок, да выпей чаю. Ґанок, їжак, Ђорђе",
    "arabic": "وُلِدَ جميعُ الناسِ أحراراً متساوين في الكرامة والحقوق. ١٢٣ ؟",
    "persian_zwnj": "می‌خواهم کتاب‌ها را بخوانم",
    "hebrew": "כָּל בְּנֵי הָאָדָם נוֹלְדוּ בְּנֵי חוֹרִין \u200fשָׁוִים",
    "devanagari": "सभी मनुष्यों को गौरव और अधिकारों के मामले में जन्मजात स्वतन्त्रता प्राप्त है। क्ष त्र ज्ञ",
    "han": "人人生而自由，在尊严和权利上一律平等。龘 𠀋 齉",
    "kana": "すべての人間は、生まれながらにして自由であり、カタカナ ｶﾀｶﾅ ヴ",
    "hangul": "모든 인간은 태어날 때부터 자유로우며 그 존엄과 권리에 있어 동등하다. 똠방각하 각",
    "thai": "มนุษย์ทั้งหลายเกิดมามีอิสระและเสมอภาคกันในเกียรติศักดิ์และสิทธิ",
    "georgian": "ყველა ადამიანი იბადება თავისუფალი და თანასწორი თავისი ღირსებითა და უფლებებით",
    "greek": "Όλοι οι άνθρωποι γεννιούνται ελεύθεροι και ίσοι στην αξιοπρέπεια ΐ ΰ ϐ",
    "ethiopic": "የሰው ልጅ ሁሉ ሲወለድ ነጻና በክብርና በመብትም እኩልነት ያለው ነው። ፩፪፫",
    "khmer": "មនុស្សទាំងអស់ កើតមកមានសេរីភាព និងសមភាព ក្នុងសេចក្ដីថ្លៃថ្នូរ",
    "tamil": "மனிதப் பிறவியினர் சகலரும் சுதந்திரமாகவே பிறக்கின்றனர்; க்ஷ ஸ்ரீ",
    "emoji": "Good 👍🏽 family 👩\u200d👩\u200d👧\u200d👦 flag 🇩🇪 keycap 1️⃣ 🫠",
    "math_letters": "𝐀𝐁𝐂 𝑥² + 𝔽ₚ ∑ᵢ ∫₀^∞ ℝⁿ → ℂ, ①②, ﬁ ﬂ, ㎏, Ⅻ",
    "fullwidth": "ＡＢＣ１２３？！（全角）",
    "whitespace": "  two leading, double  spaces, tab\there,\nnewline,\r\n crlf, trailing  ",
    "controls_and_rare": "nbsp\u00a0thin\u2009zwsp\u200bsoft\u00adhyphen \U0001d11e \ue000 \U0010fffd",
}


@pytest.fixture(scope="module")
def vocabulary():
    return vocab.default_vocabulary()


def test_default_vocabulary_is_a_small_seqio_sentencepiece_vocabulary(vocabulary):
    import seqio

    assert isinstance(vocabulary, seqio.SentencePieceVocabulary)
    assert vocabulary.vocab_size == 8192  # 8,092 pieces + 100 extra ids.
    assert vocabulary.extra_ids == 100
    assert (vocabulary.pad_id, vocabulary.eos_id, vocabulary.unk_id) == (0, 1, 2)
    assert pathlib.Path(vocab.default_vocabulary_path()).stat().st_size < 2_000_000
    info = vocab.describe(vocabulary)
    assert info.byte_fallback and info.normalization == "identity" and info.model_type == "UNIGRAM"
    assert info.pieces == 8092
    assert vocab.default_vocabulary() is vocabulary  # Cached.


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trips_exactly(vocabulary, name):
    text = SAMPLES[name]
    ids = vocabulary.encode(text)
    assert vocabulary.unk_id not in ids
    assert vocabulary.decode(ids) == text


def test_round_trips_exactly_in_tensorflow(vocabulary):
    import tensorflow as tf

    texts = list(SAMPLES.values())
    for text in texts:
        ids = vocabulary.encode_tf(tf.constant(text))
        assert ids.numpy().tolist() == vocabulary.encode(text)
        assert vocabulary.decode_tf(ids).numpy().decode("utf-8") == text


def test_edge_strings(vocabulary):
    assert vocabulary.encode("") == []
    assert vocabulary.decode([]) == ""
    for text in [" ", "  ", "\n", "a", " a", "a ", "\t\t"]:
        assert vocabulary.decode(vocabulary.encode(text)) == text, repr(text)


def test_unseen_characters_become_bytes_not_unk(vocabulary):
    sp = vocabulary.tokenizer
    ids = vocabulary.encode("\U0001d11e")  # MUSICAL SYMBOL G CLEF: surely not a piece.
    assert [sp.id_to_piece(i) for i in ids if sp.is_byte(i)] == ["<0xF0>", "<0x9D>", "<0x84>", "<0x9E>"]


def test_text_of_the_training_languages_is_shorter_than_its_characters(vocabulary):
    # Multi-character pieces, not a character vocabulary (the corpus is small, so
    # compression is modest: ~0.5-0.7 tokens per character, see build_info.json).
    from palimix import prompts

    german = "Alle Menschen sind frei und gleich an Würde und Rechten geboren."
    assert len(vocabulary.encode(german)) < 0.6 * len(german)
    russian = "Все люди рождаются свободными и равными в своем достоинстве и правах."
    assert len(vocabulary.encode(russian)) < 0.7 * len(russian)
    assert len(vocabulary.encode(prompts.prompt("caption", "en"))) <= 5


def test_extra_ids_are_the_last_ids_and_decode_as_sentinels(vocabulary):
    ids = vocabulary.encode("Le chat <extra_id_0> sur <extra_id_1>.")
    assert 8191 in ids and 8190 in ids  # <extra_id_0> is the last id, as in T5.
    assert "<extra_id_0>" in vocabulary.decode(ids)


def test_build_is_recorded():
    info = json.loads((pathlib.Path(vocab.default_vocabulary_path()).parent / "build_info.json").read_text())
    assert info["vocab_size"] == 8092 and info["extra_ids"] == 100
    assert info["trainer_options"]["normalization_rule_name"] == "identity"
    assert info["sources"]["gflanguages"]["language_script_pairs"] > 500
    import hashlib

    model = pathlib.Path(vocab.default_vocabulary_path()).read_bytes()
    assert hashlib.sha256(model).hexdigest() == info["model"]["sha256"]


def test_other_model_by_path(tmp_path):
    copy = tmp_path / "spm.model"
    shutil.copy(vocab.default_vocabulary_path(), copy)
    other = vocab.default_vocabulary(copy, extra_ids=0)
    assert other.vocab_size == 8092
    assert other.decode(other.encode("Grüße 👋")) == "Grüße 👋"


def test_missing_model_and_bad_extra_ids_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="No SentencePiece model file"):
        vocab.default_vocabulary(tmp_path / "missing.model")
    with pytest.raises(UsageError, match="extra_ids"):
        vocab.default_vocabulary(extra_ids=-1)


def test_gin_binds_path_and_extra_ids(tmp_path):
    copy = tmp_path / "spm.model"
    shutil.copy(vocab.default_vocabulary_path(), copy)
    with gin.unlock_config():
        gin.parse_config(
            f"palimix.vocab.default_vocabulary.path = '{copy}'\n"
            "palimix.vocab.default_vocabulary.extra_ids = 10\n"
        )
    try:
        bound = vocab.default_vocabulary()
        assert bound.sentencepiece_model_file == str(copy)
        assert bound.vocab_size == 8092 + 10
    finally:
        gin.clear_config()
    assert vocab.default_vocabulary().vocab_size == 8192


def test_mt5_path_is_the_published_one():
    assert vocab.MT5_VOCABULARY_PATH == "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model"


def test_cli_shows_size_and_round_trip(capsys):
    from palimix import cli

    assert cli.main(["vocab", "--json", "--encode", "Grüße 👋 𝑥"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["vocab_size"] == 8192 and out["round_trip"] and out["decoded"] == "Grüße 👋 𝑥"
    assert cli.main(["vocab"]) == 0
    assert "round-trip  exact" in capsys.readouterr().out
    assert cli.main(["vocab", "--path", "/no/such.model"]) == 2
    assert "No SentencePiece model file" in capsys.readouterr().err
