"""Prompt templates per task kind, style and language, kept as data.

Every palimix example is `(image, prompt) -> target`; this module turns a task kind
and a language into the prompt text:

    >>> from palimix import prompts
    >>> prompts.prompt("caption", "de")
    'caption de'
    >>> prompts.prompt("vqa", "de", question="Welche Farbe hat das Auto?")
    'answer de Welche Farbe hat das Auto?'
    >>> prompts.prompt("caption", "de", style="natural")
    'Beschreibe das Bild auf Deutsch.'
    >>> prompts.prompt("translation", "fr", style="natural", source="en", text="Hello")
    'Traduis en français (langue source : anglais) : Hello'
    >>> prompts.prompt("caption", "de", style="instruct", answer_language="en", variant=0)
    'Beschreibe das Bild auf Englisch.'

Styles:
  - "pali": the compact PaLI/PaliGemma prompts ("caption de", "answer de <question>",
    "ocr", "translate en de: <text>"), the same for every language;
  - "natural": sentences written in the prompt's language ("Beschreibe das Bild auf
    Deutsch."), localized for 34 languages (the Crossmodal-3600 languages but Maori
    and Cusco Quechua).
  - "instruct": mBLIP-style instructions, SEVERAL per kind and language (one row
    each), every one naming the answer language where the answer has one ("Caption
    the image in {language_name}.", "{question} Short {language_name} answer:"); the
    `*` rows are English, a few languages have rows of their own. Which one an
    example gets is `variant_for(example_id, language, count)`: FarmHash
    Fingerprint64 (tf.strings.to_hash_bucket_fast) of "<language>/<id>", modulo the
    number of templates -- a pure function of the example, so the same on every run,
    machine and epoch, whatever order or shuffling (round-robin would depend on the
    reading order). mBLIP fixes one template per record too (when it writes its files).
  - "verbatim": the record's own text is the whole prompt (`{question}`), for data
    whose prompts are written already: mBLIP's released task files
    (palimix.sources.MblipTaskFile). Only kinds with a prompt text field have rows.

The answer language: `prompt(..., answer_language="en")` asks for the answer in
another language than the prompt's (`{lang}` and `{language_name}` are the answer
language's; by default the prompt's language). A template that names neither cannot
ask for another language: UsageError. `build_example(english_answer_share=...)` uses
this to ask a share of non-English examples for an English answer.

The templates live in `palimix/data/prompts/*.tsv`, one row per (style, kind,
language) with the columns `style kind language template`. `language` is a code
that `palimix.languages.normalize` accepts, or `*` for every language without a row
of its own.

Fallback (natural style): a language without its own row gets the `*` row, an English
sentence that names the language (`Describe the image in Maori.`), and palimix logs a
warning once per kind and language. Language names are CLDR's (babel), in the row's
language ("Übersetze ins Deutsche (Ausgangssprache: Englisch)").

Adding languages or templates without touching code: write a TSV file with the same
columns and either call `load_templates(path)` (a file or a folder of *.tsv), or list
it in the environment variable PALIMIX_PROMPTS (paths separated by os.pathsep; read on
first use), or call `register_template(kind, language, text, style=...)`. A row for a
(style, kind, language) that already exists replaces it.

Placeholders: each kind needs exactly its fields (`placeholders(kind)`): vqa
`{question}`, classification_choices `{classes}` (a list, joined with " ; " in the pali
style and as a localized "a, b or c" in the natural one), translation `{text}` and the
source language as `{source}` (code) or `{source_name}` (its name), span_corruption and
prefix_lm `{text}`. Any template may also use `{lang}` (the prompt language's code) and
`{language_name}` (its name). Loading a row checks this; a bad row is an error that
names the file and line.

Inside a seqio preprocessor, `prompt_tf` builds the same text with tf.strings ops, so
per-example fields (a question, a text) may be string tensors.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import logging
import os
import pathlib
import string
import threading
from typing import Iterable, Mapping, Sequence

from palimix import kinds, languages
from palimix.errors import UnknownNameError, UsageError, close_matches_hint

# The template kinds and the fields the caller supplies for each, from the table of
# kinds (classification has two: open-ended, and picking from a class list). The order
# of KINDS is the listing order.
_KIND_FIELDS: dict[str, tuple[str, ...]] = kinds.template_fields()
KINDS: tuple[str, ...] = tuple(_KIND_FIELDS)


@dataclasses.dataclass(frozen=True)
class Style:
    name: str
    several: bool = False  # Several templates per (kind, language), one chosen per example.
    every_kind: bool = True  # Has a `*` row for every kind (verbatim: only kinds with a prompt text).
    warn_on_fallback: bool = False  # The `*` row stands in for a missing localization (natural).
    names_answer_language: bool = True  # Its rows can ask for an answer in another language.


_STYLES: dict[str, Style] = {s.name: s for s in (
    Style("pali"),
    Style("natural", warn_on_fallback=True, names_answer_language=False),
    Style("instruct", several=True),
    Style("verbatim", every_kind=False, names_answer_language=False),
)}
STYLES: tuple[str, ...] = tuple(_STYLES)


def style(name: str) -> Style:
    """The Style entry of `name` (UnknownNameError naming the styles)."""
    return _STYLES[_check_style(name)]

# Placeholders palimix fills in itself: name -> the field it is derived from
# (None: from the prompt's language).
_DERIVED: dict[str, str | None] = {"lang": None, "language_name": None, "source_name": "source"}

ANY_LANGUAGE = "*"
# The language the `*` rows of the natural style are written in (names and class
# lists in them are formatted for it).
FALLBACK_LANGUAGE = "en"
ENV_VAR = "PALIMIX_PROMPTS"
_COLUMNS = ("style", "kind", "language", "template")
# Class names are joined with " ; " in the compact style, as PaliGemma joins object names.
_PALI_CLASS_SEPARATOR = " ; "
# Template choice: Fingerprint64(key) % _HASH_BUCKETS, then modulo the template count
# (2**31 - 1 is prime, so the modulo keeps every template about equally likely).
HASH_BUCKETS = 2**31 - 1

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Template:
    style: str
    kind: str
    language: str  # A normalized language code, or "*".
    text: str  # str.format syntax with named placeholders.
    origin: str  # "file:line" (or "register_template") for error messages.

    @property
    def placeholders(self) -> frozenset[str]:
        return _placeholders_in(self.text, self.origin)

    @property
    def written_in(self) -> str:
        """The language the row's words are in (for names and list formatting)."""
        return FALLBACK_LANGUAGE if self.language == ANY_LANGUAGE else self.language


def placeholders(kind: str) -> set[str]:
    """The fields `prompt(kind, ...)` needs, e.g. {"question"} for "vqa"."""
    return set(_KIND_FIELDS[_check_kind(kind)])


def templates(kind: str, style: str = "natural") -> dict[str, str]:
    """language ("*" first, then codes sorted) -> template text, for one kind and style
    (the first template of a style with several: `variants` gives them all)."""
    kind, style = _check_kind(kind), _check_style(style)
    rows = {lang: ts[0].text for (s, k, lang), ts in _registry().items() if s == style and k == kind}
    return dict(sorted(rows.items(), key=lambda item: (item[0] != ANY_LANGUAGE, item[0])))


def all_templates() -> list[Template]:
    """Every loaded template, by style, kind (in KINDS order) and language (a style
    with several templates per key: in row order)."""
    order = {kind: i for i, kind in enumerate(KINDS)}
    rows = [t for ts in _registry().values() for t in ts]
    # sorted() is stable: variants keep their row order.
    return sorted(rows, key=lambda t: (STYLES.index(t.style), order[t.kind], t.language != ANY_LANGUAGE, t.language))


def variants(kind: str, language: str, style: str = "instruct") -> tuple[Template, ...]:
    """Every template `language` gets for `kind`: its own rows, else the `*` rows
    (one for the pali and natural styles, several for instruct)."""
    kind, style = _check_kind(kind), _check_style(style)
    code = languages.normalize(language)
    table = _registry()
    for key in ((style, kind, code), (style, kind, ANY_LANGUAGE)):
        if key in table:
            return table[key]
    raise UnknownNameError(
        f"No {style} prompt template for kind {kind!r} in language {code!r}, and no "
        f"'*' fallback row; add one with palimix.prompts.load_templates(path)."
    )


def template_for(kind: str, language: str, style: str = "pali") -> Template:
    """The template `prompt` would use (the first of several): the language's own row,
    else the `*` row (`template.language == "*"` then)."""
    return variants(kind, language, style)[0]


def variant_for(example_id, language: str, count: int) -> int:
    """Which of `count` templates the example `example_id` in `language` gets: the
    Python twin of the choice build_example makes in TensorFlow (same hash)."""
    import tensorflow as tf

    key = choice_key(tf.constant(str(example_id) if not isinstance(example_id, bytes) else example_id),
                     languages.normalize(language))
    return int(tf.strings.to_hash_bucket_fast(key, HASH_BUCKETS).numpy()) % count


def choice_key(example_id, language):
    """The string hashed to pick an example's template: "<language>/<id>" (tensors)."""
    import tensorflow as tf

    return tf.strings.join([language, "/", example_id])


def prompt(kind: str, language: str, *, style: str = "pali", answer_language: str | None = None,
           variant: int = 0, **fields) -> str:
    """The prompt text for `kind` in `language`, with `fields` filled in.

    `language` is the language of the prompt; `answer_language` that of the expected
    answer (default: the same; for translation: the target). `variant` picks one of
    a language's several templates (instruct style; `variant_for` picks per example).
    Raises UnknownNameError for an unknown kind or style, UnknownLanguageError for an
    unknown language code, and UsageError for missing, unexpected or empty fields, a
    variant out of range, or a template that cannot name another answer language.
    """
    template = _template_warning_on_fallback(kind, language, style, variant)
    return template.text.format_map(_values(template, language, answer_language, fields, allow_tensors=False))


def prompt_without_fields(kind: str, language: str, *, style: str = "pali", variant: int = 0) -> str:
    """The prompt of `kind` with its fields (description, question, ...) left empty and the
    spaces they leave collapsed: "generate en" for text_to_image's "generate en {description}".
    Classifier-free guidance decodes against it as the unconditional prompt
    (palimix.runner.infer.generate_images)."""
    template = _template_warning_on_fallback(kind, language, style, variant)
    code = languages.normalize(language)
    values: dict[str, object] = {"lang": code, **{name: "" for name in _KIND_FIELDS[template.kind]}}
    if "language_name" in template.placeholders:
        values["language_name"] = language_name(code, template.written_in)
    return " ".join(template.text.format_map(values).split())


def prompt_tf(kind: str, language: str, *, style: str = "pali", answer_language: str | None = None,
              variant: int = 0, **fields):
    """Like `prompt`, but `question` and `text` may be tf.string tensors (scalars or
    batches); returns a tf.string tensor. For seqio preprocessors, where a task's
    language and kind are fixed and the per-example fields are tensors."""
    import tensorflow as tf

    template = _template_warning_on_fallback(kind, language, style, variant)
    values = _values(template, language, answer_language, fields, allow_tensors=True)
    pieces = []
    for literal, name, _, _ in string.Formatter().parse(template.text):
        if literal:
            pieces.append(literal)
        if name is not None:
            pieces.append(values[name])
    tensors = [p for p in pieces if isinstance(p, tf.Tensor)]
    if not tensors:
        return tf.constant("".join(pieces))
    shape = tf.shape(tensors[0])
    return tf.strings.join([p if isinstance(p, tf.Tensor) else tf.fill(shape, p) for p in pieces])


def _template_warning_on_fallback(kind: str, language: str, style: str, variant: int = 0) -> Template:
    options = variants(kind, language, style)
    if not 0 <= variant < len(options):
        raise UsageError(f"{style} {kind} prompts in {language!r} have {len(options)} template(s); "
                         f"variant {variant} does not exist.")
    template = options[variant]
    if template.language == ANY_LANGUAGE and _STYLES[style].warn_on_fallback:
        _warn_fallback_once(kind, languages.normalize(language))
    return template


def load_templates(path: str | os.PathLike) -> int:
    """Adds the rows of a TSV file, or of every *.tsv in a folder, replacing rows with
    the same (style, kind, language). Returns the number of rows read."""
    path = pathlib.Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.tsv"))
        if not files:
            raise UsageError(f"No *.tsv prompt template files in {path}.")
    elif path.is_file():
        files = [path]
    else:
        raise UsageError(f"Prompt template file not found: {path}")
    rows = [row for f in files for row in _read_tsv(f.read_text(encoding="utf-8"), str(f))]
    _registry().update(_keyed(rows))
    return len(rows)


def register_template(kind: str, language: str, text: str, *, style: str = "natural") -> Template:
    """Adds one template, checked like a file row; it replaces the templates of its
    (style, kind, language) (for several instruct templates, load a file)."""
    template = _make_template(style, kind, language, text, origin="register_template")
    _registry()[(template.style, template.kind, template.language)] = (template,)
    return template


def reset() -> None:
    """Forgets added templates: the next use reloads the shipped files (and PALIMIX_PROMPTS)."""
    global _REGISTRY
    with _LOCK:
        _REGISTRY = None
    _warn_fallback_once.cache_clear()


# --- loading ----------------------------------------------------------------------

# (style, kind, language) -> its templates (one, or several for the instruct style).
_REGISTRY: dict[tuple[str, str, str], tuple[Template, ...]] | None = None
_LOCK = threading.Lock()


def _registry() -> dict[tuple[str, str, str], tuple[Template, ...]]:
    global _REGISTRY
    with _LOCK:
        if _REGISTRY is None:
            table: dict[tuple[str, str, str], tuple[Template, ...]] = {}
            folder = importlib.resources.files("palimix") / "data" / "prompts"
            for entry in sorted(folder.iterdir(), key=lambda e: e.name):
                if entry.name.endswith(".tsv"):
                    table.update(_keyed(_read_tsv(entry.read_text(encoding="utf-8"), f"palimix/data/prompts/{entry.name}")))
            _REGISTRY = table
            extra = [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
        else:
            extra = []
    for path in extra:  # Outside the lock: load_templates takes it again.
        if not pathlib.Path(path).exists():
            raise UsageError(f"{ENV_VAR} names {path!r}, which does not exist.")
        load_templates(path)
    return _REGISTRY


def _keyed(rows: Iterable[Template]) -> dict[tuple[str, str, str], tuple[Template, ...]]:
    """Rows by key. One file (or one load) may hold a key once, or, in a style with
    several templates per key, several times (its templates, in row order)."""
    table: dict[tuple[str, str, str], tuple[Template, ...]] = {}
    for row in rows:
        key = (row.style, row.kind, row.language)
        if key in table and not _STYLES[row.style].several:
            raise UsageError(f"{row.origin}: duplicate row for {key}, first at {table[key][0].origin}.")
        if any(t.text == row.text for t in table.get(key, ())):
            raise UsageError(f"{row.origin}: the same template twice for {key}.")
        table[key] = table.get(key, ()) + (row,)
    return table


def _read_tsv(content: str, filename: str) -> list[Template]:
    rows = []
    header_seen = False
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        cells = line.split("\t")
        origin = f"{filename}:{number}"
        if not header_seen:
            if tuple(c.strip() for c in cells) != _COLUMNS:
                raise UsageError(f"{origin}: expected the header {chr(9).join(_COLUMNS)!r} (tab-separated).")
            header_seen = True
            continue
        if len(cells) != len(_COLUMNS):
            raise UsageError(f"{origin}: expected {len(_COLUMNS)} tab-separated columns, found {len(cells)}.")
        style, kind, language, text = (c.strip() for c in cells)
        rows.append(_make_template(style, kind, language, text, origin))
    return rows


def _make_template(style: str, kind: str, language: str, text: str, origin: str) -> Template:
    try:
        style, kind = _check_style(style), _check_kind(kind)
        if language != ANY_LANGUAGE:
            language = languages.normalize(language)
    except (UnknownNameError, languages.UnknownLanguageError) as e:
        raise type(e)(f"{origin}: {e}") from None
    if not text:
        raise UsageError(f"{origin}: empty template.")
    template = Template(style, kind, language, text, origin)
    _check_placeholders(template)
    return template


def _placeholders_in(text: str, origin: str) -> frozenset[str]:
    names = set()
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as e:
        raise UsageError(f"{origin}: bad template {text!r}: {e} (write literal braces as {{{{ and }}}}).") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise UsageError(f"{origin}: placeholders are plain names like {{text}}; got {{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}.")
        names.add(name)
    return frozenset(names)


def _check_placeholders(template: Template) -> None:
    """A template uses each field of its kind (directly or as a derived name) and
    nothing else."""
    fields = _KIND_FIELDS[template.kind]
    allowed = set(fields) | {d for d, base in _DERIVED.items() if base is None or base in fields}
    used = template.placeholders
    unknown = sorted(used - allowed)
    if unknown:
        raise UsageError(
            f"{template.origin}: {template.kind} templates may use {_braced(sorted(allowed))}; "
            f"{_braced(unknown)} is not one of them."
        )
    covered = {(_DERIVED.get(name) or name) for name in used}
    missing = [f for f in fields if f not in covered]
    if missing:
        raise UsageError(f"{template.origin}: {template.kind} templates must contain {_braced(missing)}.")


def _braced(names: Sequence[str]) -> str:
    return ", ".join("{" + n + "}" for n in names)


# --- filling in -------------------------------------------------------------------


def _values(template: Template, language: str, answer_language: str | None, fields: Mapping[str, object],
            allow_tensors: bool) -> dict:
    kind = template.kind
    expected = _KIND_FIELDS[kind]
    missing = [f for f in expected if f not in fields]
    unexpected = sorted(set(fields) - set(expected))
    if missing or unexpected:
        needs = f"needs {', '.join(expected)}" if expected else "takes no fields"
        detail = "; missing " + ", ".join(missing) if missing else ""
        detail += "; unexpected " + ", ".join(unexpected) if unexpected else ""
        hint = " (a class list is kind 'classification_choices')" if kind == "classification" and "classes" in fields else ""
        raise UsageError(f"Prompt kind {kind!r} {needs}{detail}{hint}.")
    code = _answer_language(template, languages.normalize(language), answer_language)
    values: dict[str, object] = {"lang": code}
    if "language_name" in template.placeholders:
        values["language_name"] = language_name(code, template.written_in)
    for name, value in fields.items():
        if name == "classes":
            values[name] = _format_classes(value, template)
        elif name == "source":
            values["source"] = languages.normalize(_text_field(name, value, kind))
            if "source_name" in template.placeholders:
                values["source_name"] = language_name(values["source"], template.written_in)
        elif allow_tensors and _is_tensor(value):
            values[name] = value
        else:
            values[name] = _text_field(name, value, kind)
    return values


def _answer_language(template: Template, code: str, answer_language: str | None) -> str:
    """The answer language's code: the prompt language's unless `answer_language` asks
    for another, which only a template naming it ({lang} or {language_name}) can."""
    if answer_language is None:
        return code
    answer = languages.normalize(answer_language)
    if answer != code and not template.placeholders & {"lang", "language_name"}:
        raise UsageError(f"{template.origin}: the {template.style} {template.kind} template {template.text!r} does not "
                         f"name the answer language, so it cannot ask for an answer in {answer!r} "
                         f"(a template with {{language_name}} or {{lang}} can).")
    return answer


def _text_field(name: str, value: object, kind: str) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if not isinstance(value, str):
        raise UsageError(f"Prompt field {name!r} of kind {kind!r} must be a string, got {type(value).__name__}.")
    if not value.strip():
        raise UsageError(f"Prompt field {name!r} of kind {kind!r} is empty.")
    return value


def _format_classes(value: object, template: Template) -> str:
    if isinstance(value, (str, bytes)):
        return _text_field("classes", value, template.kind)  # Already formatted by the caller.
    classes = [_text_field("classes", c, template.kind) for c in value]
    if not classes:
        raise UsageError("Prompt field 'classes' is an empty list.")
    if template.style == "pali":
        return _PALI_CLASS_SEPARATOR.join(classes)
    import babel.lists

    return babel.lists.format_list(classes, style="or", locale=_babel_locale(template.written_in) or FALLBACK_LANGUAGE)


def _is_tensor(value) -> bool:
    return type(value).__module__.startswith("tensorflow")


@functools.lru_cache(maxsize=None)
def _babel_locale(code: str):
    import babel

    try:
        return babel.Locale.parse(code.replace("-", "_"))
    except (babel.UnknownLocaleError, ValueError):
        return None


@functools.lru_cache(maxsize=None)
def language_name(code: str, in_language: str = FALLBACK_LANGUAGE) -> str:
    """The name of language `code` in language `in_language`, from CLDR (babel):
    language_name("en", "de") == "Englisch". Where CLDR has no such name, the
    English name (in_language "en") or else the language's own name (autonym)."""
    code, in_language = languages.normalize(code), languages.normalize(in_language)
    locale = _babel_locale(in_language)
    name = locale.languages.get(code.replace("-", "_")) if locale is not None else None
    if name:
        return name
    entry = languages.get(code)
    return entry.name if in_language == FALLBACK_LANGUAGE else entry.autonym


@functools.lru_cache(maxsize=None)
def _warn_fallback_once(kind: str, code: str) -> None:
    _log.warning(
        "No natural %s prompt in %r (%s): using the English fallback row that names the "
        "language. Add a row to localize it (see palimix.prompts).",
        kind,
        code,
        languages.get(code).name,
    )


def _check_kind(kind: str) -> str:
    if kind not in _KIND_FIELDS:
        raise UnknownNameError(f"Unknown prompt kind {kind!r}; kinds: {', '.join(KINDS)}.{close_matches_hint(kind, KINDS)}")
    return kind


def _check_style(style: str) -> str:
    if style not in STYLES:
        raise UnknownNameError(f"Unknown prompt style {style!r}; styles: {', '.join(STYLES)}.{close_matches_hint(style, STYLES)}")
    return style
