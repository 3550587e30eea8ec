"""`palimix encode-images IN.jsonl --tokenizer DIR --out OUT.jsonl`: each record's image as
VQGAN codes, written next to the record.

Reads a JSON Lines file (the layout `palimix.sources.JsonLines` reads), encodes each
line's image with the tokenizer that `palimix train-tokenizer` wrote to DIR
(`tokenizer.json` for its config, `tokenizer.msgpack` for its weights, MaskGIT's layout)
at the tokenizer's image size, and writes every line again with `"codes"`: the h*w code
grid, row by row (what the text_to_image and prefix_image kinds read; palimix.image_codes).
Lines without an image are written unchanged and counted. A missing or unreadable image
file is an error naming the line. Image paths are relative to `--image_dir` (default: the
input file's folder), as for JsonLines; the output keeps them as they are.
"""

from __future__ import annotations

import dataclasses
import json
import os

HELP = "Encode the images of a JSON Lines file with a trained VQGAN tokenizer (adds a `codes` field per line)."


def configure(parser):
    parser.add_argument("path", metavar="IN.jsonl", help="JSON Lines file with an image path per line")
    parser.add_argument("--tokenizer", required=True, help="folder written by `palimix train-tokenizer`")
    parser.add_argument("--out", required=True, help="output JSON Lines file (the lines plus `codes`)")
    parser.add_argument("--image_dir", help="folder the image paths are relative to (default: the file's folder)")
    parser.add_argument("--image_key", default="image", help="the lines' key of the image path (default image)")
    parser.add_argument("--batch_size", type=int, default=16)


@dataclasses.dataclass(frozen=True)
class EncodeSummary:
    lines: int  # Written.
    encoded: int  # With codes.
    without_image: int  # Written unchanged.
    grid: tuple[int, int]  # (h, w) codes per image.


def run(args) -> int:
    summary = encode_jsonl(args.path, args.tokenizer, args.out, image_dir=args.image_dir, image_key=args.image_key,
                           batch_size=args.batch_size)
    h, w = summary.grid
    print(f"{args.path}: {summary.encoded} images encoded as {h}x{w} codes, {summary.without_image} lines "
          f"without an image written unchanged; {summary.lines} lines written to {args.out}")
    return 0


def _read_lines(path: str) -> list[dict]:
    from palimix.errors import UsageError
    from palimix.sources.base import require_path

    require_path(path, "JSON Lines file")
    lines = []
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, 1):
            if text.strip():
                try:
                    lines.append(json.loads(text))
                except json.JSONDecodeError as e:
                    raise UsageError(f"{path}:{number}: not valid JSON ({e}).") from None
    return lines


def tokenizer_pixels(path: str, where: str, size: int):
    """[size, size, 3] float32 in [-1, 1] (the tokenizer's input), as the task pipeline scales."""
    import numpy as np

    from palimix.errors import UsageError
    from palimix.preprocessors import image_files

    if not os.path.isfile(path):
        raise UsageError(f"{where}: image file not found: {path!r}")
    with open(path, "rb") as f:
        pixels = image_files.decode(f.read(), size, path=path)
    return pixels.astype(np.float32) / 127.5 - 1.0


def encode_jsonl(path: str, tokenizer: str, out: str, *, image_dir: str | None = None, image_key: str = "image",
                 batch_size: int = 16) -> EncodeSummary:
    """Writes `out`: the lines of `path`, each with an image given `codes` (see module doc)."""
    import numpy as np

    from palimix import image_tokenizer
    from palimix.sources.base import join

    tokenizer_ = image_tokenizer.load(tokenizer)
    size = tokenizer_.config.image_size
    lines = _read_lines(path)
    folder = os.path.dirname(path) if image_dir is None else image_dir
    with_image = [i for i, line in enumerate(lines) if line.get(image_key)]
    for start in range(0, len(with_image), batch_size):
        chunk = with_image[start:start + batch_size]
        images = np.stack([tokenizer_pixels(join(folder, str(lines[i][image_key])), f"{path}: line with id "
                                            f"{lines[i].get('id', i + 1)}", size) for i in chunk])
        padded = np.concatenate([images, np.zeros((batch_size - len(chunk),) + images.shape[1:], images.dtype)])
        codes = tokenizer_.encode(padded)[:len(chunk)]  # One compiled shape: the last batch padded.
        for i, grid in zip(chunk, codes):
            lines[i]["codes"] = grid.reshape(-1).tolist()
    _write_lines(out, lines)
    grid = (tokenizer_.grid_size,) * 2
    return EncodeSummary(len(lines), len(with_image), len(lines) - len(with_image), grid)


def _write_lines(out: str, lines: list[dict]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    partial = f"{out}.partial"  # A whole file or none.
    with open(partial, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    os.replace(partial, out)
