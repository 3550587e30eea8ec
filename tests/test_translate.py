"""palimix.translate: the language assignment, translating a task file with a dictionary
translator, reading the result back, and `palimix translate`."""

import json

import numpy as np
import pytest
from PIL import Image

from palimix import cli, sources, translate
from palimix.errors import UnknownLanguageError, UsageError

ENGLISH = [
    {"image_id": "a.png", "context": "Caption the image.", "label": "A dog."},
    {"image_id": "b.png", "context": "Caption the image.", "label": "Two cats."},
    {"image_id": "c.png", "context": "How many cats?", "label": "two"},
    {"image_id": "a.png", "context": "What animal is it?", "label": "dog"},
    {"image_id": "b.png", "context": "Caption the image.", "label": "A red bus."},
    {"image_id": "c.png", "context": "What color is the bus?", "label": ""},  # An eval-style empty label.
]
DICTIONARY = {
    "de": {"Caption the image.": "Beschreibe das Bild.", "A dog.": "Ein Hund.", "Two cats.": "Zwei Katzen.",
           "How many cats?": "Wie viele Katzen?", "two": "zwei", "What animal is it?": "Welches Tier ist das?",
           "dog": "Hund", "A red bus.": "Ein roter Bus.", "What color is the bus?": "Welche Farbe hat der Bus?"},
    "fr": {"Caption the image.": "Décris l'image.", "A dog.": "Un chien.", "Two cats.": "Deux chats.",
           "How many cats?": "Combien de chats ?", "two": "deux", "What animal is it?": "Quel animal est-ce ?",
           "dog": "chien", "A red bus.": "Un bus rouge.", "What color is the bus?": "De quelle couleur est le bus ?"},
}
CALLS = []


def dictionary_translator(texts, target_language):
    """A translator for tests: looks every text up (KeyError for one it does not know)."""
    CALLS.append((target_language, list(texts)))
    return [DICTIONARY[target_language][text] for text in texts]


@pytest.fixture
def task_file(tmp_path):
    for i, name in enumerate("abc"):
        Image.fromarray(np.full((10, 10, 3), 50 * i, np.uint8)).save(tmp_path / f"{name}.png")
    path = tmp_path / "tasks_en.json"
    path.write_text(json.dumps(ENGLISH))
    CALLS.clear()
    return path


def test_mc4_distribution_is_mblips_table():
    shares = translate.mc4_distribution()
    assert len(shares) == 96 and sum(shares.values()) == pytest.approx(1.0)
    assert shares["en"] == pytest.approx(0.4384, abs=1e-4)
    assert shares["he"] == pytest.approx(0.0019636, rel=1e-3)  # mBLIP's "iw".
    assert max(shares, key=shares.get) == "en" and sorted(shares, key=shares.get)[-2:] == ["ru", "en"]
    subset = translate.mc4_distribution(["de", "fr"])
    assert subset["de"] == pytest.approx(6.0886 / (6.0886 + 5.0656), rel=1e-4)
    with pytest.raises(UsageError, match="no share for \\['la'\\]"):
        translate.mc4_distribution(["de", "la"])  # NLLB has no Latin: mBLIP's table neither.
    with pytest.raises(UnknownLanguageError):
        translate.mc4_distribution(["xx-nope"])


def test_allocation_adds_up_and_the_assignment_is_reproducible():
    shares = translate.mc4_distribution()
    for count in (0, 1, 7, 1000, 12345):
        sizes = translate.allocate(count, shares)
        assert sum(sizes.values()) == count
        assert all(abs(sizes[c] - count * s) < 1 for c, s in shares.items())
    assert translate.allocate(10, {"de": 0.5, "fr": 0.25, "sw": 0.25}) == {"de": 5, "fr": 3, "sw": 2}
    first = translate.assign_languages(1000, shares, seed=3)
    assert first == translate.assign_languages(1000, shares, seed=3)
    assert first != translate.assign_languages(1000, shares, seed=4)
    assert {c: first.count(c) for c in set(first)} == {c: n for c, n in translate.allocate(1000, shares).items() if n}


def test_translate_task_file_with_a_dictionary_translator(task_file, tmp_path):
    result = translate.translate_task_file(str(task_file), str(tmp_path / "out"), translate=dictionary_translator,
                                           languages={"en": 1, "de": 1, "fr": 1}, seed=0, batch_size=4)
    assert result.path == str(tmp_path / "out" / "tasks_en.jsonl")
    assert result.counts == {"en": 2, "de": 2, "fr": 2}
    lines = [json.loads(line) for line in open(result.path, encoding="utf-8")]
    assert [line["id"] for line in lines] == ["0", "1", "2", "3", "4", "5"]  # Input order, ids = positions.
    assert [line["language"] for line in lines] == translate.assign_languages(6, {"en": 1 / 3, "de": 1 / 3, "fr": 1 / 3}, 0)
    sent = 0
    for line, original in zip(lines, ENGLISH):
        assert line["image_id"] == original["image_id"]
        if line["language"] == "en":
            assert (line["context"], line["label"]) == (original["context"], original["label"])
            assert "english_label" not in line
            continue
        words = DICTIONARY[line["language"]]
        assert line["context"] == words[original["context"]]
        assert line["label"] == (words[original["label"]] if original["label"] else "")  # "" is not sent.
        assert (line["english_context"], line.get("english_label", "")) == (original["context"], original["label"])
        sent += 1 + bool(original["label"])
    assert result.texts_translated == sent
    assert all(len(texts) <= 4 for _, texts in CALLS)
    # The same seed gives the same file.
    again = translate.translate_task_file(str(task_file), str(tmp_path / "again"), translate=dictionary_translator,
                                          languages={"en": 1, "de": 1, "fr": 1}, seed=0)
    assert open(again.path, encoding="utf-8").read() == open(result.path, encoding="utf-8").read()


def test_the_reader_loads_the_translated_file(task_file, tmp_path):
    result = translate.translate_task_file(str(task_file), str(tmp_path / "out"), translate=dictionary_translator,
                                           languages={"de": 1, "fr": 1, "en": 1}, seed=1)
    source = sources.MblipTaskFile(result.path, str(tmp_path))
    assert source.fields == ("question", "answers", "english")
    assert source.languages() == ["de", "en", "fr"]
    records = {r["id"]: r for r in source.records("train")}
    lines = {line["id"]: line for line in map(json.loads, open(result.path, encoding="utf-8"))}
    for example_id, record in records.items():
        line = lines[example_id]
        assert record["language"] == line["language"] and record["question"] == line["context"]
        assert record["english"] == ([line["english_label"]] if line.get("english_label") else [])
        assert record["image/path"] == str(tmp_path / line["image_id"])


def test_bad_translators_and_files_are_clear_errors(task_file, tmp_path):
    def short(texts, language):
        return texts[:-1]

    with pytest.raises(UsageError, match="returned 10 items for 11 texts"):
        translate.translate_task_file(str(task_file), str(tmp_path), translate=short, languages={"de": 1})
    with pytest.raises(UsageError, match="returned None, not a string"):
        translate.translate_task_file(str(task_file), str(tmp_path), translate=lambda t, l: [None] * len(t),
                                      languages={"de": 1})
    with pytest.raises(UsageError, match="must be a callable"):
        translate.translate_task_file(str(task_file), str(tmp_path), translate="nllb", languages={"de": 1})
    with pytest.raises(UsageError, match="no positive weight"):
        translate.translate_task_file(str(task_file), str(tmp_path), translate=short, languages={"de": 0})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": "a.png", "context": "x", "label": 3}]))
    with pytest.raises(UsageError, match="record 0: 'label' must be text to translate"):
        translate.translate_task_file(str(bad), str(tmp_path), translate=short, languages={"de": 1})


def test_palimix_translate_command(task_file, tmp_path, monkeypatch, capsys):
    # A user's translator module: a dictionary lookup here, an NLLB wrapper in real use.
    (tmp_path / "my_translator.py").write_text(
        f"WORDS = {DICTIONARY!r}\n\ndef translate(texts, language):\n    return [WORDS[language][t] for t in texts]\n",
        encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "cli"
    assert cli.main(["translate", str(task_file), str(out), "--translator", "my_translator:translate",
                     "--languages", "de=1,fr=1", "--seed", "5"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out / 'tasks_en.jsonl'}: 6 records" in printed and "de 3, fr 3" in printed
    lines = [json.loads(line) for line in open(out / "tasks_en.jsonl", encoding="utf-8")]
    assert [line["language"] for line in lines] == translate.assign_languages(6, {"de": 0.5, "fr": 0.5}, 5)
    assert cli.main(["translate", str(task_file), str(out), "--translator", "my_translator"]) == 2
    assert "module:function" in capsys.readouterr().err
