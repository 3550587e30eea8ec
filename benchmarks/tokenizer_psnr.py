"""Reconstruction PSNR of a VQGAN tokenizer trained on a task's images (issue 17's number),
and what the optional losses change at equal steps.

Trains with `palimix train-tokenizer`'s code (`palimix.commands.train_tokenizer`) and
prints the held-out PSNR before training, after training, and of a trivial baseline: every
held-out image reconstructed as the mean of the training images seen (the same batches
the tokenizer trains on, so both read the same data).

`--variants` trains one tokenizer per loss variant (same seed, batches, steps) and reports
each one's held-out PSNR and seconds per step (compiling left out) as a ratio to the
L2-only run's, measured in the same process:

    l2                      L2 + quantizer loss only (train-tokenizer's default)
    adversarial             + MaskGIT's StyleGAN discriminator, non-saturating loss,
                            --adversarial_weight (MaskGIT's 0.1) after --adversarial_start
    perceptual_random_vgg   + LPIPS (--perceptual_weight, MaskGIT's 0.1) on a RANDOMLY
                            INITIALISED VGG16: no pretrained VGG16 can be downloaded here,
                            so this measures the cost of the loss, not the benefit of
                            ImageNet features
    both_random_vgg         both of the above

    python benchmarks/tokenizer_psnr.py [--name palimix_demo] [--steps 300] [--config tiny]
        [--variants l2,adversarial,perceptual_random_vgg] [--adversarial_start 150]

Last line: a JSON object with psnr (the first variant's), psnr_initial, psnr_mean_image,
steps, eval_images, and per variant its psnr, seconds_per_step and step_time_ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import numpy as np

# Which optional losses each variant switches on (their weights: the flags).
VARIANTS = {
    "l2": (),
    "adversarial": ("adversarial",),
    "perceptual_random_vgg": ("perceptual",),
    "both_random_vgg": ("adversarial", "perceptual"),
}


def write_random_vgg16(path: str, seed: int = 0) -> str:
    """A torchvision-layout VGG16 (`features.N.weight/bias`) with He-normal random weights."""
    from safetensors.numpy import save_file

    from palimix.models import perceptual

    rng, tensors, channels = np.random.default_rng(seed), {}, 3
    for indices, width in perceptual.VGG16_STAGES:
        for index in indices:
            std = np.sqrt(2.0 / (9 * channels))
            weight = std * rng.standard_normal((width, channels, 3, 3))
            tensors[f"features.{index}.weight"] = weight.astype(np.float32)
            tensors[f"features.{index}.bias"] = np.zeros(width, np.float32)
            channels = width
    save_file(tensors, path)
    return path


def mean_image_psnr(run) -> float:
    from palimix.commands import train_tokenizer
    from palimix.models import vqgan

    batches = train_tokenizer.train_batches(run)
    mean = np.mean([next(batches).mean(axis=0) for _ in range(run.steps)], axis=0)
    with train_tokenizer.partial_cache_warning_hidden():
        del batches
    held_out = train_tokenizer.held_out_images(run)
    return float(vqgan.psnr(held_out, np.broadcast_to(mean, held_out.shape)))


def run_variant(name: str, args, work: str) -> dict:
    from palimix.commands import train_tokenizer

    options = {}
    if "adversarial" in VARIANTS[name]:
        options.update(adversarial_weight=args.adversarial_weight, adversarial_start=args.adversarial_start)
    if "perceptual" in VARIANTS[name]:
        vgg = os.path.join(work, "random_vgg16.safetensors")
        options.update(perceptual_weight=args.perceptual_weight,
                       perceptual_network=vgg if os.path.exists(vgg) else write_random_vgg16(vgg))
    run = train_tokenizer.TokenizerRun(args.name, os.path.join(work, name), config=args.config, steps=args.steps,
                                       batch_size=args.batch_size, eval_images=args.eval_images,
                                       progress=False, **options)
    return train_tokenizer.train_tokenizer(run)


def main() -> None:
    from palimix.commands import train_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="palimix_demo")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--eval_images", type=int, default=64)
    parser.add_argument("--variants", default="l2",
                        help=f"comma-separated, the first the reference: {', '.join(VARIANTS)}")
    parser.add_argument("--adversarial_weight", type=float, default=0.1, help="MaskGIT's: 0.1")
    parser.add_argument("--adversarial_start", type=int, default=0)
    parser.add_argument("--perceptual_weight", type=float, default=0.1, help="MaskGIT's: 0.1")
    args = parser.parse_args()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    with tempfile.TemporaryDirectory() as work:
        results = {name: run_variant(name, args, work) for name in names}
    first = results[names[0]]
    baseline = mean_image_psnr(train_tokenizer.TokenizerRun(args.name, "", config=args.config, steps=args.steps,
                                                            batch_size=args.batch_size, eval_images=args.eval_images))
    variants = {}
    for name, result in results.items():
        ratio = result["seconds_per_step"] / first["seconds_per_step"]
        variants[name] = {"psnr": result["psnr"], "seconds_per_step": result["seconds_per_step"],
                          "step_time_ratio": ratio, "loss_settings": result["loss_settings"]}
        print(f"{args.name} [{name}]: held-out PSNR {result['psnr_initial']:.2f} dB at step 0, {result['psnr']:.2f} dB "
              f"at step {args.steps}; {result['seconds_per_step']:.3f} s/step ({ratio:.2f}x {names[0]})")
    print(f"the mean training image scores {baseline:.2f} dB")
    print(json.dumps({"psnr": first["psnr"], "psnr_initial": first["psnr_initial"], "psnr_mean_image": baseline,
                      "steps": args.steps, "eval_images": first["eval_images"], "name": args.name,
                      "config": args.config, "batch_size": args.batch_size, "variants": variants}))


if __name__ == "__main__":
    main()
