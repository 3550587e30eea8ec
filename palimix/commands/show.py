"""`palimix show TASK`: a few examples of a task or mixture: prompts, targets, images."""

from __future__ import annotations

import html

HELP = "Show examples of a task or mixture (prompt, target, references) and write an HTML contact sheet."
_TEXT_KEYS = ("id", "language", "kind", "inputs_pretokenized", "targets_pretokenized", "references")


def configure(parser):
    from palimix.commands.list_tasks import add_registration_flags

    parser.add_argument("name", nargs="?", help="task or mixture (default: the gin file's MIXTURE_OR_TASK_NAME)")
    parser.add_argument("-n", "--num_examples", type=int, default=8, help="how many examples (default 8)")
    parser.add_argument("--split", default="train", help="split (default: train)")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed (mixtures: sampling seed)")
    parser.add_argument("--html", metavar="FILE", help="write an HTML contact sheet with the images")
    add_registration_flags(parser)


def examples(name: str, n: int = 8, split: str = "train", seed: int = 0) -> list[dict]:
    """n preprocessed examples (numpy values) of a task or mixture, text features decoded."""
    import seqio

    from palimix import features
    from palimix.errors import UsageError
    from palimix.mixtures import get_provider

    if n <= 0:
        raise UsageError(f"-n must be positive, got {n}.")
    provider = get_provider(name)
    if split not in provider.splits:
        raise UsageError(f"{name!r} has no split {split!r}; it has: {', '.join(sorted(provider.splits))}.")
    if isinstance(provider, seqio.Task):
        ds = provider.get_dataset(sequence_length=None, split=split, shuffle=True, seed=seed, num_epochs=1,
                                  trim_output_features=False)
    else:
        ds = provider.get_dataset(sequence_length=None, split=split, shuffle=True, seed=seed, num_epochs=1,
                                  trim_output_features=False, passthrough_features=list(_TEXT_KEYS))
    out = []
    for ex in ds.take(n).as_numpy_iterator():
        row = {k: _decode(ex[k]) for k in _TEXT_KEYS if k in ex}
        row["has_image"] = int(features.has_real_image(ex))
        row["image"] = ex["image"]
        row["inputs_tokens"] = len(ex["inputs"])
        row["targets_tokens"] = len(ex["targets"])
        out.append(row)
    return out


def _decode(value):
    """A numpy feature value (bytes, a scalar or an array of them) as str/int/list."""
    import numpy as np

    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.ndim:
        return [_decode(v) for v in value.tolist()]
    if isinstance(value, (np.ndarray, np.generic)):
        return _decode(value.item())
    return value


def contact_sheet(name: str, split: str, rows: list[dict]) -> str:
    """An HTML page: one card per example with its image, prompt, target and references."""
    from palimix.report_images import png_data_uri

    cards = []
    for row in rows:
        image = (f'<img src="{png_data_uri(row["image"])}" width="192" height="192" alt="image">'
                 if row["has_image"] else '<div class="blank">no image</div>')
        refs = row.get("references") or []
        direction = ' dir="auto"'
        cards.append(
            '<figure class="card">' + image + "<figcaption>"
            f'<div class="meta">{html.escape(str(row.get("id", "")))} · {html.escape(str(row.get("language", "")))}'
            f' · {html.escape(str(row.get("kind", "")))}</div>'
            f'<div{direction}><b>prompt</b> {html.escape(str(row.get("inputs_pretokenized", "")))}</div>'
            f'<div{direction}><b>target</b> {html.escape(str(row.get("targets_pretokenized", "")))}</div>'
            + (f'<div{direction}><b>references</b> {html.escape(" | ".join(map(str, refs)))}</div>' if len(refs) > 1 else "")
            + "</figcaption></figure>")
    return (
        "<!doctype html><html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(name)} ({html.escape(split)})</title><style>"
        "body{font-family:sans-serif;margin:1em}.sheet{display:flex;flex-wrap:wrap;gap:12px}"
        ".card{width:200px;margin:0;border:1px solid #ccc;padding:4px;font-size:13px}"
        ".card img{image-rendering:pixelated;display:block}.blank{width:192px;height:192px;background:#eee;"
        "display:flex;align-items:center;justify-content:center;color:#888}.meta{color:#666;font-size:11px}"
        "</style></head><body>"
        f"<h1>{html.escape(name)} <small>({html.escape(split)}, {len(rows)} examples)</small></h1>"
        f'<div class="sheet">{"".join(cards)}</div></body></html>\n'
    )


def run(args) -> int:
    from palimix.commands.list_tasks import load_registrations
    from palimix.errors import UsageError

    gin_names = load_registrations(args)
    name = args.name or (gin_names[0] if gin_names else None)
    if not name:
        raise UsageError("name a task or mixture (or give --gin_file with MIXTURE_OR_TASK_NAME).")
    rows = examples(name, args.num_examples, args.split, args.seed)
    for i, row in enumerate(rows):
        print(f"[{i}] {row.get('id', '')}  {row.get('language', '')}  {row.get('kind', '')}  "
              f"image={'yes' if row['has_image'] else 'blank'}")
        print(f"    prompt: {row.get('inputs_pretokenized', '')}  ({row['inputs_tokens']} tokens)")
        print(f"    target: {row.get('targets_pretokenized', '')}  ({row['targets_tokens']} tokens)")
        refs = row.get("references") or []
        if len(refs) > 1:
            print(f"    references: {' | '.join(refs)}")
    if args.html:
        with open(args.html, "w", encoding="utf-8") as f:
            f.write(contact_sheet(name, args.split, rows))
        print(f"wrote {args.html}")
    return 0
