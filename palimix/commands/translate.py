"""`palimix translate`: an English task file into many languages (palimix.translate)."""

HELP = "Translate an English task file (mBLIP's format) into languages by a distribution (default mC4's)."


def configure(parser):
    parser.add_argument("src", help="the English task file: a JSON list (mBLIP's) or .jsonl")
    parser.add_argument("out_dir", help="where <src stem>.jsonl is written")
    parser.add_argument("--translator", required=True, metavar="MODULE:FUNCTION",
                        help="a function (texts, target_language) -> texts, e.g. your NLLB wrapper")
    parser.add_argument("--languages", default="mc4", metavar="SPEC",
                        help="'mc4' (mBLIP's mC4 shares, 96 languages), codes 'de,fr,sw' (their mC4 shares), "
                             "or weights 'de=2,fr=1'")
    parser.add_argument("--seed", type=int, default=0, help="seed of the language assignment")
    parser.add_argument("--fields", default="context,label", help="record keys to translate (comma-separated)")
    parser.add_argument("--batch-size", type=int, default=256, help="texts per translator call")


def parse_languages(spec: str):
    """'mc4' -> None (all of mC4), 'de,fr' -> ["de", "fr"], 'de=2,fr=1' -> {"de": 2.0, "fr": 1.0}."""
    from palimix.errors import UsageError

    if spec == "mc4":
        return None
    items = [item.strip() for item in spec.split(",") if item.strip()]
    if not items:
        raise UsageError("--languages is empty.")
    if not any("=" in item for item in items):
        return items
    weights = {}
    for item in items:
        code, _, weight = item.partition("=")
        try:
            weights[code.strip()] = float(weight)
        except ValueError:
            raise UsageError(f"--languages: {item!r} is not code=weight.") from None
    return weights


def run(args) -> int:
    import sys

    from palimix import translate

    result = translate.translate_task_file(
        args.src, args.out_dir, translate=translate.load_translator(args.translator),
        languages=parse_languages(args.languages), seed=args.seed,
        fields=[f.strip() for f in args.fields.split(",") if f.strip()], batch_size=args.batch_size)
    counts = ", ".join(f"{code} {n}" for code, n in sorted(result.counts.items(), key=lambda item: (-item[1], item[0])))
    print(f"wrote {result.path}: {sum(result.counts.values())} records, {result.texts_translated} texts translated")
    print(f"records per language: {counts}", file=sys.stdout)
    return 0
