"""The instruct and verbatim prompt styles: several templates per language chosen per
example, the answer language, and the English-answer share, through real tasks."""

import json
import logging
import string

import numpy as np
import pytest
import seqio
import tensorflow as tf
from PIL import Image

from palimix import cli, prompts, sources
from palimix.errors import UsageError
from palimix.preprocessors import prompts as prompt_preprocessors
from palimix.tasks import add_task, remove, task_info

LENGTHS = {"inputs": 96, "targets": 32, "image": 16}
GROUPS = ("ti_caption", "ti_vqa", "ti_verbatim", "ti_natural", "ti_no_english")


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    monkeypatch.delenv(prompts.ENV_VAR, raising=False)
    prompts.reset()
    prompt_preprocessors.reset_english_answer_skips()
    yield
    prompts.reset()
    for name in GROUPS:
        remove(name)


def _fields(text):
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


# --- the shipped rows -------------------------------------------------------------------


def test_instruct_has_several_templates_per_kind_and_they_name_the_answer_language():
    # Kinds whose answer has no language of its own (read text, boxes) name none.
    no_language = {"ocr", "detection", "referring"}
    for kind in prompts.KINDS:
        fallback = prompts.variants(kind, "sw", "instruct")
        assert len(fallback) >= 2 and all(t.language == prompts.ANY_LANGUAGE for t in fallback), kind
        for language in ("de", "fr", "es", "sw"):
            for template in prompts.variants(kind, language, "instruct"):
                named = bool(_fields(template.text) & {"language_name", "lang"})
                assert named == (kind not in no_language), template


def test_localized_instruct_rows_replace_the_fallback_for_their_kind_only():
    german = prompts.variants("caption", "de", "instruct")
    assert [t.language for t in german] == ["de"] * 3
    assert prompts.variants("ocr", "de", "instruct")[0].language == prompts.ANY_LANGUAGE
    assert prompts.prompt("caption", "de", style="instruct") == "Beschreibe das Bild auf Deutsch."
    # The language name is CLDR's, in the row's language.
    assert prompts.prompt("caption", "de", style="instruct", answer_language="en") == "Beschreibe das Bild auf Englisch."
    assert prompts.prompt("caption", "fr", style="instruct", answer_language="en", variant=2) == "Résume l'image en anglais."
    assert prompts.prompt("vqa", "sw", style="instruct", variant=0, question="Ni nini?") == "Ni nini? Short Swahili answer:"
    assert (prompts.prompt("vqa", "sw", style="instruct", variant=0, answer_language="en", question="Ni nini?")
            == "Ni nini? Short English answer:")


def test_answer_language_in_the_other_styles():
    # pali's {lang} is the answer language (PaLI asks "answer en <German question>").
    assert prompts.prompt("vqa", "de", style="pali", answer_language="en", question="Was?") == "answer en Was?"
    with pytest.raises(UsageError, match="does not name the answer language"):
        prompts.prompt("caption", "de", style="natural", answer_language="en")
    with pytest.raises(UsageError, match="variant 6 does not exist"):
        prompts.prompt("caption", "sw", style="instruct", variant=6)


def test_variant_for_is_a_pure_function_of_language_and_id_and_uses_every_template():
    picks = [prompts.variant_for(f"img{i}", "sw", 6) for i in range(120)]
    assert picks == [prompts.variant_for(f"img{i}", "sw", 6) for i in range(120)]
    assert set(picks) == set(range(6))
    assert max(np.bincount(picks)) < 40  # Roughly even (20 each expected).
    # The language is part of the key: the same image gets other templates elsewhere.
    assert picks != [prompts.variant_for(f"img{i}", "de", 6) for i in range(120)]
    assert prompts.variant_for(7, "sw", 6) == prompts.variant_for("7", "sw", 6)


def test_instruct_rows_from_a_file_replace_the_keys_templates(tmp_path):
    path = tmp_path / "mine.tsv"
    path.write_text("style\tkind\tlanguage\ttemplate\n"
                    "instruct\tcaption\tsw\tEleza picha kwa {language_name}.\n"
                    "instruct\tcaption\tsw\tManukuu mafupi ({language_name}):\n", encoding="utf-8")
    assert prompts.load_templates(path) == 2
    assert [t.text for t in prompts.variants("caption", "sw", "instruct")] == [
        "Eleza picha kwa {language_name}.", "Manukuu mafupi ({language_name}):"]
    assert prompts.prompt("caption", "sw", style="instruct", variant=1) == "Manukuu mafupi (Kiswahili):"
    again = tmp_path / "twice.tsv"
    again.write_text("style\tkind\tlanguage\ttemplate\ninstruct\tocr\tsw\tSoma.\ninstruct\tocr\tsw\tSoma.\n")
    with pytest.raises(UsageError, match="the same template twice"):
        prompts.load_templates(again)
    pali = tmp_path / "pali.tsv"
    pali.write_text("style\tkind\tlanguage\ttemplate\npali\tocr\tsw\tocr\npali\tocr\tsw\tread\n")
    with pytest.raises(UsageError, match="duplicate row"):
        prompts.load_templates(pali)


def test_prompts_command_lists_every_variant_of_a_language(capsys):
    assert cli.main(["prompts", "--language", "de", "--style", "instruct", "--kind", "caption", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["template"] for r in rows] == [t.text for t in prompts.variants("caption", "de", "instruct")]
    assert cli.main(["prompts", "--style", "verbatim", "--language", "de"]) == 0
    out = capsys.readouterr().out
    assert "{question}" in out and "caption" not in out


# --- through tasks ------------------------------------------------------------------------

LANGS = ("de", "fr", "sw", "en")


@pytest.fixture(scope="module")
def translated(tmp_path_factory):
    """40 records in 4 languages with real PNG images; every even one keeps its English
    original (`english`), as translated records do."""
    root = tmp_path_factory.mktemp("instruct")
    (root / "img").mkdir()
    lines = []
    for i in range(40):
        Image.fromarray(np.full((12, 14, 3), 5 * i, np.uint8)).save(root / "img" / f"{i}.png")
        language = LANGS[i % 4]
        line = {"id": f"r{i}", "image": f"{i}.png", "language": language, "captions": [f"{language} caption {i}"],
                "question": f"{language} question {i}?", "answers": [f"{language} answer {i}"]}
        if i % 8 < 4:
            line["english"] = [f"english {i}"]
        lines.append(line)
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return sources.JsonLines(str(path), str(root / "img")), lines


def _examples(name):
    task = seqio.get_mixture_or_task(name)
    return list(task.get_dataset(LENGTHS, split="train", shuffle=False, seed=0).as_numpy_iterator())


def _picked(example_id, language, share):
    return bool(prompt_preprocessors.english_answer_picked(tf.constant(example_id), tf.constant(language), share))


def test_instruct_caption_task_with_an_english_answer_share(translated):
    source, lines = translated
    add_task("ti_caption", kind="caption", source=source, languages=list(LANGS), prompt_style="instruct",
             per_language=False, image_size=16, metrics=[], english_answer_share=0.5)
    assert task_info("ti_caption_mul").english_answer_share == 0.5
    examples = _examples("ti_caption_mul")
    assert len(examples) == 40
    by_id = {line["id"]: line for line in lines}
    english_answers = expected_skips = 0
    for ex in examples:
        line = by_id[ex["id"].decode()]
        language = line["language"]
        picked = _picked(line["id"], language, 0.5)
        use_english = picked and "english" in line
        expected_skips += picked and "english" not in line
        english_answers += use_english
        count = len(prompts.variants("caption", language, "instruct"))
        expected = prompts.prompt("caption", language, style="instruct", answer_language="en" if use_english else None,
                                  variant=prompts.variant_for(line["id"], language, count))
        assert ex["inputs_pretokenized"].decode() == expected
        target = line["english"][0] if use_english else line["captions"][0]
        assert ex["targets_pretokenized"].decode() == target
        assert [r.decode() for r in ex["references"]] == ([target] if use_english else line["captions"])
        assert ex["language"].decode() == language  # The record's language, always.
    # English records are never picked; about half of the others are.
    assert not any(_picked(line["id"], "en", 0.5) for line in lines)
    assert english_answers > 0 and expected_skips > 0
    assert prompt_preprocessors.english_answer_skips() == {"ti_caption_mul": expected_skips}
    # Reproducible: a second read gives the same prompts and targets (and counts again).
    again = _examples("ti_caption_mul")
    assert [(e["inputs_pretokenized"], e["targets_pretokenized"]) for e in again] == [
        (e["inputs_pretokenized"], e["targets_pretokenized"]) for e in examples]
    assert prompt_preprocessors.english_answer_skips() == {"ti_caption_mul": 2 * expected_skips}


def test_english_skips_are_logged_with_the_example(translated, caplog):
    source, _ = translated
    add_task("ti_caption", kind="caption", source=source.for_language("sw"), languages=["sw"],
             prompt_style="instruct", image_size=16, metrics=[], english_answer_share=1.0)
    with caplog.at_level(logging.WARNING, logger="palimix.preprocessors.prompts"):
        examples = _examples("ti_caption_sw")
    # Share 1: every Swahili record with an English original answers in English.
    assert sorted(e["targets_pretokenized"].decode() for e in examples) == sorted(
        [f"english {i}" for i in (2, 10, 18, 26, 34)] + [f"sw caption {i}" for i in (6, 14, 22, 30, 38)])
    assert prompt_preprocessors.english_answer_skips() == {"ti_caption_sw": 5}
    assert "example r6 was picked for an English answer but has no English reference" in caplog.text
    assert "(further ones are only counted)" in caplog.text


def test_instruct_vqa_per_language_tasks_choose_among_the_languages_templates(translated):
    source, lines = translated
    add_task("ti_vqa", kind="vqa", source=source, languages=["de", "sw"], prompt_style="instruct", image_size=16,
             metrics=[])
    for language in ("de", "sw"):
        examples = _examples(f"ti_vqa_{language}")
        count = len(prompts.variants("vqa", language, "instruct"))
        seen = set()
        for ex in examples:
            example_id = ex["id"].decode()
            variant = prompts.variant_for(example_id, language, count)
            seen.add(variant)
            question = next(line["question"] for line in lines if line["id"] == example_id)
            assert ex["inputs_pretokenized"].decode() == prompts.prompt(
                "vqa", language, style="instruct", variant=variant, question=question)
        assert len(seen) > 1  # Several templates in use within one language.


def test_verbatim_style_uses_the_records_text_as_the_prompt(translated):
    source, lines = translated
    add_task("ti_verbatim", kind="vqa", source=source.for_language("fr"), languages=["fr"], prompt_style="verbatim",
             image_size=16, metrics=[])
    examples = _examples("ti_verbatim_fr")
    assert sorted(e["inputs_pretokenized"].decode() for e in examples) == sorted(
        line["question"] for line in lines if line["language"] == "fr")


def test_english_answer_share_errors(translated):
    source, _ = translated
    with pytest.raises(UsageError, match="does not name the answer language"):
        add_task("ti_natural", kind="caption", source=source, languages=["de"], prompt_style="natural",
                 image_size=16, metrics=[], english_answer_share=0.5)
    without = sources.JsonLines(source.path, source.image_dir, fields={"captions": "captions"})
    with pytest.raises(UsageError, match=r"english_answer_share needs the record fields \['english'\]"):
        add_task("ti_no_english", kind="caption", source=without, languages=["de"], prompt_style="instruct",
                 image_size=16, metrics=[], english_answer_share=0.5)
    with pytest.raises(UsageError, match="from 0 to 1"):
        add_task("ti_no_english", kind="caption", source=source, languages=["de"], prompt_style="instruct",
                 english_answer_share=1.5)


def test_answer_language_asks_every_example_for_another_language(translated):
    source, lines = translated
    add_task("ti_vqa", kind="vqa", source=source.for_language("sw"), languages=["sw"], prompt_style="pali",
             image_size=16, metrics=[], answer_language="en")
    questions = sorted(e["inputs_pretokenized"].decode() for e in _examples("ti_vqa_sw"))
    assert questions == sorted(f"answer en {line['question']}" for line in lines if line["language"] == "sw")
    with pytest.raises(UsageError, match="answer_language= fixes the answer language"):
        add_task("ti_no_english", kind="caption", source=source, languages=["de"], prompt_style="instruct",
                 image_size=16, metrics=[], answer_language="en", english_answer_share=0.5)
