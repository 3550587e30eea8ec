"""`palimix languages`: the languages table."""

import json

HELP = "List the languages palimix knows (code, name, autonym, scripts, direction, segmentation)."


def configure(parser):
    parser.add_argument("codes", nargs="*", help="only these codes (aliases accepted)")
    parser.add_argument("--group", choices=["mc4", "xm3600", "extra"], help="only one group")
    parser.add_argument("--json", action="store_true", help="print JSON (one list of objects)")


def run(args) -> int:
    import dataclasses

    from palimix import languages

    if args.codes:
        entries = [languages.get(code) for code in args.codes]
    else:
        entries = [languages.get(code) for code in languages.codes(args.group)]
    if args.json:
        print(json.dumps([dataclasses.asdict(e) for e in entries], ensure_ascii=False, indent=1))
        return 0
    header = ("code", "name", "autonym", "scripts", "dir", "segmentation", "groups")
    rows = [
        (e.code, e.name, e.autonym, ",".join(e.scripts), e.direction, e.segmentation, ",".join(e.groups))
        for e in entries
    ]
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip())
    print(f"{len(rows)} languages")
    return 0
