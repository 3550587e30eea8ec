"""Machine-translating an English task file into many languages, as mBLIP made its data.

    from palimix import translate
    result = translate.translate_task_file(
        "coco_train_en.json", "out/", translate=my_nllb,      # (texts, language) -> texts
        languages=translate.mc4_distribution(), seed=42)
    # -> out/coco_train_en.jsonl, readable with palimix.sources.MblipTaskFile

What it does (mBLIP's `data/*/translate_train.py`, made reproducible and lossless):
1. every record gets one language: the records in an order shuffled with `seed`
   (numpy's PCG64), cut into consecutive blocks whose sizes follow the distribution
   (largest remainders, so the sizes add up to the record count: mBLIP's int() left
   the rest out);
2. for each language but the source's, its records' `fields` (default `context` and
   `label`) go to `translate(texts, language)` in batches of `batch_size`; empty texts
   are not sent;
3. the output holds every record once, in the input's order, as JSON Lines: the
   record's keys, the translated fields, `language`, `id` (its position in the input
   when it had none) and, for translated records, `english_label` (and
   `english_context`): the English originals, which
   `add_task(english_answer_share=...)` answers some examples with.

`translate` is any callable `(texts: list[str], target_language: str) -> list[str]`,
the language a palimix code ("de", "zh", "he"): a user's NLLB (mapping codes to
NLLB's "deu_Latn" itself), a dictionary in tests. It must return one string per
text, else UsageError. `palimix translate SRC OUT --translator module:function` runs
it from the command line.

The distribution: {language: weight} (normalized), or `mc4_distribution()`, mBLIP's:
each language's share of mC4 (`palimix/data/mc4_shares.tsv`, copied from mBLIP's
translate scripts; English about 44%).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import importlib.resources
import json
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from palimix import languages as languages_lib
from palimix.errors import UsageError

DEFAULT_FIELDS = ("context", "label")
ENGLISH = "en"


@functools.lru_cache(maxsize=None)
def _mc4_percent() -> dict[str, float]:
    path = importlib.resources.files("palimix") / "data" / "mc4_shares.tsv"
    with path.open(encoding="utf-8") as f:
        rows = csv.DictReader((line for line in f if not line.startswith("#")), delimiter="\t")
        return {row["code"]: float(row["percent"]) for row in rows}


def mc4_distribution(codes: Sequence[str] | None = None) -> dict[str, float]:
    """{language: share} summing to 1: mBLIP's mC4 shares, over `codes` (default all
    96 languages of the table), renormalized. UsageError for a code mC4's table lacks."""
    table = _mc4_percent()
    if codes is None:
        codes = list(table)
    codes = [languages_lib.normalize(c) for c in codes]
    missing = [c for c in codes if c not in table]
    if missing:
        raise UsageError(f"mC4's table (palimix/data/mc4_shares.tsv) has no share for {missing}; pass weights.")
    total = sum(table[c] for c in codes)
    return {c: table[c] / total for c in codes}


def normalized_distribution(languages: Mapping[str, float] | Sequence[str] | None) -> dict[str, float]:
    """{code: share} summing to 1 from {language: weight}, a list of codes (their mC4
    shares) or None (all of mC4's)."""
    if languages is None or not isinstance(languages, Mapping):
        return mc4_distribution(languages)
    weights: dict[str, float] = {}
    for code, weight in languages.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0 or not np.isfinite(weight):
            raise UsageError(f"the weight of {code!r} must be a number >= 0, got {weight!r}.")
        code = languages_lib.normalize(code)
        if code in weights:
            raise UsageError(f"the distribution names {code!r} twice (after resolving aliases).")
        weights[code] = float(weight)
    total = sum(weights.values())
    if total <= 0:
        raise UsageError("the language distribution is empty (no positive weight).")
    return {code: w / total for code, w in weights.items()}


def allocate(count: int, distribution: Mapping[str, float]) -> dict[str, int]:
    """How many of `count` records each language gets: floor(count * share), plus one
    for the largest remainders (ties: the distribution's order) until they add up."""
    exact = {code: count * share for code, share in distribution.items()}
    sizes = {code: int(np.floor(x)) for code, x in exact.items()}
    by_remainder = sorted(distribution, key=lambda c: -(exact[c] - sizes[c]))  # Stable: ties keep order.
    for code in by_remainder[: count - sum(sizes.values())]:
        sizes[code] += 1
    return sizes


def assign_languages(count: int, distribution: Mapping[str, float], seed: int) -> list[str]:
    """The language of each of `count` records (in input order): consecutive blocks of
    a seeded permutation, sized by `allocate`."""
    order = np.random.default_rng(seed).permutation(count)
    assigned = [""] * count
    start = 0
    for code, size in allocate(count, distribution).items():
        for index in order[start:start + size]:
            assigned[int(index)] = code
        start += size
    return assigned


@dataclasses.dataclass(frozen=True)
class Translated:
    path: str  # The JSON Lines file written.
    counts: dict[str, int]  # Records per language.
    texts_translated: int  # Texts sent to the translator.


def translate_task_file(src: str, out_dir: str, *, translate: Callable[[list[str], str], Sequence[str]],
                        languages: Mapping[str, float] | Sequence[str] | None = None, seed: int = 0,
                        fields: Sequence[str] = DEFAULT_FIELDS, source_language: str = ENGLISH,
                        batch_size: int = 256) -> Translated:
    """Writes `<out_dir>/<src stem>.jsonl`: the records of task file `src` spread over
    `languages` and translated into them (module doc)."""
    from palimix.sources.mblip import read_task_file  # Imports TensorFlow (file reading).

    if not callable(translate):
        raise UsageError(f"translate= must be a callable (texts, target_language) -> texts, got {translate!r}.")
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, got {batch_size}.")
    source_language = languages_lib.normalize(source_language)
    records = [_checked(entry, index, src, fields) for index, entry in enumerate(read_task_file(src))]
    assigned = assign_languages(len(records), normalized_distribution(languages), seed)
    sent = 0
    for code in dict.fromkeys(assigned):
        if code != source_language:
            members = [r for r, c in zip(records, assigned) if c == code]
            sent += _translate_records(members, code, fields, translate, batch_size, src)
    for record, code in zip(records, assigned):
        record["language"] = code
    path = os.path.join(out_dir, os.path.splitext(os.path.basename(src))[0] + ".jsonl")
    _write_json_lines(path, records)
    counts = {code: assigned.count(code) for code in dict.fromkeys(assigned)}
    return Translated(path, counts, sent)


def _checked(entry, index: int, src: str, fields: Sequence[str]) -> dict:
    """A copy of the record, with an id; UsageError for a field that is not text."""
    if not isinstance(entry, dict):
        raise UsageError(f"{src} record {index}: expected an object, got {entry!r:.80}.")
    for field in fields:
        if not isinstance(entry.get(field), str):
            raise UsageError(f"{src} record {index}: {field!r} must be text to translate, got {entry.get(field)!r:.80}.")
    return {**entry, "id": str(entry.get("id", index))}


def _translate_records(records: list[dict], code: str, fields: Sequence[str], translate, batch_size: int,
                       src: str) -> int:
    """Translates `fields` of `records` into `code` in place (originals kept as
    english_<field>); returns how many texts were sent."""
    slots = [(r, f) for r in records for f in fields if r[f].strip()]
    for start in range(0, len(slots), batch_size):
        batch = slots[start:start + batch_size]
        texts = [r[f] for r, f in batch]
        out = translate(list(texts), code)
        _check_translations(out, texts, code, translate, src)
        for (record, field), text in zip(batch, out):
            record[f"english_{field}"] = record[field]
            record[field] = text
    return len(slots)


def _check_translations(out, texts: list[str], code: str, translate, src: str) -> None:
    name = getattr(translate, "__qualname__", repr(translate))
    if isinstance(out, (str, bytes)) or not isinstance(out, Sequence) or len(out) != len(texts):
        got = f"{len(out)} items" if isinstance(out, Sequence) and not isinstance(out, (str, bytes)) else repr(out)[:80]
        raise UsageError(f"translating {src} into {code!r}: {name} returned {got} for {len(texts)} texts "
                         f"(it must return one string per text).")
    bad = [t for t in out if not isinstance(t, str)]
    if bad:
        raise UsageError(f"translating {src} into {code!r}: {name} returned {bad[0]!r:.80}, not a string.")


def _write_json_lines(path: str, records: list[dict]) -> None:
    import tensorflow as tf

    tf.io.gfile.makedirs(os.path.dirname(path) or ".")
    with tf.io.gfile.GFile(path, "w") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def load_translator(spec: str) -> Callable:
    """`module:function` -> the function (for `palimix translate --translator`)."""
    import importlib

    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"--translator takes module:function (e.g. my_nllb:translate), got {spec!r}.")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise UsageError(f"--translator {spec}: cannot import {module_name!r} ({e}).") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise UsageError(f"--translator {spec}: {module_name} has no function {attribute!r}.")
    return function
