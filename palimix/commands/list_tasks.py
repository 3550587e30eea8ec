"""`palimix list`: the registered tasks and mixtures, their kinds and languages."""

from __future__ import annotations

import json

HELP = "List registered tasks and mixtures (kinds, languages, image size, rates)."


def add_registration_flags(parser) -> None:
    """--module and --gin_file, shared by list, show and stats."""
    from palimix.runner.config import add_module_flag

    add_module_flag(parser)
    parser.add_argument("--gin_file", action="append", default=[], metavar="FILE",
                        help="parse this gin file first (e.g. a mixture defined with palimix.mixture); repeatable")


def load_registrations(args) -> list[str]:
    """Imports palimix.tasks, the --module modules and the --gin_file files; returns
    the names the gin files' MIXTURE_OR_TASK_NAME macros give."""
    import palimix.tasks  # noqa: F401  (registers palimix's tasks)
    from palimix.mixtures import load_gin_mixture
    from palimix.runner.config import import_modules

    import_modules(args.module)
    return [load_gin_mixture(path) for path in args.gin_file]


def provider_summary(name: str) -> dict:
    """kind(s), languages, image size, tasks and rate description of a task or mixture."""
    import seqio

    from palimix.mixtures import PalimixMixture, get_provider
    from palimix.tasks import task_info

    provider = get_provider(name)
    tasks = [provider] if isinstance(provider, seqio.Task) else provider.tasks
    infos = [task_info(t.name) for t in tasks]
    known = [i for i in infos if i is not None]
    summary = {
        "name": provider.name,
        "type": "task" if isinstance(provider, seqio.Task) else "mixture",
        "kinds": sorted({i.kind for i in known}) or ["?"],
        "languages": sorted({code for i in known for code in i.languages}),
        "image_size": sorted({i.image_size for i in known}),
        "tasks": len(tasks),
        "splits": sorted(provider.splits),
    }
    if summary["type"] == "mixture":
        # A mixture registered with seqio directly has seqio's rates and no description.
        summary["rate"] = (provider.description if isinstance(provider, PalimixMixture) else "") or "seqio"
        summary["entries"] = list(provider.rate_per_task_name)
    elif known:
        summary["source"] = known[0].source
    return summary


def configure(parser):
    parser.add_argument("--tasks", action="store_true", help="list every task (default: mixtures only)")
    parser.add_argument("--kind", help="only tasks/mixtures of this kind")
    parser.add_argument("--language", help="only tasks/mixtures with this language")
    parser.add_argument("--json", action="store_true", help="print JSON (a list of objects)")
    add_registration_flags(parser)


def run(args) -> int:
    import seqio

    from palimix import languages

    load_registrations(args)
    language = languages.normalize(args.language) if args.language else None
    if args.kind:
        from palimix import kinds

        kinds.get(args.kind)  # An unknown kind is a UsageError naming the kinds.
    names = sorted(seqio.TaskRegistry.names()) if args.tasks else sorted(seqio.MixtureRegistry.names())
    rows = []
    for name in names:
        summary = provider_summary(name)
        if args.kind and args.kind not in summary["kinds"]:
            continue
        if language and language not in summary["languages"]:
            continue
        rows.append(summary)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=1))
        return 0
    header = ("name", "type", "kinds", "tasks", "languages", "image", "rate")
    table = [(r["name"], r["type"], ",".join(r["kinds"]), str(r["tasks"]), _languages_cell(r["languages"]),
              ",".join(map(str, r["image_size"])), r.get("rate", "")) for r in rows]
    widths = [max(len(row[i]) for row in table + [header]) for i in range(len(header))]
    for row in [header] + table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    print(f"{len(rows)} {'tasks' if args.tasks else 'mixtures'}")
    return 0


def _languages_cell(codes, limit: int = 6) -> str:
    if len(codes) <= limit:
        return ",".join(codes) or "-"
    return f"{len(codes)} ({','.join(codes[:limit])},...)"
