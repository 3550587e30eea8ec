"""Reconstruction PSNR of a VQGAN tokenizer trained on a task's images (issue 17's number).

Trains with `palimix train-tokenizer`'s code (`palimix.commands.train_tokenizer`) and
prints the held-out PSNR before training, after training, and of a trivial baseline: every
held-out image reconstructed as the mean of the training images seen (the same batches
the tokenizer trains on, so both read the same data).

    python benchmarks/tokenizer_psnr.py [--name palimix_demo] [--steps 300] [--config tiny]

Last line: a JSON object with psnr, psnr_initial, psnr_mean_image, steps, eval_images.
"""

from __future__ import annotations

import argparse
import json
import tempfile

import numpy as np


def mean_image_psnr(run) -> float:
    from palimix.commands import train_tokenizer
    from palimix.models import vqgan

    batches = train_tokenizer.train_batches(run)
    mean = np.mean([next(batches).mean(axis=0) for _ in range(run.steps)], axis=0)
    with train_tokenizer.partial_cache_warning_hidden():
        del batches
    held_out = train_tokenizer.held_out_images(run)
    return float(vqgan.psnr(held_out, np.broadcast_to(mean, held_out.shape)))


def main() -> None:
    from palimix.commands import train_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="palimix_demo")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--eval_images", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        run = train_tokenizer.TokenizerRun(args.name, out, config=args.config, steps=args.steps,
                                           batch_size=args.batch_size, eval_images=args.eval_images)
        result = train_tokenizer.train_tokenizer(run)
    baseline = mean_image_psnr(run)
    print(f"{args.name}: held-out PSNR {result['psnr_initial']:.2f} dB at step 0, {result['psnr']:.2f} dB at "
          f"step {args.steps}; the mean training image scores {baseline:.2f} dB")
    print(json.dumps({"psnr": result["psnr"], "psnr_initial": result["psnr_initial"], "psnr_mean_image": baseline,
                      "steps": args.steps, "eval_images": result["eval_images"], "name": args.name,
                      "config": args.config}))


if __name__ == "__main__":
    main()
