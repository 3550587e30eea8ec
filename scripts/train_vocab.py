"""Trains palimix's default SentencePiece vocabulary (palimix/data/vocab/).

The model is small on purpose: it serves the CPU demo and tests, where a tiny model's
output softmax over the vocabulary is a large share of the compute. Real training
uses the mT5 vocabulary instead (see palimix/vocab.py).

Training text: only text that ships inside PyPI packages palimix already depends on,
so anyone can rebuild the model bit for bit:
  - gflanguages: the sample texts (UDHR article 1 and other specimens) of every living
    language/script pair it knows (~640), one unique line each;
  - babel (CLDR): for every base locale (~310), the localized names of languages,
    territories, scripts, months and weekdays (words in ~300 languages, which gives
    every common script its letters);
  - palimix's own prompt templates, so that prompts cost few tokens.

Settings that make the vocabulary round-trip any Unicode text exactly:
  - normalization_rule_name=identity (the default NFKC would turn "ﬁ" into "fi", full
    width "？" into "?", math letters into ASCII...);
  - remove_extra_whitespaces=False (the default collapses and strips spaces), and
    add_dummy_prefix=False (TensorFlow's detokenizer strips leading spaces otherwise);
  - byte_fallback=True: a character outside the pieces becomes its UTF-8 bytes
    instead of <unk>.
pad=0, eos=1, unk=2 and no bos, as T5/seqio expect; seqio adds the 100 extra ids.

Deterministic: the corpus is built in sorted order, SentencePiece trains on all of it
(no sampling, no shuffling) with one thread and a fixed seed. build_info.json records
the sources, their versions and the hashes of the corpus and the model.

Run:  python scripts/train_vocab.py            (rewrites palimix/data/vocab/)
      python scripts/train_vocab.py --vocab-size 16284 --out /tmp/v16k
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import io
import json
import pathlib
import sys
import unicodedata

REPO = pathlib.Path(__file__).resolve().parent.parent
OUT = REPO / "palimix" / "data" / "vocab"

# 8092 pieces + seqio's 100 extra ids = 8192 rows in the embedding and softmax, a
# multiple of 128 (matmul tile friendly). Why about 8k: see README.md in the model
# folder and benchmarks/vocab_size.py (tokens per character vs softmax cost).
VOCAB_SIZE = 8092
EXTRA_IDS = 100

TRAINER_OPTIONS = dict(
    model_type="unigram",  # As mT5's vocabulary.
    # The corpus has ~6,700 distinct characters; covering 99% of character occurrences
    # takes ~3,200 single-character pieces and leaves the rest of the vocabulary to
    # multi-character pieces. Rarer characters are spelled as UTF-8 bytes.
    character_coverage=0.99,
    byte_fallback=True,
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    # No "▁" prepended to the text (as Gemma's tokenizer): with one, tf_text's
    # detokenizer drops every leading space, so " x" would not round-trip in TF.
    add_dummy_prefix=False,
    split_digits=True,  # Numbers as digits: no arbitrary multi-digit pieces.
    allow_whitespace_only_pieces=True,
    pad_id=0,
    eos_id=1,
    unk_id=2,
    bos_id=-1,
    input_sentence_size=0,  # Use every line: no random sampling.
    shuffle_input_sentence=False,
    num_threads=1,  # Multithreaded EM sums in a varying order; one thread is exact.
    max_sentence_length=16384,
)
SEED = 0


def gflanguages_lines(skip=frozenset()) -> tuple[list[str], int]:
    """Unique sample-text lines of every living gflanguages language/script (not the
    `skip` keys), and how many language/script pairs had sample text.

    Historical languages (Egyptian hieroglyphs, Linear B, ...) are left out: their
    thousands of rare characters would each take a piece of a small vocabulary."""
    import gflanguages

    lines: dict[str, None] = {}
    pairs = 0
    languages = gflanguages.LoadLanguages()
    for key in sorted(languages):
        if languages[key].historical or key in skip:
            continue
        fields = languages[key].sample_text.ListFields()
        if not fields:
            continue
        pairs += 1
        for _, text in sorted(fields, key=lambda f: f[0].name):
            for line in text.split("\n"):
                if line.strip():
                    lines[line.rstrip()] = None
    return list(lines), pairs


# CLDR names are joined into lines of this many, separated by spaces, so that the
# pieces learned for them are the word-initial "▁name" pieces running text uses.
NAMES_PER_LINE = 32


def cldr_lines() -> tuple[list[str], int]:
    """Localized display names from babel's CLDR data, NAMES_PER_LINE to a line, for
    every base locale (no regional variants, which repeat their base)."""
    import babel
    import babel.localedata

    lines: dict[str, None] = {}
    locales = sorted(i for i in babel.localedata.locale_identifiers() if "_" not in i and i != "root")
    for identifier in locales:
        locale = babel.Locale.parse(identifier)
        names = []
        for table in (locale.languages, locale.territories, locale.scripts):
            names.extend(table[k] for k in sorted(table))
        for table in (locale.months, locale.days):
            wide = table.get("format", {}).get("wide", {})
            names.extend(wide[k] for k in sorted(wide))
        names = list(dict.fromkeys(names))
        for start in range(0, len(names), NAMES_PER_LINE):
            lines[" ".join(names[start : start + NAMES_PER_LINE])] = None
    return list(lines), len(locales)


def prompt_lines() -> list[str]:
    """palimix's prompt templates with their placeholders removed."""
    import string

    from palimix import prompts

    lines = []
    for style in prompts.STYLES:
        for kind in prompts.KINDS:
            for text in prompts.templates(kind, style).values():
                literal = "".join(lit for lit, _, _, _ in string.Formatter().parse(text))
                lines.append(" ".join(literal.split()))
    return sorted(set(lines))


def build_corpus(skip=frozenset()) -> tuple[list[str], dict]:
    """The training lines and a description of their sources; `skip`: gflanguages
    keys to leave out (benchmarks/vocab_size.py holds some languages out)."""
    gf, pairs = gflanguages_lines(skip)
    cldr, locales = cldr_lines()
    templates = prompt_lines()
    # SentencePiece reads one sentence per line: no line may contain a newline.
    corpus = [line for line in gf + cldr + templates if "\n" not in line]
    sources = {
        "gflanguages": {
            "version": importlib.metadata.version("gflanguages"),
            "what": "sample_text fields (UDHR article 1 and specimens) of living languages, unique lines",
            "language_script_pairs": pairs,
            "lines": len(gf),
        },
        "babel_cldr": {
            "version": importlib.metadata.version("babel"),
            "what": f"localized names of languages, territories, scripts, months, weekdays ({NAMES_PER_LINE} a line)",
            "base_locales": locales,
            "lines": len(cldr),
        },
        "palimix_prompts": {"what": "prompt templates without placeholders", "lines": len(templates)},
    }
    return corpus, sources


def script_of(ch: str) -> str:
    """A coarse script label from the Unicode character name (for statistics only)."""
    name = unicodedata.name(ch, "")
    return name.split(" ")[0] if name else "OTHER"


def train(corpus: list[str], vocab_size: int, out_dir: pathlib.Path, **overrides) -> pathlib.Path:
    import sentencepiece as spm

    out_dir.mkdir(parents=True, exist_ok=True)
    spm.set_random_generator_seed(SEED)
    model = io.BytesIO()
    # From an iterator, not a file: the trainer spec saved in the model would record a
    # temporary file's random name.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=model,
        vocab_size=vocab_size,
        minloglevel=2,
        **{**TRAINER_OPTIONS, **overrides},
    )
    path = out_dir / "sentencepiece.model"
    path.write_bytes(model.getvalue())
    return path


def tokens_per_character(model_path: pathlib.Path, lines: list[str]) -> dict[str, float]:
    """Tokens per character, overall and per dominant script of each line."""
    import collections

    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    chars: dict[str, int] = collections.Counter()
    tokens: dict[str, int] = collections.Counter()
    for line, ids in zip(lines, sp.encode(lines)):
        letters = [script_of(ch) for ch in line if ch.isalpha()]
        script = collections.Counter(letters).most_common(1)[0][0] if letters else "OTHER"
        for key in (script, "ALL"):
            chars[key] += len(line)
            tokens[key] += len(ids)
    return {k: round(tokens[k] / chars[k], 3) for k in sorted(chars, key=lambda k: -chars[k])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab-size", type=int, default=VOCAB_SIZE, help="pieces, without extra ids")
    parser.add_argument("--out", type=pathlib.Path, default=OUT, help="output folder")
    args = parser.parse_args(argv)

    import sentencepiece

    corpus, sources = build_corpus()
    corpus_bytes = ("\n".join(corpus) + "\n").encode("utf-8")
    path = train(corpus, args.vocab_size, args.out)
    gf_lines, _ = gflanguages_lines()
    info = {
        "built_by": "scripts/train_vocab.py",
        "sentencepiece_version": sentencepiece.__version__,
        "python": sys.version.split()[0],
        "vocab_size": args.vocab_size,
        "extra_ids": EXTRA_IDS,
        "seed": SEED,
        "trainer_options": TRAINER_OPTIONS,
        "sources": sources,
        "corpus": {
            "lines": len(corpus),
            "characters": sum(len(line) for line in corpus),
            "sha256": hashlib.sha256(corpus_bytes).hexdigest(),
        },
        "model": {"bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()},
        "tokens_per_character_on_gflanguages_text": tokens_per_character(path, gf_lines),
    }
    (args.out / "build_info.json").write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({"model": str(path), "bytes": info["model"]["bytes"], "sha256": info["model"]["sha256"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
