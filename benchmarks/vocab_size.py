"""How big should palimix's default vocabulary be? Tokens per character vs softmax cost.

Trains the default vocabulary recipe (scripts/train_vocab.py) at several sizes with the
gflanguages sentences (UDHR article 1 etc.) of the 36 Crossmodal-3600 languages held
out (their CLDR names stay in), then measures on those unseen sentences:
  - tokens per character (sequence length, hence decode steps and attention cost),
  - the share of characters spelled as UTF-8 byte pieces (not in the vocabulary),
and relates it to the cost of a tiny demo decoder (width 64, MLP 256, 2 layers: the
size DESIGN.md reports learning in ~2,000 CPU steps), whose output softmax (width x
vocabulary multiply-adds per token) dominates its compute:
  - softmax_share: softmax / (softmax + decoder layers) per target token,
  - decoder_cost_per_char: tokens per character x per-token cost, relative to 8k.

Run:  python benchmarks/vocab_size.py [--sizes 4092 8092 16284]     (~1 min per size)
Prints one JSON line per size and a final JSON line with all of them.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "scripts"))
import train_vocab  # noqa: E402

WIDTH, MLP, LAYERS = 64, 256, 2
EXTRA_IDS = train_vocab.EXTRA_IDS


def decoder_layer_macs() -> int:
    # Self-attention and cross-attention projections (4 d^2 each) and the MLP (2 d f).
    return LAYERS * (8 * WIDTH * WIDTH + 2 * WIDTH * MLP)


def held_out_keys() -> list[str]:
    """gflanguages keys ("de_Latn") of the Crossmodal-3600 languages."""
    from palimix import languages

    return sorted({languages.get(code).sample_text for code in languages.codes("xm3600")} - {""})


def held_out_lines(keys) -> list[str]:
    import gflanguages

    languages = gflanguages.LoadLanguages()
    lines = {}
    for key in keys:
        for _, text in languages[key].sample_text.ListFields():
            for line in text.split("\n"):
                if line.strip():
                    lines[line] = None
    return list(lines)


def measure(model_path: pathlib.Path, lines: list[str]) -> dict:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    chars = sum(len(line) for line in lines)
    ids = [i for line_ids in sp.encode(lines) for i in line_ids]
    byte_pieces = sum(1 for i in ids if sp.is_byte(i))
    return {"tokens_per_char": round(len(ids) / chars, 4), "byte_token_share": round(byte_pieces / len(ids), 4)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4092, 8092, 16284], help="pieces without extra ids")
    args = parser.parse_args(argv)

    keys = held_out_keys()
    corpus, _ = train_vocab.build_corpus(skip=frozenset(keys))
    test_lines = held_out_lines(keys)
    layer_macs = decoder_layer_macs()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            path = train_vocab.train(corpus, size, pathlib.Path(tmp) / str(size))
            softmax_macs = WIDTH * (size + EXTRA_IDS)
            row = {"vocab_size": size + EXTRA_IDS, **measure(path, test_lines)}
            row["softmax_share"] = round(softmax_macs / (softmax_macs + layer_macs), 3)
            row["_cost_per_char"] = row["tokens_per_char"] * (softmax_macs + layer_macs)
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if not k.startswith("_")}), flush=True)
    base = next((r for r in results if r["vocab_size"] == 8192), results[0])["_cost_per_char"]
    for row in results:
        row["decoder_cost_per_char_vs_8k"] = round(row.pop("_cost_per_char") / base, 3)
    print(json.dumps({
        "benchmark": "vocab_size",
        "held_out_languages": len(keys),
        "held_out_chars": sum(len(line) for line in test_lines),
        "decoder": {"width": WIDTH, "mlp": MLP, "layers": LAYERS},
        "results": results,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
