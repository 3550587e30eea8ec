"""PaLI model benchmark: fusion overhead, decoding cost vs image tokens, train step time.

    python benchmarks/model.py [--batch 32] [--quick] [--decode-sizes tiny,small,base]

Ratios are measured in one run, alternating the compared functions so that machine
load affects both alike. Prints a table and, last, one JSON line:

  fusion_overhead   fused train step / (text-only step + ViT-only step) - 1, same shapes
                    (the text-only encoder gets N_img + L tokens). Goal <= 0.10.
  decode_256_vs_16  per-token greedy decode time with 256 image tokens / with 16
                    (cached decoding, batch 8, prompt 16; encoding not timed): the median
                    over --rounds rounds of the tiny model (each round: the fastest of 3
                    interleaved calls of each decode). Goal <= 1.3.
  decode            per --decode-sizes size: ms per token at 16 and 256 image tokens and
                    the 256-vs-16 ratio's median, min and max over the rounds (the
                    per-token time is the slope between two decode lengths, so every
                    round's ratio is a difference of four timed calls: its spread is the
                    timing noise, large where a token takes well under a millisecond);
                    streamed_256_vs_16: the ratio of the bytes a step must read (decoder
                    parameters + the whole cache), which a batch-8 step is bound by.
  cache_speedup     per-token time without the cache / with it, at 256 image tokens (tiny).
  decoder_decode_256_vs_16  the same ratio for the decoder-only tiny_decoder (image +
                    prompt prefilled outside the timed calls, then one token per step);
                    `decoder_decode` has its spread. Goal <= 1.3.
  train_step_ms     the tiny config's train step (Adam) at --batch, 16 image tokens.
  params_vs_paper   count_params / the PaLI paper's count for pali_3b, pali_15b, pali_17b,
                    and paligemma_3b / 2.92B (PaliGemma's report).
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from palimix.models import configs, decoding, losses, networks, pali


def make_batch(config, batch_size, input_length, target_length, seed=0):
    rng = np.random.default_rng(seed)
    s, v = config.vit.image_size, config.text.vocab_size
    targets = jnp.asarray(rng.integers(2, v, (batch_size, target_length)), jnp.int32)
    return dict(
        encoder_images=jnp.asarray(rng.uniform(-1, 1, (batch_size, s, s, 3)), jnp.float32),
        encoder_image_mask=jnp.ones((batch_size,), jnp.int32),
        encoder_input_tokens=jnp.asarray(rng.integers(2, v, (batch_size, input_length)), jnp.int32),
        decoder_input_tokens=pali.shift_right(targets),
        decoder_target_tokens=targets,
    )


def timed(fn, *args):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def alternate(fns: dict, reps: int) -> dict:
    """Median seconds per call of each fn, calls interleaved (after one warm-up each)."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def train_steps(config, batch):
    """Jitted Adam steps: fused PaLI, text only (N_img + L prompt tokens), ViT only."""
    model = pali.Pali(config)
    params = networks.init_params(config, jax.random.PRNGKey(0))
    optimizer = optax.adam(1e-3)

    def make_step(loss_fn, params, batch):
        state = optimizer.init(params)

        @jax.jit
        def step(params, state, batch):
            loss, grads = jax.value_and_grad(loss_fn)(params, batch)
            updates, state = optimizer.update(grads, state, params)
            return optax.apply_updates(params, updates), state, loss

        return lambda: step(params, state, batch)[2]

    def fused_loss(params, batch):
        logits = model.apply({"params": params}, **batch, enable_dropout=False)
        return losses.cross_entropy(logits, batch["decoder_target_tokens"]).mean

    text_params = {k: v for k, v in params.items() if k not in ("img", "img_proj")}
    n_img = config.num_image_tokens
    long_prompt = jnp.tile(batch["encoder_input_tokens"], (1, 1 + n_img // batch["encoder_input_tokens"].shape[1]))
    text_batch = dict(batch, encoder_input_tokens=long_prompt[:, : n_img + batch["encoder_input_tokens"].shape[1]])

    def text_loss(params, batch):
        logits = model.apply({"params": params}, None, None, batch["encoder_input_tokens"],
                             batch["decoder_input_tokens"], batch["decoder_target_tokens"], enable_dropout=False)
        return losses.cross_entropy(logits, batch["decoder_target_tokens"]).mean

    vit_params = {k: params[k] for k in ("img", "img_proj")}

    def vit_loss(params, batch):
        tokens = model.apply({"params": params}, batch["encoder_images"], method=model.embed_images)
        return jnp.mean(jnp.square(tokens))

    return {
        "fused": make_step(fused_loss, params, batch),
        "text": make_step(text_loss, text_params, text_batch),
        "vit": make_step(vit_loss, vit_params, batch),
    }


def train_results(batch_size, reps) -> dict:
    """Fusion overhead and the tiny train step (16 image tokens, 32 prompt, 32 target tokens)."""
    tiny = configs.get("tiny")
    batch = make_batch(tiny, batch_size, 32, 32)
    times = alternate(train_steps(tiny, batch), reps)
    results = {"train_step_ms": round(times["fused"] * 1e3, 2)}
    results["text_step_ms"] = round(times["text"] * 1e3, 2)
    results["vit_step_ms"] = round(times["vit"] * 1e3, 2)
    results["fusion_overhead"] = round(times["fused"] / (times["text"] + times["vit"]) - 1, 3)
    print(f"train step (tiny, batch {batch_size}): {results['train_step_ms']} ms fused, "
          f"{results['text_step_ms']} ms text-only, {results['vit_step_ms']} ms ViT-only")
    return results


# Per size: the two decode lengths whose time difference gives the per-token cost (what
# is done once per call cancels out). Larger models take fewer steps: CPU time.
DECODE_LENGTHS = {"tiny": (8, 72), "small": (4, 24), "base": (2, 10), "tiny_decoder": (8, 72)}
DECODE_BATCH, DECODE_PROMPT = 8, 16
# Image sizes giving 16 and 256 image tokens with 16-pixel patches.
IMAGE_SIZES = {16: 64, 256: 256}


# The parameters a cached decoding step reads in full, per family: the encoder-decoder's
# decoder (its logits layer included; the input embedding is only gathered from), and the
# decoder-only network's language model (its embedding is also the logits layer).
DECODER_PARAMS = {"pali": "decoder", "paligemma": "llm"}


def streamed_bytes(config, params, cache) -> int:
    """Bytes a cached decoding step reads at least: the decoder's parameters and the whole
    cache (every cached key/value is attended to). A step with batch 8 is a matrix-vector
    product, bound by these reads: their ratio is what the time ratio tends to, noise aside."""
    size = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))  # noqa: E731
    return size(params[DECODER_PARAMS[configs.family_of(config)]]) + size(cache)


def decode_fns(name: str, use_cache_options=(True,)) -> tuple[dict, dict]:
    """`{(image_tokens, cached, length): fn}`: one greedy decode of a batch prepared (encoded,
    or prefilled, with its cache) outside the timed call; same batch and prompt throughout.
    And `{image_tokens: streamed_bytes}` of a step of the longer decode."""
    fns, streamed = {}, {}
    for tokens, image_size in IMAGE_SIZES.items():
        config = configs.get(name, image_size=image_size)
        model = networks.build(config)
        params = networks.init_params(config, jax.random.PRNGKey(0))
        if isinstance(config, configs.PaliGemmaConfig):
            prompt = decoder_prompt(config, DECODE_BATCH, DECODE_PROMPT)
        else:
            prompt = {k: v for k, v in make_batch(config, DECODE_BATCH, DECODE_PROMPT, 1).items()
                      if k.startswith("encoder_")}
        decode = jax.jit(functools.partial(decoding.generate_from, model, eos_id=None))
        for use_cache in use_cache_options:
            for length in DECODE_LENGTHS[name]:
                prepared = jax.jit(functools.partial(decoding.prepare, model, max_decode_length=length,
                                                     use_cache=use_cache))(params, prompt)
                fns[tokens, use_cache, length] = functools.partial(
                    lambda decode, params, prepared: decode(params, prepared)[0], decode, params, prepared)
                if use_cache:
                    streamed[tokens] = streamed_bytes(config, params, prepared.cache)
    return fns, streamed


def rounds(fns: dict, count: int, calls: int = 3) -> dict:
    """Seconds of each fn in each of `count` rounds: the fastest of `calls` calls, calls
    interleaved across the fns (after one warm-up each), so that machine load affects
    every fn of a round alike and a call slowed by another process is not the reading."""
    for fn in fns.values():
        jax.block_until_ready(fn())
    times = {key: [] for key in fns}
    for _ in range(count):
        round_times = {key: [] for key in fns}
        for _ in range(calls):
            for key, fn in fns.items():
                round_times[key].append(timed(fn))
        for key, t in round_times.items():
            times[key].append(min(t))
    return {key: np.asarray(t) for key, t in times.items()}


def spread(values) -> dict:
    values = np.asarray(values)
    return {"median": round(float(np.median(values)), 3), "min": round(float(values.min()), 3),
            "max": round(float(values.max()), 3)}


def decode_cost(name: str, count: int, with_uncached: bool = False) -> dict:
    """Per-token decode time at 16 and 256 image tokens (ms, medians over rounds) and the
    ratio 256/16 per round (median, min, max): each round's ratio compares calls made
    next to each other."""
    short, long_ = DECODE_LENGTHS[name]
    fns, streamed = decode_fns(name, (True, False) if with_uncached else (True,))
    times = rounds(fns, count)
    per_token = {(tokens, cached): (times[tokens, cached, long_] - times[tokens, cached, short]) / (long_ - short)
                 for tokens, cached, _ in times}
    result = {
        "ms_per_token": {f"{tokens}{'' if cached else '_uncached'}": round(float(np.median(t)) * 1e3, 3)
                         for (tokens, cached), t in per_token.items()},
        "256_vs_16": spread(per_token[256, True] / per_token[16, True]),
        "streamed_mb": {str(tokens): round(b / 2**20, 2) for tokens, b in streamed.items()},
        "streamed_256_vs_16": round(streamed[256] / streamed[16], 3),
    }
    if with_uncached:
        result["cache_speedup_256"] = spread(per_token[256, False] / per_token[256, True])
    print(f"decode {name}: ms/token {result['ms_per_token']}, 256 vs 16 image tokens {result['256_vs_16']} "
          f"({count} rounds, batch {DECODE_BATCH}, prompt {DECODE_PROMPT}); bytes read per step "
          f"{result['streamed_mb']} MB, ratio {result['streamed_256_vs_16']}")
    return result


def decode_results(sizes, count) -> dict:
    """The encoder-decoder sizes' decode costs, and the decoder-only tiny model's; the
    headline ratios are the tiny models' medians."""
    by_size = {name: decode_cost(name, count, with_uncached=name == "tiny") for name in sizes}
    decoder = decode_cost("tiny_decoder", count)
    results = {"decode": by_size, "decoder_decode": decoder,
               "decoder_decode_256_vs_16": decoder["256_vs_16"]["median"]}
    if "tiny" in by_size:
        results["decode_256_vs_16"] = by_size["tiny"]["256_vs_16"]["median"]
        results["cache_speedup"] = by_size["tiny"]["cache_speedup_256"]["median"]
    return results


def decoder_prompt(config, batch_size, prompt_length, seed=0):
    """PaliGemma's PREDICT_INPUTS: every one of the prompt_length positions is prompt."""
    rng = np.random.default_rng(seed)
    s, v = config.vit.image_size, config.vocab_size
    tokens = rng.integers(2, v, (batch_size, prompt_length))
    tokens[:, 0] = 0  # BOS (shifted right)
    return dict(
        encoder_images=jnp.asarray(rng.uniform(-1, 1, (batch_size, s, s, 3)), jnp.float32),
        encoder_image_mask=jnp.ones((batch_size,), jnp.int32),
        decoder_input_tokens=jnp.asarray(tokens, jnp.int32),
        decoder_causal_attention=jnp.ones((batch_size, prompt_length), jnp.int32),
    )


def params_vs_paper() -> dict:
    """count_params / the paper's count, and a table."""
    ratios = {}
    print(f"{'model':<10} {'ViT':>8} {'text':>8} {'total':>8} {'paper':>7} {'diff':>7}")
    for name, paper in configs.PAPER_PARAMS.items():
        counts = networks.count_params(name)
        diff = counts["total"] / paper - 1
        ratios[name] = round(1 + diff, 4)
        print(f"{name:<10} {counts['vit'] / 1e9:>7.2f}B {counts['text'] / 1e9:>7.2f}B "
              f"{counts['total'] / 1e9:>7.2f}B {paper / 1e9:>6.1f}B {diff:>+7.1%}")
    return ratios


def paligemma_params() -> dict:
    """count_params / PaliGemma's reported count."""
    ratios = {}
    for name, reported in configs.PALIGEMMA_PARAMS.items():
        counts = networks.count_params(name)
        ratios[name] = round(counts["total"] / reported, 4)
        print(f"{name}: {counts['vit'] / 1e9:.3f}B ViT + {counts['img_proj'] / 1e6:.2f}M projection + "
              f"{counts['text'] / 1e9:.3f}B Gemma = {counts['total'] / 1e9:.3f}B (reported {reported / 1e9:.2f}B)")
    return ratios


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    parser.add_argument("--parts", default="train,decode,params", help="comma-separated: train, decode, params")
    parser.add_argument("--decode-sizes", default="tiny",
                        help=f"comma-separated encoder-decoder sizes for the decode ratio: {', '.join(DECODE_LENGTHS)}")
    parser.add_argument("--rounds", type=int, default=None, help="decode rounds (default 7; --quick 2)")
    args = parser.parse_args(argv)
    reps = 3 if args.quick else 10
    decode_rounds = args.rounds or (2 if args.quick else 7)
    sizes = args.decode_sizes.split(",")
    if not set(sizes) <= set(DECODE_LENGTHS) - {"tiny_decoder"}:
        parser.error(f"--decode-sizes: use names of {sorted(set(DECODE_LENGTHS) - {'tiny_decoder'})}")
    parts = set(args.parts.split(","))
    if not parts <= {"train", "decode", "params"}:
        parser.error(f"--parts: unknown {sorted(parts - {'train', 'decode', 'params'})}")
    results = {"device": jax.devices()[0].device_kind, "batch": args.batch}
    if "train" in parts:
        results.update(train_results(args.batch, reps))
    if "decode" in parts:
        results.update(decode_results(sizes, decode_rounds))
    if "params" in parts:
        results["params_vs_paper"] = {**params_vs_paper(), **paligemma_params()}
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
