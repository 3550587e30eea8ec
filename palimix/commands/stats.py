"""`palimix stats MIXTURE`: examples per task and language, effective rates, dropped
images and token-length percentiles (to choose TASK_FEATURE_LENGTHS)."""

from __future__ import annotations

import json

HELP = "Examples per task and language, effective rates, dropped images, token-length percentiles."
PERCENTILES = (50, 90, 99, 100)


def configure(parser):
    from palimix.commands.list_tasks import add_registration_flags

    parser.add_argument("name", nargs="?", help="task or mixture (default: the gin file's MIXTURE_OR_TASK_NAME)")
    parser.add_argument("--split", default="train", help="split to count (default: train)")
    parser.add_argument("--max_examples", type=int, default=None,
                        help="read at most this many examples per task (default: all)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_registration_flags(parser)


def compute(name: str, split: str = "train", max_examples: int | None = None) -> dict:
    """The statistics `palimix stats` prints, as a dict."""
    import numpy as np
    import seqio

    from palimix.errors import UsageError
    from palimix.mixtures import effective_rates, get_provider
    from palimix.preprocessors import image
    from palimix.tasks import task_info

    provider = get_provider(name)
    tasks = [t for t in ([provider] if isinstance(provider, seqio.Task) else provider.tasks) if split in t.splits]
    if not tasks:
        raise UsageError(f"{name!r} has no tasks with a {split!r} split.")
    rates = effective_rates(provider) if split == "train" or isinstance(provider, seqio.Task) else {}
    rows, lengths = [], {"inputs": [], "targets": []}
    for task in tasks:
        info = task_info(task.name)
        image.reset_dropped_image_counts(task.name)
        ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1,
                              trim_output_features=False, seed=0)
        if max_examples:
            ds = ds.take(max_examples)
        ds = ds.map(lambda ex: {k: ex[k] for k in ("inputs", "targets", "language") if k in ex})
        task_lengths = {"inputs": [], "targets": []}
        task_languages: dict[str, int] = {}
        for ex in ds.as_numpy_iterator():
            for key in task_lengths:
                task_lengths[key].append(len(ex[key]))
            code = ex["language"].decode() if "language" in ex else (info.language if info else "?")
            task_languages[code] = task_languages.get(code, 0) + 1
        dropped = image.dropped_image_counts().get(task.name, {})
        for key in lengths:
            lengths[key].extend(task_lengths[key])
        rows.append({
            "task": task.name,
            "kind": info.kind if info else "?",
            "language": info.language if info else "?",
            "input_examples": task.num_input_examples(split),
            "examples": len(task_lengths["targets"]),
            "dropped_images": dict(dropped),
            "rate": rates.get(task.name),
            "inputs_length": _percentiles(task_lengths["inputs"]),
            "targets_length": _percentiles(task_lengths["targets"]),
            "examples_per_language": task_languages,
        })
    by_language: dict[str, int] = {}
    for row in rows:
        for code, count in row["examples_per_language"].items():
            by_language[code] = by_language.get(code, 0) + count
    overall = {key: _percentiles(values) for key, values in lengths.items()}
    image_sizes = sorted({task_info(t.name).image_size for t in tasks if task_info(t.name)})
    suggested = {key: int(np.ceil(max(overall[key]["p100"], 1) / 8) * 8) for key in overall}
    if len(image_sizes) == 1:
        suggested["image"] = image_sizes[0]
    return {
        "name": provider.name,
        "split": split,
        "sampled": bool(max_examples),
        "tasks": rows,
        "examples": sum(r["examples"] for r in rows),
        "input_examples": sum(r["input_examples"] or 0 for r in rows),
        "dropped_images": sum(sum(r["dropped_images"].values()) for r in rows),
        "examples_per_language": dict(sorted(by_language.items())),
        "length_percentiles": overall,
        "suggested_task_feature_lengths": suggested,
    }


def _percentiles(values) -> dict:
    import numpy as np

    if not values:
        return {f"p{p}": 0 for p in PERCENTILES}
    return {f"p{p}": int(np.ceil(np.percentile(values, p))) for p in PERCENTILES}


def run(args) -> int:
    from palimix.commands.list_tasks import load_registrations
    from palimix.errors import UsageError

    gin_names = load_registrations(args)
    name = args.name or (gin_names[0] if gin_names else None)
    if not name:
        raise UsageError("name a task or mixture (or give --gin_file with MIXTURE_OR_TASK_NAME).")
    stats = compute(name, args.split, args.max_examples)
    if args.json:
        print(json.dumps(stats, ensure_ascii=False, indent=1))
        return 0
    header = ("task", "kind", "lang", "in", "out", "dropped", "rate%", "inputs p50/p99/max", "targets p50/p99/max")
    table = []
    for r in stats["tasks"]:
        rate = "" if r["rate"] is None else f"{100 * r['rate']:.2f}"
        table.append((r["task"], r["kind"], r["language"], str(r["input_examples"]), str(r["examples"]),
                      str(sum(r["dropped_images"].values())), rate, _lengths(r["inputs_length"]),
                      _lengths(r["targets_length"])))
    widths = [max(len(row[i]) for row in table + [header]) for i in range(len(header))]
    for row in [header] + table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    sampled = " (sampled: --max_examples)" if stats["sampled"] else ""
    print(f"\n{stats['name']} [{stats['split']}]: {stats['examples']} examples{sampled} from "
          f"{stats['input_examples']} input examples in {len(stats['tasks'])} tasks and "
          f"{len(stats['examples_per_language'])} languages; {stats['dropped_images']} images dropped.")
    for key, p in stats["length_percentiles"].items():
        print(f"{key} length: p50 {p['p50']}, p90 {p['p90']}, p99 {p['p99']}, max {p['p100']} tokens")
    print(f"suggested TASK_FEATURE_LENGTHS = {stats['suggested_task_feature_lengths']}")
    return 0


def _lengths(p) -> str:
    return f"{p['p50']}/{p['p99']}/{p['p100']}"
