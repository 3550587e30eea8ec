"""The languages table: coverage, fields, alias lookups and errors."""

import json
import subprocess
import sys

import pytest

from palimix import languages
from palimix.errors import UnknownLanguageError

# The 36 Crossmodal-3600 languages, as the benchmark's locales name them.
XM3600_LOCALES = """ar bn cs da de el en es fa fi fil fr he hi hr hu id it ja ko mi nl no
pl pt quz ro ru sv sw te th tr uk vi zh""".split()


def test_table_covers_mc4_xm3600_and_more_than_120():
    assert len(languages.codes()) >= 120
    assert len(languages.codes("mc4")) == 101
    assert sorted(languages.codes("xm3600")) == sorted(XM3600_LOCALES)
    for code in ["quz", "fil", "mi", "haw", "ceb", "hmn"]:
        assert languages.get(code).code == code


@pytest.mark.parametrize(
    "code, name, script, direction, segmentation",
    [
        ("de", "German", "Latn", "ltr", "space"),
        ("ar", "Arabic", "Arab", "rtl", "space"),
        ("he", "Hebrew", "Hebr", "rtl", "space"),
        ("zh", "Chinese", "Hans", "ltr", "jieba"),
        ("ja", "Japanese", "Jpan", "ltr", "fugashi"),
        ("th", "Thai", "Thai", "ltr", "pythainlp"),
        ("km", "Khmer", "Khmr", "ltr", "char"),
        ("hi", "Hindi", "Deva", "ltr", "space"),
        ("ur", "Urdu", "Arab", "rtl", "space"),
    ],
)
def test_entry_fields(code, name, script, direction, segmentation):
    lang = languages.get(code)
    assert (lang.name, lang.script, lang.direction, lang.segmentation) == (name, script, direction, segmentation)
    assert lang.autonym and lang.autonym != ""


def test_every_entry_is_well_formed():
    for lang in languages.all_languages():
        assert lang.direction in ("ltr", "rtl"), lang
        assert lang.segmentation in languages.SEGMENTATIONS, lang
        assert lang.scripts and all(len(s) == 4 and s.istitle() for s in lang.scripts), lang
        assert set(lang.groups) <= set(languages.GROUPS) and lang.groups, lang
        assert lang.name and lang.autonym, lang


def test_serbian_and_uzbek_list_more_than_one_script():
    assert set(languages.get("sr").scripts) >= {"Cyrl", "Latn"}
    assert set(languages.get("uz").scripts) >= {"Latn", "Cyrl"}


@pytest.mark.parametrize(
    "alias, code",
    [("iw", "he"), ("tl", "fil"), ("zh-Hans", "zh"), ("zh_Hant", "zh"), ("zh-TW", "zh"), ("pt-BR", "pt"),
     ("EN", "en"), ("deu", "de"), (" fr ", "fr"), ("in", "id"), ("ji", "yi")],
)
def test_aliases(alias, code):
    assert languages.normalize(alias) == code
    assert languages.get(alias).code == code


@pytest.mark.parametrize("bad", ["xx", "klingon", "", "   ", None, 42, "en-"])
def test_unknown_codes_raise_clear_errors(bad):
    with pytest.raises(UnknownLanguageError) as e:
        languages.get(bad)
    assert "language code" in str(e.value).lower()


def test_unknown_code_names_close_matches():
    with pytest.raises(UnknownLanguageError, match=r"Did you mean: de \(German\)"):
        languages.get("germn")
    # UnknownLanguageError is also a KeyError, so dict-style callers can catch it.
    assert issubclass(UnknownLanguageError, KeyError)


def test_unknown_group():
    with pytest.raises(UnknownLanguageError, match="groups"):
        languages.codes("webli2")


def test_cli_languages_json_and_exit_codes():
    cmd = [sys.executable, "-m", "palimix.cli", "languages"]
    out = subprocess.run(cmd + ["--json", "iw", "th"], capture_output=True, text=True, check=True)
    entries = json.loads(out.stdout)
    assert [e["code"] for e in entries] == ["he", "th"]
    assert entries[0]["direction"] == "rtl"
    table = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert table.stdout.strip().endswith(f"{len(languages.codes())} languages")
    bad = subprocess.run(cmd + ["xx"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "Unknown language code 'xx'" in bad.stderr and "Traceback" not in bad.stderr
