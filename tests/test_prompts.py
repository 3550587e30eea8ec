"""palimix.prompts: the shipped templates, filling in fields, fallbacks, user files, errors."""

import logging
import string

import pytest

from palimix import languages, prompts
from palimix.errors import UnknownLanguageError, UnknownNameError, UsageError


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    """Each test starts from the shipped templates (and no PALIMIX_PROMPTS)."""
    monkeypatch.delenv(prompts.ENV_VAR, raising=False)
    prompts.reset()
    yield
    prompts.reset()


def _fields_used(text):
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


# --- the shipped data ---------------------------------------------------------------


def test_every_kind_and_style_has_a_fallback_row():
    for style in prompts.STYLES:
        if not prompts.style(style).every_kind:  # verbatim: only kinds with a prompt text.
            continue
        for kind in prompts.KINDS:
            assert prompts.ANY_LANGUAGE in prompts.templates(kind, style), (style, kind)


@pytest.mark.parametrize("kind", prompts.KINDS)
def test_every_template_has_exactly_the_placeholders_its_kind_needs(kind):
    needed = prompts.placeholders(kind)
    # Derived names palimix fills in: the prompt language, and the source language's name.
    optional = {"lang", "language_name"} | ({"source_name"} if "source" in needed else set())
    for style in prompts.STYLES:
        for language, text in prompts.templates(kind, style).items():
            used = _fields_used(text)
            as_fields = {"source" if name == "source_name" else name for name in used}
            assert needed <= as_fields, (style, kind, language, text)
            assert used <= needed | optional, (style, kind, language, text)


def test_placeholders_per_kind():
    assert prompts.placeholders("caption") == set()
    assert prompts.placeholders("vqa") == {"question"}
    assert prompts.placeholders("classification_choices") == {"classes"}
    assert prompts.placeholders("translation") == {"source", "text"}
    assert prompts.placeholders("span_corruption") == {"text"}
    assert prompts.placeholders("prefix_lm") == {"text"}


def test_natural_templates_are_localized_in_at_least_30_languages_for_every_kind():
    for kind in prompts.KINDS:
        localized = set(prompts.templates(kind, "natural")) - {prompts.ANY_LANGUAGE}
        assert len(localized) >= 30, kind
        assert all(languages.normalize(code) == code for code in localized)


def test_natural_templates_cover_crossmodal_3600_but_two():
    localized = set(prompts.templates("caption", "natural"))
    assert set(languages.codes("xm3600")) - localized == {"mi", "quz"}


def test_localized_rows_are_not_copies_of_english():
    english = prompts.templates("caption", "natural")["en"]
    for language, text in prompts.templates("caption", "natural").items():
        if language not in ("en", prompts.ANY_LANGUAGE):
            assert text != english, language


# --- pali style ---------------------------------------------------------------------


def test_pali_prompts():
    assert prompts.prompt("caption", "de") == "caption de"
    assert prompts.prompt("vqa", "de", question="Welche Farbe hat das Auto?") == "answer de Welche Farbe hat das Auto?"
    assert prompts.prompt("ocr", "ja") == "ocr"
    assert prompts.prompt("classification", "en") == "classify en"
    assert prompts.prompt("classification_choices", "en", classes=["cat", "dog", "tench, Tinca tinca"]) == (
        "classify en cat ; dog ; tench, Tinca tinca"
    )
    assert prompts.prompt("translation", "de", source="en", text="Good morning") == "translate en de: Good morning"
    assert prompts.prompt("span_corruption", "fr", text="Le <extra_id_0> noir") == "fill fr Le <extra_id_0> noir"
    assert prompts.prompt("prefix_lm", "hi", text="नमस्ते") == "continue hi नमस्ते"


def test_language_aliases_are_normalized():
    assert prompts.prompt("caption", "iw") == "caption he"
    assert prompts.prompt("caption", "zh-Hans") == "caption zh"
    assert prompts.prompt("translation", "tl", source="iw", text="x") == "translate he fil: x"


# --- natural style ------------------------------------------------------------------


def test_natural_prompts_in_their_language():
    assert prompts.prompt("caption", "de", style="natural") == "Beschreibe das Bild auf Deutsch."
    assert prompts.prompt("vqa", "en", style="natural", question="Is it red?") == (
        "Answer the question in English: Is it red?"
    )
    assert prompts.prompt("ocr", "zh", style="natural") == "读出图片中的文字。"


def test_translation_names_the_source_language_in_the_prompt_language_from_cldr():
    import babel

    text = prompts.prompt("translation", "fr", style="natural", source="en", text="Hello")
    assert text == "Traduis en français (langue source : anglais) : Hello"
    assert babel.Locale("fr").languages["en"] == "anglais"  # The name comes from CLDR.
    assert "Englisch" in prompts.prompt("translation", "de", style="natural", source="en", text="x")
    assert "英語" in prompts.prompt("translation", "ja", style="natural", source="en", text="x")


def test_class_lists_are_joined_the_way_the_language_does():
    assert prompts.prompt("classification_choices", "de", style="natural", classes=["Katze", "Hund", "Vogel"]) == (
        "Was davon ist auf dem Bild zu sehen: Katze, Hund oder Vogel? Antworte auf Deutsch."
    )
    assert "猫または犬" in prompts.prompt("classification_choices", "ja", style="natural", classes=["猫", "犬"])
    # A string is taken as an already formatted list.
    assert "cat/dog" in prompts.prompt("classification_choices", "en", style="natural", classes="cat/dog")


def test_missing_natural_template_falls_back_to_english_naming_the_language(caplog):
    with caplog.at_level(logging.WARNING, logger="palimix.prompts"):
        text = prompts.prompt("caption", "mi", style="natural")
        prompts.prompt("caption", "mi", style="natural")
    assert text == "Describe the image in Māori."
    warnings = [r for r in caplog.records if "English fallback" in r.getMessage()]
    assert len(warnings) == 1  # Once per kind and language, not once per example.
    assert prompts.template_for("caption", "mi", "natural").language == prompts.ANY_LANGUAGE
    assert prompts.prompt("translation", "quz", style="natural", source="de", text="x") == (
        "Translate into Cusco Quechua (source language: German): x"
    )


def test_language_names_cldr_lacks_fall_back_to_the_autonym():
    # CLDR has no German name for Cusco Quechua: use its own name.
    assert prompts.language_name("quz", "de") == "Runasimi"
    assert prompts.language_name("quz", "en") == "Cusco Quechua"
    assert prompts.language_name("en", "de") == "Englisch"


# --- errors -------------------------------------------------------------------------


def test_unknown_kind_style_and_language_are_clear_errors():
    with pytest.raises(UnknownNameError, match="Unknown prompt kind 'captoin'.*Did you mean: caption"):
        prompts.prompt("captoin", "de")
    with pytest.raises(UnknownNameError, match="Unknown prompt style 'nat'.*natural"):
        prompts.prompt("caption", "de", style="nat")
    with pytest.raises(UnknownLanguageError, match="Unknown language code 'xx'"):
        prompts.prompt("caption", "xx")
    with pytest.raises(UnknownLanguageError):
        prompts.prompt("caption", "")
    with pytest.raises(UnknownLanguageError, match="'zz'"):
        prompts.prompt("translation", "de", source="zz", text="x")
    with pytest.raises(UnknownNameError):
        prompts.placeholders("nope")


def test_missing_unexpected_and_empty_fields_are_usage_errors():
    with pytest.raises(UsageError, match="'vqa' needs question; missing question"):
        prompts.prompt("vqa", "de")
    with pytest.raises(UsageError, match="unexpected question"):
        prompts.prompt("caption", "de", question="?")
    with pytest.raises(UsageError, match="classification_choices"):
        prompts.prompt("classification", "de", classes=["a"])
    with pytest.raises(UsageError, match="empty"):
        prompts.prompt("vqa", "de", question="   ")
    with pytest.raises(UsageError, match="empty list"):
        prompts.prompt("classification_choices", "de", classes=[])
    with pytest.raises(UsageError, match="must be a string"):
        prompts.prompt("vqa", "de", question=3)


def test_bytes_fields_are_decoded_as_utf8():
    assert prompts.prompt("vqa", "de", question="Wo ist die Straße?".encode()) == "answer de Wo ist die Straße?"


# --- user templates -----------------------------------------------------------------

HEADER = "style\tkind\tlanguage\ttemplate\n"


def test_user_file_adds_a_language_and_replaces_a_row(tmp_path):
    path = tmp_path / "mine.tsv"
    path.write_text(
        "# my prompts\n" + HEADER
        + "natural\tcaption\tmi\tWhakaahuatia te whakaahua.\n"
        + "pali\tcaption\t*\tdescribe {lang}\n",
        encoding="utf-8",
    )
    assert prompts.load_templates(path) == 2
    assert prompts.prompt("caption", "mi", style="natural") == "Whakaahuatia te whakaahua."
    assert prompts.prompt("caption", "de") == "describe de"
    prompts.reset()
    assert prompts.prompt("caption", "de") == "caption de"


def test_env_var_names_template_folders(tmp_path, monkeypatch):
    (tmp_path / "a.tsv").write_text(HEADER + "natural\tvqa\tquz\t{question} (Runasimipi)\n", encoding="utf-8")
    monkeypatch.setenv(prompts.ENV_VAR, str(tmp_path))
    prompts.reset()
    assert prompts.prompt("vqa", "quz", style="natural", question="Imataq?") == "Imataq? (Runasimipi)"


def test_env_var_naming_a_missing_path_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv(prompts.ENV_VAR, str(tmp_path / "nope.tsv"))
    prompts.reset()
    with pytest.raises(UsageError, match="PALIMIX_PROMPTS.*does not exist"):
        prompts.prompt("caption", "de")


def test_register_template_checks_placeholders():
    prompts.register_template("vqa", "mi", "Whakautua: {question}")
    assert prompts.prompt("vqa", "mi", style="natural", question="He aha?") == "Whakautua: He aha?"
    with pytest.raises(UsageError, match=r"must contain \{question\}"):
        prompts.register_template("vqa", "mi", "Whakautua.")
    with pytest.raises(UsageError, match=r"\{source_name\} is not one of them"):
        prompts.register_template("caption", "mi", "{source_name}")


@pytest.mark.parametrize(
    "row, message",
    [
        ("natural\tcaption\tde", "expected 4 tab-separated columns"),
        ("natural\tcaptoin\tde\tx", r"bad\.tsv:2: Unknown prompt kind"),
        ("formal\tcaption\tde\tx", "Unknown prompt style"),
        ("natural\tcaption\txx\tx", r"bad\.tsv:2: Unknown language code 'xx'"),
        ("natural\tcaption\tde\t", "empty template"),
        ("natural\tvqa\tde\tFrage: {frage}", r"\{frage\} is not one of them"),
        ("natural\tvqa\tde\tFrage: {question!r}", "plain names"),
        ("natural\tvqa\tde\tFrage: {question", "bad template"),
        ("natural\tvqa\tde\tFrage: {}", "plain names"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, row, message):
    path = tmp_path / "bad.tsv"
    path.write_text(HEADER + row + "\n", encoding="utf-8")
    with pytest.raises((UsageError, UnknownNameError, UnknownLanguageError), match=message):
        prompts.load_templates(path)


def test_duplicate_rows_in_one_file_and_missing_header_are_errors(tmp_path):
    path = tmp_path / "dup.tsv"
    path.write_text(HEADER + "natural\tocr\tde\tLies.\nnatural\tocr\tde\tLies!\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"dup\.tsv:3: duplicate row.*first at .*dup\.tsv:2"):
        prompts.load_templates(path)
    path.write_text("natural\tocr\tde\tLies.\n", encoding="utf-8")
    with pytest.raises(UsageError, match="expected the header"):
        prompts.load_templates(path)
    with pytest.raises(UsageError, match="not found"):
        prompts.load_templates(tmp_path / "missing.tsv")


def test_literal_braces_are_escaped():
    prompts.register_template("caption", "mi", "{{json}} {language_name}")
    assert prompts.prompt("caption", "mi", style="natural") == "{json} Māori"


# --- in a tf.data pipeline ----------------------------------------------------------


def test_prompt_tf_matches_prompt_for_tensor_fields():
    import tensorflow as tf

    questions = ["Welche Farbe?", "Wie viele Hunde?"]
    got = prompts.prompt_tf("vqa", "de", style="natural", question=tf.constant(questions))
    want = [prompts.prompt("vqa", "de", style="natural", question=q) for q in questions]
    assert [s.decode() for s in got.numpy()] == want

    ds = tf.data.Dataset.from_tensor_slices({"text": ["Hallo Welt"]})
    ds = ds.map(lambda ex: prompts.prompt_tf("translation", "fr", style="natural", source="de", text=ex["text"]))
    assert next(iter(ds)).numpy().decode() == "Traduis en français (langue source : allemand) : Hallo Welt"
    assert prompts.prompt_tf("caption", "de").numpy().decode() == "caption de"


# --- `palimix prompts` --------------------------------------------------------------


def test_cli_lists_templates_and_what_a_language_gets(capsys):
    import json

    from palimix import cli

    assert cli.main(["prompts", "--kind", "caption", "--style", "natural", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["language"] for r in rows} >= {"*", "de", "zh"}
    assert cli.main(["prompts", "--language", "mi", "--kind", "vqa"]) == 0
    out = capsys.readouterr().out
    assert "answer {lang} {question}" in out and "English fallback" in out
    assert cli.main(["prompts", "--kind", "captoin"]) == 2
    assert "Unknown prompt kind" in capsys.readouterr().err
    assert cli.main(["prompts", "--language", "xx"]) == 2
