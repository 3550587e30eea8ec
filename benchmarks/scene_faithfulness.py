"""How well the scene-faithfulness checker (palimix.metrics.scene) reads the demo's
scenes, and the ceiling the demo tokenizer leaves the text_to_image kind.

For each split of the demo's text_to_image records: the checker on the rendered scenes
(every distinct image once), and on the shipped tokenizer's reconstructions of them
(their `codes` drawn back to pixels), per attribute; with the tokenizer's held-out PSNR
and the mean-image baseline's, as the build script recorded them.

    python benchmarks/scene_faithfulness.py

Last line: a JSON object {split: {"images", "rendered": {...}, "reconstructed": {...}},
"tokenizer": {...}}.
"""

from __future__ import annotations

import json
import os

import numpy as np


def split_scores(split: str) -> dict:
    from PIL import Image

    from palimix import image_codes
    from palimix.metrics import scene
    from palimix.tasks import demo

    records = {r["image"]: r for r in demo.text_to_image_records(split).values()}
    wanted = [scene.Scene(**r["scene"]) for r in records.values()]
    rendered = []
    for path in records:
        with Image.open(os.path.join(demo.data_dir(), path)) as picture:
            rendered.append(np.asarray(picture.convert("RGB")))
    decoded = demo.image_tokenizer().decode_texts([image_codes.to_code_text(r["codes"]) for r in records.values()])
    return {"images": len(records), "rendered": scene.faithfulness(wanted, np.stack(rendered)),
            "reconstructed": scene.faithfulness(wanted, decoded.pixels)}


def main() -> None:
    from palimix.tasks import demo

    result = {split: split_scores(split) for split in demo.SPLITS}
    result["tokenizer"] = demo.build_info()["tokenizer"]
    for split in demo.SPLITS:
        for what in ("rendered", "reconstructed"):
            values = result[split][what]
            print(f"{split:10} {what:13} " + "  ".join(f"{k} {v:.1f}" for k, v in values.items()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
