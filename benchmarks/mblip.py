"""mBLIP's model pieces at the mT0-XL size (sizes/mblip_mt0_xl.gin), counted without
allocating anything (jax.eval_shape, and XLA's cost analysis of the lowered, not
compiled, programs), plus the int8 logits difference measured on the tiny model.

- image tokens and the language model's forward FLOPs per example: the LM reads
  256 ViT tokens (linear bridge) or 32 Q-Former queries in front of a 64-token prompt,
  and a 32-token target (the encoder and decoder of mT0-XL, from XLA's cost analysis);
- trainable share: LoRA (q, k, v, o, wi_0, wi_1, wo; rank 8) + Q-Former + projection
  vs full fine-tuning (models/mblip_lora.gin's selection);
- frozen weights: bytes of the frozen LM weights in int8 (int8_kernels) vs float32;
- int8 vs float32 logits on the tiny model (max |difference|, relative to max |logit|,
  and argmax agreement).

    python benchmarks/mblip.py [--prompt 64] [--target 32]

Last line: a JSON object with every number.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from palimix.models import checkpoints, configs, lora, networks, quantize, trainable

# sizes/mblip_mt0_xl.gin's bindings.
MT0_XL = dict(vit="g/14", vit_depth=39, text="mt5_xl", image_size=224, dtype="bfloat16")
MBLIP_LORA = dict(bridge="qformer", lm_lora_targets=list(configs.LORA_TARGETS), lm_lora_rank=8, lm_lora_alpha=16.0)


def abstract_params(config):
    return jax.eval_shape(lambda: networks.init_params(config, jax.random.PRNGKey(0)))


def lm_forward_flops(config, image_tokens: int, prompt: int, target: int) -> float:
    """Forward FLOPs of the LM alone for one example whose encoder reads image_tokens +
    prompt tokens (text-only encode of that length: the same work)."""
    network = networks.build(config)
    params = abstract_params(config)

    def forward(p, enc, dec):
        encoded = network.apply({"params": p}, None, None, enc, enable_dropout=False, method=network.encode)
        return network.apply({"params": p}, encoded, None, enc, dec, dec, enable_dropout=False,
                             method=network.decode)

    enc = jax.ShapeDtypeStruct((1, image_tokens + prompt), jnp.int32)
    dec = jax.ShapeDtypeStruct((1, target), jnp.int32)
    return float(jax.jit(forward).lower(params, enc, dec).cost_analysis()["flops"])


def trainable_share(config) -> dict:
    shapes = abstract_params(config)
    mask = trainable.ParamSelection(trainable=lora.MBLIP_TRAINABLE).mask(shapes)
    sizes = [int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes)]
    trained = sum(s for s, m in zip(sizes, jax.tree_util.tree_leaves(mask)) if m)
    adapters = sum(s for s, n in zip(sizes, trainable.flat_names(shapes)) if lora._is_adapter_param(n))
    return {"total_params": sum(sizes), "trainable_params": trained, "lora_params": adapters,
            "bridge_params": trained - adapters, "trainable_share": trained / sum(sizes)}


def frozen_memory(config_float, config_int8) -> dict:
    def frozen_lm(config):
        shapes = abstract_params(config)
        return {k: v for k, v in shapes.items() if k not in checkpoints.IMAGE_SIDE}

    fp, q = quantize.nbytes(frozen_lm(config_float)), quantize.nbytes(frozen_lm(config_int8))
    return {"frozen_lm_float32_bytes": fp, "frozen_lm_int8_bytes": q, "frozen_lm_int8_ratio": q / fp}


def tiny_logits_difference() -> dict:
    config, int8 = configs.get("tiny"), configs.get("tiny", int8_kernels=True)
    params = networks.init_params(config, jax.random.PRNGKey(0))
    quantized = quantize.quantize_params(params, int8)
    batch = networks.dummy_batch(config, 8, {"inputs": 16, "targets": 8})
    rng = np.random.default_rng(0)
    batch = dict(batch, encoder_images=jnp.asarray(rng.uniform(-1, 1, batch["encoder_images"].shape), jnp.float32),
                 encoder_input_tokens=jnp.asarray(rng.integers(1, 8000, (8, 16)), jnp.int32),
                 decoder_input_tokens=jnp.asarray(rng.integers(1, 8000, (8, 8)), jnp.int32))

    def logits(cfg, p):
        network = networks.build(cfg)
        return np.asarray(jax.jit(lambda p: network.apply({"params": p}, *networks.inputs(network, batch),
                                                          enable_dropout=False))(p))

    full, low = logits(config, params), logits(int8, quantized)
    return {"tiny_int8_logits_max_abs_diff": float(np.abs(full - low).max()),
            "tiny_int8_logits_rel_diff": float(np.abs(full - low).max() / np.abs(full).max()),
            "tiny_int8_argmax_agreement": float((full.argmax(-1) == low.argmax(-1)).mean())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--target", type=int, default=32)
    args = parser.parse_args()
    linear = configs.get("base", **MT0_XL)
    mblip = configs.get("base", **MT0_XL, **MBLIP_LORA)
    result = {"image_tokens_linear": linear.num_image_tokens, "image_tokens_qformer": mblip.num_image_tokens}
    lm = configs.get("base", **MT0_XL)
    flops_256 = lm_forward_flops(lm, linear.num_image_tokens, args.prompt, args.target)
    flops_32 = lm_forward_flops(lm, mblip.num_image_tokens, args.prompt, args.target)
    result.update(lm_forward_gflops_256=flops_256 / 1e9, lm_forward_gflops_32=flops_32 / 1e9,
                  lm_forward_flops_ratio=flops_32 / flops_256)
    print(f"LM forward per example: {flops_256 / 1e9:.1f} GFLOPs with {linear.num_image_tokens} image tokens, "
          f"{flops_32 / 1e9:.1f} with {mblip.num_image_tokens} ({flops_32 / flops_256:.2f}x)")
    counts = networks.count_params(mblip)
    result.update({f"params_{k}": v for k, v in counts.items()})
    result.update(trainable_share(mblip))
    print(f"trainable: {result['trainable_params'] / 1e6:.1f}M of {result['total_params'] / 1e9:.2f}B "
          f"({100 * result['trainable_share']:.2f}%; LoRA {result['lora_params'] / 1e6:.1f}M, "
          f"Q-Former + projection {result['bridge_params'] / 1e6:.1f}M)")
    result.update(frozen_memory(mblip, configs.get("base", **MT0_XL, **MBLIP_LORA, lm_int8_kernels=True)))
    print(f"frozen LM weights: {result['frozen_lm_float32_bytes'] / 2**30:.2f} GiB float32, "
          f"{result['frozen_lm_int8_bytes'] / 2**30:.2f} GiB int8 ({result['frozen_lm_int8_ratio']:.3f}x)")
    result.update(tiny_logits_difference())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
