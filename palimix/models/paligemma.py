"""PaliGemma: ViT image tokens, projected to the language model's width, as the fully
attended prefix of a decoder-only Gemma that generates the answer (Beyer et al. 2024).

Inputs (t5x/seqio's decoder-only prefix-LM features plus palimix's image features):
encoder_images `[B, S, S, 3]` float32 in [-1, 1]; encoder_image_mask `[B]` int (0 = the
blank image of a language-only example: its tokens are masked out of all attention);
decoder_target_tokens `[B, L]` = prompt ++ answer (0 = padding); decoder_input_tokens
the same shifted right by one (0 first); decoder_causal_attention `[B, L]` 1 on the
prefix (as seqio's PrefixLMFeatureConverter writes it: the prompt length + 1).

The sequence is [image tokens (num_image_tokens), text (L)]. Image tokens and the text
prefix attend to each other fully; the rest attends causally; padding is masked.
Positions (rotary) count from the first image token: 0, 1, ..., so the text starts at
num_image_tokens whether or not the image is blank (rotary attention only sees
distances, and blank image tokens are never attended).

Parameters: `img/...` (palimix's ViT, big_vision names) + `img/head/{kernel,bias}` (the
projection to the Gemma width, `('vit_embed', 'embed')`, as big_vision's PaliGemma ViT
head), or with `bridge="qformer"` a headless `img/...` and the Q-Former's
`query_tokens`, `qformer/...`, `language_projection/...` (`palimix.models.qformer`);
`llm/...` (see `palimix.models.gemma`: unstacked `llm/layers_N`).

Decoding (`palimix.models.decoding` drives it): `prefill` runs image + prompt once and
creates the cache (collection "cache": per layer keys/values, plus `key_mask [B, slots]`
and `next_slot [B]`); each `decode_step` feeds one token per example. Cache slots are
sequence positions: slot n holds position n, each example's answer starts right after
its own prompt (left-aligned, no padding in between). `PaliGemma.rewind_cache(cache,
steps)` takes back each example's last `steps` positions, so that decoding feeds them
again (T5X's decode functions start by re-feeding the last prompt token).
"""

from __future__ import annotations


import flax.linen as nn
import jax.numpy as jnp

from palimix.models import gemma, layers, qformer, vit
from palimix.models.configs import PaliGemmaConfig

_PACKING_ERROR = (
    "PaliGemma examples cannot be packed (each example has its own image tokens): "
    "use pack=False in the feature converter."
)


class ProjectedVisionTransformer(vit.VisionTransformer):
    """palimix's ViT plus big_vision's `head`: every patch token projected to
    `projection_width` (the language model's width)."""

    projection_width: int = 0

    @nn.compact
    def __call__(self, images, *, train: bool = False):
        tokens = super().__call__(images, train=train)
        return layers.DenseGeneral(
            self.projection_width, kernel_axes=("vit_embed", "embed"), use_bias=True, bias_axes=("embed",),
            dtype=self.dtype, param_dtype=self.param_dtype, name="head",
        )(tokens)


def prefix_lm_mask(prefix, valid):
    """`[B, N]` booleans -> attention mask `[B, 1, N, N]` (True = query may attend key):
    both valid, and the key not after the query or both in the prefix."""
    n = prefix.shape[1]
    causal = jnp.tril(jnp.ones((n, n), bool))[None]
    both_prefix = prefix[:, :, None] & prefix[:, None, :]
    both_valid = valid[:, :, None] & valid[:, None, :]
    return ((causal | both_prefix) & both_valid)[:, None]


class PaliGemma(nn.Module):
    config: PaliGemmaConfig

    # The model features `__call__` reads, in the order of its arguments, and those
    # decoding reads (the feature converter's names; docs/ARCHITECTURE.md).
    INPUTS = ("encoder_images", "encoder_image_mask", "decoder_input_tokens", "decoder_target_tokens",
              "decoder_causal_attention")
    PREDICT_INPUTS = ("encoder_images", "encoder_image_mask", "decoder_input_tokens", "decoder_causal_attention")

    def setup(self):
        cfg = self.config
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        if cfg.bridge == "qformer":
            self.img = vit.VisionTransformer(cfg.vit, cfg.remat, dtype, param_dtype, cfg.scan_layers)
            self.bridge = qformer.QFormerBridge(cfg.qformer, cfg.llm.width, dtype, param_dtype)
            nn.share_scope(self, self.bridge)  # HF's top-level names: query_tokens, qformer, ...
        else:
            self.img = ProjectedVisionTransformer(cfg.vit, cfg.remat, dtype, param_dtype, cfg.scan_layers,
                                                  projection_width=cfg.llm.width)
        self.llm = gemma.Gemma(cfg.llm, cfg.remat, dtype, param_dtype, cfg.scan_layers)

    def embed_images(self, encoder_images, enable_dropout: bool = False):
        """Images -> image tokens at the Gemma width `[B, num_image_tokens, width]`
        (not scaled by sqrt(width): only token embeddings are)."""
        if encoder_images.ndim != 4:
            raise ValueError(f"encoder_images must be [batch, S, S, 3], got {encoder_images.shape}")
        tokens = self.img(encoder_images, train=enable_dropout)
        if self.config.bridge == "qformer":
            tokens = self.bridge(tokens, deterministic=not enable_dropout)
        return layers.constrain(tokens, ("batch", "length", "embed"))

    def _sequence(self, encoder_image_mask, text_valid, decoder_causal_attention):
        """Per position of [image tokens, text]: valid `[B, N]`, in the prefix `[B, N]`,
        positions `[B, N]`."""
        if encoder_image_mask is None:
            raise ValueError("encoder_image_mask [batch] is required (0 for a blank image).")
        batch, n_img = text_valid.shape[0], self.config.num_image_tokens
        image_valid = jnp.broadcast_to((jnp.asarray(encoder_image_mask) > 0)[:, None], (batch, n_img))
        valid = jnp.concatenate([image_valid, text_valid], axis=1)
        prefix = jnp.concatenate([jnp.ones((batch, n_img), bool), decoder_causal_attention > 0], axis=1)
        positions = jnp.broadcast_to(jnp.arange(valid.shape[1], dtype=jnp.int32), valid.shape)
        return valid, prefix, positions

    def __call__(self, encoder_images, encoder_image_mask, decoder_input_tokens, decoder_target_tokens,
                 decoder_causal_attention, decoder_segment_ids=None, *, enable_dropout: bool = True):
        """Teacher-forced logits `[B, L, vocab]` (float32) over the text positions."""
        if decoder_segment_ids is not None:
            raise ValueError(_PACKING_ERROR)
        _check_text_shapes(decoder_input_tokens, decoder_target_tokens, decoder_causal_attention)
        image_tokens = self.embed_images(encoder_images, enable_dropout)
        valid, prefix, positions = self._sequence(encoder_image_mask, decoder_target_tokens > 0,
                                                  decoder_causal_attention)
        return self.llm(image_tokens, decoder_input_tokens, positions, prefix_lm_mask(prefix, valid),
                        deterministic=not enable_dropout)

    # --- decoding ---------------------------------------------------------------------

    def prefill(self, encoder_images, encoder_image_mask, decoder_input_tokens, decoder_causal_attention, *,
                cache_length: int):
        """Runs image + prompt (the positions where decoder_causal_attention is 1) once,
        creating a cache of `cache_length` slots; returns the logits `[B, vocab]` of
        each example's last prompt position (they predict the first answer token)."""
        _check_text_shapes(decoder_input_tokens, decoder_causal_attention)
        prompt = decoder_causal_attention > 0
        valid, prefix, positions = self._sequence(encoder_image_mask, prompt, decoder_causal_attention)
        if cache_length < valid.shape[1]:
            raise ValueError(f"cache_length {cache_length} < image tokens + text length {valid.shape[1]}.")
        slots = ((0, 0), (0, 0), (0, 0), (0, cache_length - valid.shape[1]))
        mask = jnp.pad(prefix_lm_mask(prefix, valid), slots)  # nothing after the sequence yet
        tokens = jnp.where(prompt, decoder_input_tokens, 0)
        logits = self.llm(self.embed_images(encoder_images), tokens, positions, mask, cache_length=cache_length)
        prompt_length = jnp.sum(prompt, axis=1, dtype=jnp.int32)
        self.put_variable("cache", "key_mask", jnp.pad(valid, ((0, 0), (0, cache_length - valid.shape[1]))))
        self.put_variable("cache", "next_slot", self.config.num_image_tokens + prompt_length)
        last = jnp.maximum(prompt_length - 1, 0)  # an all-padding row (batch filler) reads position 0
        return jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0]

    def decode_step(self, tokens):
        """Feeds `tokens [B]` (each example's latest token) at each example's next slot;
        returns the logits `[B, vocab]` of the token after it."""
        slot = self.get_variable("cache", "next_slot")
        key_mask = self.get_variable("cache", "key_mask")
        key_mask = key_mask.at[jnp.arange(slot.shape[0]), slot].set(True)
        logits = self.llm(None, tokens[:, None], slot[:, None], key_mask[:, None, None, :], cache_index=slot)
        self.put_variable("cache", "key_mask", key_mask)
        self.put_variable("cache", "next_slot", slot + 1)
        return logits[:, 0]

    @staticmethod
    def rewind_cache(cache, steps):
        """The decoding `cache` (a "cache" collection after `prefill` / `decode_step`) as if
        each example's last `steps` positions (an int or `[B]`) had not been fed: its next
        slot moves back by `steps` and those slots leave `key_mask`, so the next
        `decode_step` feeds the first of them again (and overwrites its keys/values).
        Returns a new cache; layer keys/values are shared, not copied.

        Feeding them again reproduces them where they attended causally: answer
        positions, and the prefix's last one (it sees the whole prefix either way). An
        earlier prefix position saw the later ones in the prefill, which a step cannot."""
        next_slot = cache["next_slot"] - jnp.asarray(steps, jnp.int32)
        slots = jnp.arange(cache["key_mask"].shape[1], dtype=jnp.int32)
        key_mask = cache["key_mask"] & (slots[None, :] < next_slot[:, None])
        return {**cache, "next_slot": next_slot, "key_mask": key_mask}


def _check_text_shapes(*arrays):
    shape = arrays[0].shape
    if len(shape) != 2 or any(a.shape != shape for a in arrays):
        raise ValueError(f"decoder features must all be [batch, length], got {[a.shape for a in arrays]}")


# --- helpers for runners, tests and benchmarks ---------------------------------------

def dummy_batch(config: PaliGemmaConfig, batch_size: int = 1, input_length: int = 8, target_length: int = 8):
    """Inputs of the right shapes and dtypes (init, eval_shape): a decoder sequence of
    input_length + target_length tokens whose first input_length + 1 are the prefix."""
    s, length = config.vit.image_size, input_length + target_length
    prefix = jnp.arange(length) <= input_length
    return dict(
        encoder_images=jnp.zeros((batch_size, s, s, 3), jnp.float32),
        encoder_image_mask=jnp.ones((batch_size,), jnp.int32),
        decoder_input_tokens=jnp.ones((batch_size, length), jnp.int32),
        decoder_target_tokens=jnp.ones((batch_size, length), jnp.int32),
        decoder_causal_attention=jnp.broadcast_to(prefix, (batch_size, length)).astype(jnp.int32),
    )
