"""Image-code generation speed (issue 17): codes sampled per second with the decoding cache,
the cache's speed-up, the per-token cost of an image's h*w codes against a caption's
tokens on the same model, and the cost of classifier-free guidance.

    python benchmarks/image_generation.py [--models tiny,small,tiny_decoder] [--grid 16]
    python benchmarks/image_generation.py --smoke      # tiny, a 4x4 grid, one round (CI)

Random weights, the vocabulary size of the shipped SentencePiece model with the <img>
tokens; sampling (temperature 1, no EOS: every position decoded) of batch --batch with a
--prompt-token prompt and the config's image. Every timing is of the decode loop alone
(`decoding.generate_from` on a prepared batch: image and prompt encoded or prefilled
outside it), the fastest of --reps calls per round; compared calls are interleaved, and
ratios are medians over --rounds rounds. Prints a line per model and, last, one JSON line:

  codes_per_s             codes sampled per second, cached: batch * h*w / the decode's time
                          (which also samples <img> and EOS)
  ms_per_token_image      ms per token of that decode
  ms_per_token_caption    ms per token of a --caption-tokens decode (a typical caption)
  image_vs_caption        the two per-token costs' ratio (median over rounds)
  cache_speedup           per-token time without the cache / with it, image decode
                          (--uncached-models only: uncached is quadratic in length)
  guidance_cost           guided (doubled batch) / plain per-token time, image decode
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from palimix.models import configs, decoding, networks, paligemma

VOCAB_WITH_IMG = 8092 + 1025 + 100  # shipped pieces, the <img> tokenset, extra ids


def random_batch(model, batch_size: int, prompt_length: int, seed: int = 0) -> dict:
    """The network's PREDICT_INPUTS with random images and prompts."""
    rng = np.random.default_rng(seed)
    config = model.config
    size = config.vit.image_size
    prompt = jnp.asarray(rng.integers(2, 8000, (batch_size, prompt_length)), jnp.int32)
    batch = {"encoder_images": jnp.asarray(rng.uniform(-1, 1, (batch_size, size, size, 3)), jnp.float32),
             "encoder_image_mask": jnp.zeros((batch_size,), jnp.int32)}  # text_to_image: a blank image
    if isinstance(model, paligemma.PaliGemma):
        return {**batch, "decoder_input_tokens": prompt, "decoder_causal_attention": jnp.ones_like(prompt)}
    return {**batch, "encoder_input_tokens": prompt}


def decoder(model, params, batch, length: int, *, use_cache: bool = True, unconditional=None):
    """A no-argument function running the sampling loop over `batch`, prepared once."""
    guided = unconditional is not None
    if guided:
        batch = decoding.guidance_batch(model, batch, unconditional)
    prepared = jax.jit(functools.partial(decoding.prepare, model, max_decode_length=length, use_cache=use_cache))(
        params, batch)
    loop = jax.jit(functools.partial(decoding.generate_from, model, method="sample", eos_id=None,
                                     guidance_scale=3.0 if guided else None))
    rng = jax.random.PRNGKey(0)
    return lambda: loop(params, prepared, rng=rng)


def fastest(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return best


def rounds(fns: dict, lengths: dict, reps: int, count: int) -> dict:
    """Per-token seconds of each fn per round (fns interleaved; one warm-up call each)."""
    for fn in fns.values():
        jax.block_until_ready(fn())
    per_token = {name: [] for name in fns}
    for _ in range(count):
        for name, fn in fns.items():
            per_token[name].append(fastest(fn, reps) / lengths[name])
    return per_token


def measure(name: str, args) -> dict:
    config = configs.get(name, vocab_size=configs.round_vocab_size(VOCAB_WITH_IMG))
    model = networks.build(config)
    params = networks.init_params(config, jax.random.PRNGKey(0))
    batch = random_batch(model, args.batch, args.prompt_tokens)
    unconditional = random_batch(model, args.batch, args.prompt_tokens, seed=1)
    image_length = args.grid * args.grid + 2
    fns = {"image": decoder(model, params, batch, image_length),
           "caption": decoder(model, params, batch, args.caption_tokens),
           "guided": decoder(model, params, batch, image_length, unconditional=unconditional)}
    lengths = {"image": image_length, "caption": args.caption_tokens, "guided": image_length}
    if name in args.uncached_models:
        fns["uncached"] = decoder(model, params, batch, image_length, use_cache=False)
        lengths["uncached"] = image_length
    per_token = rounds(fns, lengths, args.reps, args.rounds)
    ratio = lambda a, b: float(np.median(np.asarray(per_token[a]) / np.asarray(per_token[b])))  # noqa: E731
    image_s = float(np.median(per_token["image"]))
    codes_per_s = args.batch * args.grid * args.grid / (image_s * image_length)
    result = {"image_tokens": image_length, "batch": args.batch, "codes_per_s": codes_per_s,
              "ms_per_token_image": 1e3 * image_s,
              "ms_per_token_caption": 1e3 * float(np.median(per_token["caption"])),
              "image_vs_caption": ratio("image", "caption"), "guidance_cost": ratio("guided", "image"),
              "cache_speedup": ratio("uncached", "image") if "uncached" in fns else None}
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,small,tiny_decoder")
    parser.add_argument("--uncached-models", default="tiny,tiny_decoder",
                        help="models also timed without the cache (slow: every step reruns the whole decoder)")
    parser.add_argument("--grid", type=int, default=16, help="h = w of the code grid (DaVinci: 16, 256 codes)")
    parser.add_argument("--caption-tokens", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny, a 4x4 grid, one round (CPU, CI)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.uncached_models, args.grid, args.batch, args.reps, args.rounds = "tiny", "tiny", 4, 2, 1, 1
    args.uncached_models = set(filter(None, args.uncached_models.split(",")))
    results = {}
    for name in filter(None, args.models.split(",")):
        r = results[name] = measure(name, args)
        cache = "-" if r["cache_speedup"] is None else f"{r['cache_speedup']:.1f}x"
        print(f"{name}: {r['codes_per_s']:.0f} codes/s cached ({r['ms_per_token_image']:.2f} ms/token for "
              f"{r['image_tokens']} tokens vs {r['ms_per_token_caption']:.2f} for {args.caption_tokens}: "
              f"{r['image_vs_caption']:.2f}x); cache speed-up {cache}; guidance {r['guidance_cost']:.2f}x",
              flush=True)
    summary = {"grid": args.grid, "caption_tokens": args.caption_tokens, "prompt_tokens": args.prompt_tokens,
               "batch": args.batch, "rounds": args.rounds, "devices": jax.device_count(),
               "platform": jax.devices()[0].platform, "models": results}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
