"""Tokenization for caption metrics, per language.

Caption metrics (CIDEr, BLEU, ROUGE-L) compare token n-grams, so their numbers depend
on the tokenizer as much as on the captions. Three tokenizers cover every language in
palimix's table, chosen by the language's `segmentation` column:

* ``"ptb"`` (languages written with spaces): the tokenization pycocoevalcap applies
  before scoring COCO captions -- Stanford CoreNLP 3.4.1's PTBTokenizer with
  ``-preserveLines -lowerCase``, then pycocoevalcap's removal of punctuation tokens --
  reimplemented in Python so that no Java is needed. It reproduces the quirks that
  published COCO numbers include: parentheses become the tokens ``-lrb-``/``-rrb-``
  (pycocoevalcap removes only the upper-case forms, which the lower-casing never
  produces), ``don't`` becomes ``do n't``, ``€`` becomes ``$``. tests/data/ptb_golden.tsv
  holds the Java tokenizer's output on English edge cases and UDHR sentences in ~90
  languages (scripts/build_ptb_golden.py): palimix matches it on every English case
  but emoticons, hashtags and "rock'n'roll"-style inner apostrophes, and on ~92% of all
  lines. It departs on purpose where the Java lexer breaks words: 3.4.1 drops the vowel
  signs of Kannada and Malayalam and splits their words there; palimix keeps them whole.
* ``"char"`` (the default for unsegmented scripts: zh, ja, th, km, lo, my, bo): one
  token per character (a Unicode grapheme cluster, so Thai and Khmer vowel signs stay
  on their consonant); whitespace and punctuation are dropped and runs
  of Latin letters or digits inside such text stay one token ("iphone", "2024").
* ``"word"``: a word segmenter -- jieba (zh), fugashi with unidic-lite (ja), pythainlp
  newmm (th); punctuation tokens dropped. The segmenters load lazily (jieba takes about
  a second and logs to stderr on first use).

`tokenize(text, language, tokenizer)` returns the list of tokens; `tokenizer` may also
be a callable ``str -> list[str]``.
"""

from __future__ import annotations

import functools
import logging
import unicodedata
from typing import Callable, Sequence, Union

import regex

from palimix import languages
from palimix.errors import UsageError

Tokenizer = Union[str, Callable[[str], Sequence[str]], None]

TOKENIZERS = ("ptb", "char", "word")

# pycocoevalcap (tokenizer/ptbtokenizer.py) drops these tokens after PTB tokenization.
PTB_DROPPED = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

# ---------------------------------------------------------------------------------
# PTB tokenization (CoreNLP 3.4.1 PTBLexer behaviour, as pycocoevalcap invokes it).
# ---------------------------------------------------------------------------------

_LETTER = r"[\p{L}\p{M}]"
_ALNUM = r"[\p{L}\p{M}\p{Nd}]"
_APOS = "['\u2019]"

# Characters the lexer rewrites before they become tokens.
_CHAR_MAP = {
    "\u20ac": "$",  # euro, as PTB3 escaping maps currency signs
    "\u00a3": "#",  # pound
    "\u00bd": "1/2",
    "\u00bc": "1/4",
    "\u00be": "3/4",
    "\u2026": "...",
    "\u2014": "--",
    "\u2013": "--",
    "\u2015": "--",
}
_QUOTES = {"\u2019": "'", '"': "''", "\u201c": "``", "\u201d": "''", "\u2018": "`"}
_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}

# Abbreviations that keep their period (PTBLexer's ABBREV lists, the ones seen in text).
_ABBREVIATIONS = frozenset(
    """mr mrs ms dr prof st jr sr rev gen gov sen rep lt col sgt capt cmdr adm maj
    mt ft ave blvd rd etc inc ltd co corp bros jan feb mar apr jun jul aug sep sept oct
    nov dec vs no messrs mme mlle esq hon pres supt det""".split()
)

# Words PTB splits into two tokens.
_SPLIT_WORDS = {
    "cannot": ("can", "not"),
    "gonna": ("gon", "na"),
    "gotta": ("got", "ta"),
    "wanna": ("wan", "na"),
    "lemme": ("lem", "me"),
    "gimme": ("gim", "me"),
    "'tis": ("'t", "is"),
    "'twas": ("'t", "was"),
}

_PTB_TOKEN = regex.compile(
    r"""
    (?P<ellipsis>\.\.\.+)
  | (?P<dashes>--+)
  | (?P<email>[\w.+-]++@[\w-]+(?:\.[\w-]+)+(?<!\.))
  | (?P<fraction>\p{Nd}{1,4}/\p{Nd}{1,4}(?!\p{Nd}))
  | (?P<number>[-+]?(?:\p{Nd}*+(?:[.,]\p{Nd}+)+|\p{Nd}++(?:[.:,]\p{Nd}+)+)(?:-""" + _ALNUM + r"""+)*
        |[-+]?\p{Nd}++(?:-""" + _ALNUM + r"""+)*(?![\p{L}\p{M}]))
  | (?P<acronym>(?:""" + _LETTER + r"""\.){2,}(?=\s|$|[,;:!?)"']))
  | (?P<initial>\p{L}\.(?=\s|$)(?!\s+\p{Lu}))
  | (?P<clitic>(?i:""" + _APOS + r"""(?:s|m|d|ll|re|ve)(?![\p{L}\p{M}\p{Nd}])|'t(?=is\b|was\b)))
  | (?P<capsamp>\p{Lu}++(?:&\p{Lu}+)+)
  | (?P<asciiapos>[A-Za-z]++(?:'[A-Za-z]+)+(?![\p{L}\p{M}\p{Nd}'\u2019]))
  | (?P<word>(?i:(?:[dlo]|qu)""" + _APOS + r"""(?=""" + _ALNUM + r"""{2}))?""" + _ALNUM + r"""+(?:[-/_]""" + _ALNUM + r"""+)*
        (?:\.(?!\s|$)""" + _ALNUM + r"""+)*(?i:n""" + _APOS + r"""t|""" + _APOS + r"""(?:s|m|d|ll|re|ve))?
        (?![\p{L}\p{M}\p{Nd}])(?!""" + _APOS + r"""t\b))
  | (?P<wordpart>""" + _ALNUM + r"""+)
  | (?P<punct>[!?]+|[.,;:]|""" + _APOS + r"""|[`"\u201c\u201d\u2018])
  | (?P<other>\S)
    """,
    regex.VERBOSE,
)

_CONTRACTION = regex.compile(r"(?i)^(.+?)(n['\u2019]t|['\u2019](?:s|m|d|ll|re|ve))$")
_DISPLAYABLE = regex.compile(r"[\p{L}\p{M}\p{N}\p{P}\p{Sm}\p{Sc}\p{Sk}\p{So}]")


def _split_contractions(word: str) -> list[str]:
    """'don't' -> ['do', "n't"], "we'd've" -> ['we', "'d", "'ve"], 'cannot' -> ['can', 'not']."""
    lowered = word.lower()
    if lowered in _SPLIT_WORDS:
        first, _ = _SPLIT_WORDS[lowered]
        return [word[: len(first)], word[len(first):]]
    tails = []
    match = _CONTRACTION.match(word)
    while match:
        word = match.group(1)
        tails.insert(0, match.group(2).replace("\u2019", "'"))
        match = _CONTRACTION.match(word)
    return [word] + tails


# Characters PTBLexer deletes (with a warning), ending the token they are in: emoji and
# other astral symbols, control and format characters (ZWNJ included), and punctuation
# of scripts its rules do not cover (Ethiopic).
_UNTOKENIZABLE = regex.compile(r"[\p{Cc}\p{Cf}\p{Co}\p{Cn}\p{Cs}\u1360-\u1368]|(?=[\U00010000-\U0010FFFF])\p{S}")
_CHAR_TABLE = str.maketrans(_CHAR_MAP)


def _prepare(text: str) -> str:
    if text.isascii():  # The common case: only controls (tabs, newlines) to blank.
        return text if text.isprintable() else _UNTOKENIZABLE.sub(" ", text)
    return _UNTOKENIZABLE.sub(" ", text).translate(_CHAR_TABLE)


def ptb_tokens(text: str) -> list[str]:
    """PTB tokens of one line, lower-cased, before pycocoevalcap's punctuation removal."""
    chunks = _prepare(text).split()
    tokens: list[str] = []
    for index, chunk in enumerate(chunks):
        if chunk.isalpha() and chunk.isascii():
            # Fast path, most caption words: no rule splits a bare ASCII word or looks at
            # its neighbours, except the handful of words PTB splits in two.
            lowered = chunk.lower()
            tokens.extend(_SPLIT_WORDS.get(lowered, (lowered,)))
        else:
            following = chunks[index + 1][0] if index + 1 < len(chunks) else ""
            tokens.extend(_chunk_tokens(chunk, _context(following)))
    return tokens


def _context(following: str) -> str:
    """What the rules' lookaheads need of the next chunk: whether it starts with an
    upper-case letter (a sentence start: "C. The" splits the period) or a digit
    ("No. 5" keeps it); any other start behaves like the end of the line."""
    if not following:
        return ""
    if following.isupper():
        return " A"
    if following.isdigit():
        return " 1"
    return " a"


@functools.lru_cache(maxsize=1 << 16)  # Captions reuse the same few thousand chunks.
def _chunk_tokens(chunk: str, context: str) -> tuple[str, ...]:
    """Tokens of one whitespace-free chunk, lower-cased, given its right context."""
    text = chunk + context
    end = len(chunk)
    tokens: list[str] = []
    for match in _PTB_TOKEN.finditer(text):
        if match.start() >= end:
            break
        kind, token = match.lastgroup, match.group()
        if kind == "asciiapos":
            tokens.extend(t.lower() for t in _split_contractions(token))
        elif kind == "word":
            rest = text[match.end():]
            lowered = token.lower()
            if (
                rest.startswith(".")
                and not rest.startswith("..")
                and lowered in _ABBREVIATIONS
                and (lowered != "no" or regex.match(r"\.\s*\p{Nd}", rest))  # "No. 5", not "says no."
            ):
                # Keep the period; it is matched again below as a separate (dropped) token.
                tokens.append(lowered + ".")
                continue
            tokens.extend(t.lower() for t in _split_contractions(token))
        elif kind == "clitic":
            tokens.append(token.replace("\u2019", "'").lower())
        elif kind == "punct":
            tokens.append(_QUOTES.get(token, token))
        elif kind == "other":
            tokens.append(_BRACKETS.get(token, token).lower())
        else:
            tokens.append(token.lower())
    return tuple(tokens)


def ptb_tokenize(text: str) -> list[str]:
    """pycocoevalcap's tokens for `text`: PTB tokens minus its punctuation list."""
    return [t for t in ptb_tokens(text) if t not in PTB_DROPPED]


# ---------------------------------------------------------------------------------
# Unsegmented scripts.
# ---------------------------------------------------------------------------------

# A run of Latin letters or digits, or one user-perceived character (a grapheme cluster:
# a base character with its combining marks).
_CHAR_TOKEN = regex.compile(r"[\p{Latin}\p{Nd}]+(?:[.,]\p{Nd}+)*|\X")


def _is_punct_or_space(token: str) -> bool:
    return all(c.isspace() or unicodedata.category(c)[0] in "PZC" for c in token)


def char_tokenize(text: str) -> list[str]:
    """One token per character (with its combining marks); Latin/digit runs stay whole."""
    return [t for t in _CHAR_TOKEN.findall(text.lower()) if not _is_punct_or_space(t)]


@functools.lru_cache(maxsize=None)
def _segmenter(segmentation: str) -> Callable[[str], list[str]]:
    if segmentation == "jieba":
        import jieba

        jieba.setLogLevel(logging.WARNING)  # It logs "Building prefix dict..." otherwise.
        return lambda text: jieba.lcut(text)
    if segmentation == "fugashi":
        import fugashi

        tagger = fugashi.Tagger()  # Uses unidic-lite's dictionary when unidic is absent.
        return lambda text: [word.surface for word in tagger(text)]
    if segmentation == "pythainlp":
        from pythainlp.tokenize import word_tokenize

        return lambda text: word_tokenize(text, engine="newmm", keep_whitespace=False)
    raise AssertionError(segmentation)


def word_tokenize(text: str, language: str) -> list[str]:
    """Words of `text` from the language's segmenter; punctuation and spaces dropped."""
    segmentation = languages.get(language).segmentation
    if segmentation == "space":
        return ptb_tokenize(text)
    if segmentation == "char":
        raise UsageError(
            f"No word segmenter for {language!r} in palimix: use tokenizer='char' "
            "(the default for its script)."
        )
    words = _segmenter(segmentation)(text.lower())
    return [w.strip() for w in words if w.strip() and not _is_punct_or_space(w)]


# ---------------------------------------------------------------------------------
# Dispatch.
# ---------------------------------------------------------------------------------


def default_tokenizer(language: str) -> str:
    """'ptb' for languages written with spaces, 'char' for unsegmented scripts."""
    return "ptb" if languages.get(language).segmentation == "space" else "char"


def resolve(language: str = "en", tokenizer: Tokenizer = None) -> Callable[[str], list[str]]:
    """The function `str -> tokens` for a language and tokenizer choice.

    Raises UnknownLanguageError for an unknown code and UsageError for an unknown
    tokenizer name.
    """
    if callable(tokenizer):
        return lambda text: list(tokenizer(text))
    name = tokenizer or default_tokenizer(language)
    if name == "ptb":
        languages.get(language)  # Validate the code even though PTB ignores it.
        return ptb_tokenize
    if name == "char":
        languages.get(language)
        return char_tokenize
    if name == "word":
        languages.get(language)
        return functools.partial(word_tokenize, language=language)
    raise UsageError(f"Unknown tokenizer {tokenizer!r}; choose one of {', '.join(TOKENIZERS)} or pass a callable.")


def tokenize(text: str, language: str = "en", tokenizer: Tokenizer = None) -> list[str]:
    """Tokens of `text` as the caption metrics count them (see the module docstring)."""
    return resolve(language, tokenizer)(text)


def tokenize_all(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    language: str = "en",
    tokenizer: Tokenizer = None,
) -> tuple[list[list[str]], list[list[list[str]]]]:
    """Tokens of every prediction and reference, each distinct string tokenized once
    (references repeat across examples, predictions repeat a lot early in training)."""
    tokenize_one = resolve(language, tokenizer)
    cache: dict[str, list[str]] = {}

    def tokens(text: str) -> list[str]:
        found = cache.get(text)
        if found is None:
            found = cache[text] = tokenize_one(text)
        return found

    return [tokens(p) for p in predictions], [[tokens(r) for r in refs] for refs in references]
