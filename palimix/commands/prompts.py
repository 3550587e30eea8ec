"""`palimix prompts`: the prompt templates, or the prompts one language gets."""

import json

HELP = "List prompt templates per kind, style and language (or the prompts one language gets)."


def configure(parser):
    parser.add_argument("--kind", help="only this task kind (caption, vqa, ocr, ...)")
    parser.add_argument("--style", help="only this style (pali, natural, instruct or verbatim)")
    parser.add_argument(
        "--language",
        help="show the templates this language gets for each kind and style (its own rows or the '*' fallback; "
             "instruct has several, one chosen per example)",
    )
    parser.add_argument("--templates", action="append", default=[], metavar="PATH",
                        help="also load this TSV file or folder of templates (repeatable; see palimix.prompts)")
    parser.add_argument("--json", action="store_true", help="print JSON (one list of objects)")


def run(args) -> int:
    from palimix import languages, prompts

    for path in args.templates:
        prompts.load_templates(path)
    kinds = [args.kind] if args.kind else list(prompts.KINDS)
    styles = [args.style] if args.style else list(prompts.STYLES)
    for kind in kinds:
        prompts.placeholders(kind)  # Unknown kind: a clear error before any output.
    rows = []
    if args.language:
        code = languages.normalize(args.language)
        for style in styles:
            for kind in kinds:
                if not _has_rows(prompts, kind, style):
                    continue  # verbatim: only kinds with a prompt text.
                for template in prompts.variants(kind, code, style):
                    # The pali and instruct "*" rows are meant for every language; a natural
                    # "*" row is the English fallback for a language nobody localized yet.
                    fallback = prompts.style(style).warn_on_fallback and template.language == prompts.ANY_LANGUAGE
                    rows.append(_row(template, fallback=fallback))
    else:
        for template in prompts.all_templates():
            if template.kind in kinds and template.style in styles:
                rows.append(_row(template))
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=1))
        return 0
    table = [("style", "kind", "language", "template")] + [
        (r["style"], r["kind"], r["language"] + (" (English fallback)" if r.get("fallback") else ""), r["template"])
        for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(3)]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) + "  " + line[3])
    print(f"{len(rows)} templates")
    return 0


def _has_rows(prompts, kind, style) -> bool:
    return prompts.style(style).every_kind or bool(prompts.templates(kind, style))


def _row(template, fallback=None):
    row = {
        "style": template.style,
        "kind": template.kind,
        "language": template.language,
        "template": template.text,
        "origin": template.origin,
    }
    if fallback is not None:
        row["fallback"] = fallback
    return row
