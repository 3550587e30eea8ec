"""CIDEr speed: palimix (tokenization included) against pycocoevalcap's Cider on the
same pre-tokenized text, in one run.

Corpus: 5,000 images x 5 reference captions plus one prediction each, generated from
COCO-like templates (capitals, punctuation, contractions) with a fixed seed. palimix's
timing covers `palimix.metrics.cider(raw references, raw predictions)`: PTB
tokenization and scoring. pycocoevalcap's timing covers only `Cider().compute_score` on
the tokens palimix produced (its own tokenizer needs Java). The two scores must agree.

    python benchmarks/metrics.py [--images 5000]

Last line: {"palimix_s": ..., "pycocoevalcap_s": ..., "cider_speed_ratio": ...}
"""

from __future__ import annotations

import argparse
import json
import random
import time

SUBJECTS = ["a man", "a woman", "two dogs", "a black cat", "a young boy", "a group of people", "an old bus",
            "a red car", "three zebras", "a plate of food", "a little girl", "a brown horse", "a large jetliner"]
VERBS = ["sitting on", "standing next to", "riding", "walking down", "looking at", "parked near", "flying over",
         "playing with", "lying on", "holding"]
OBJECTS = ["a wooden bench", "the street", "a surfboard", "a green field", "the beach", "a table", "a frisbee",
           "a snowy hill", "the kitchen counter", "a city sidewalk", "a blue sky", "an umbrella"]
EXTRAS = ["", " in the rain", " at night", " on a sunny day", " while it's snowing", " (in the background)",
          " near some trees", ", smiling", " that isn't moving"]


def caption(rng: random.Random) -> str:
    text = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(EXTRAS)}"
    text = text[0].upper() + text[1:] if rng.random() < 0.7 else text
    return text + rng.choice([".", "", " .", "!"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--refs", type=int, default=5)
    args = parser.parse_args()

    from pycocoevalcap.cider.cider import Cider

    from palimix.metrics import cider
    from palimix.metrics.tokenize import ptb_tokenize

    rng = random.Random(0)
    references = [[caption(rng) for _ in range(args.refs)] for _ in range(args.images)]
    predictions = [caption(rng) for _ in range(args.images)]

    start = time.perf_counter()
    ours = cider(references, predictions)["cider"]
    palimix_s = time.perf_counter() - start

    gts = {i: [" ".join(ptb_tokenize(r)) for r in refs] for i, refs in enumerate(references)}
    res = {i: [" ".join(ptb_tokenize(p))] for i, p in enumerate(predictions)}
    start = time.perf_counter()
    theirs, _ = Cider().compute_score(gts, res)
    pycocoevalcap_s = time.perf_counter() - start

    if abs(ours - 100 * theirs) > 1e-9 * max(1.0, abs(ours)):
        raise SystemExit(f"scores differ: palimix {ours} vs pycocoevalcap x100 {100 * theirs}")
    print(f"CIDEr x100 = {ours:.4f} on {args.images} images x {args.refs} references (both implementations)")
    print(json.dumps({
        "images": args.images,
        "references_per_image": args.refs,
        "palimix_s": round(palimix_s, 3),
        "pycocoevalcap_s": round(pycocoevalcap_s, 3),
        "cider_speed_ratio": round(pycocoevalcap_s / palimix_s, 2),
    }))


if __name__ == "__main__":
    main()
