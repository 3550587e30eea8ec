"""PaLI: ViT image tokens, projected to the text width, in front of the prompt's
token embeddings, into an mT5 encoder-decoder (Chen et al. 2022).

`Pali` mirrors t5x's `examples/t5/network.Transformer` (methods `encode`, `decode`,
`__call__`, the `cache` collection, the parameter names) with the image inputs added,
so a `t5x.models.EncoderDecoderModel` subclass can drive it; it needs no t5x itself.

Inputs (docs/ARCHITECTURE.md): encoder_images `[B, S, S, 3]` float32 in [-1, 1];
encoder_image_mask `[B]` int (0 = the blank image of a language-only example: its
image tokens are masked out of every attention); encoder_input_tokens `[B, L]`;
decoder_input_tokens / decoder_target_tokens `[B, T]`. Token 0 is padding.

Top-level parameters: `img/...` (big_vision ViT names), `img_proj/{kernel,bias}`
(axes `('vit_embed', 'embed')`), `token_embedder/embedding`, `encoder/...`,
`decoder/...` (t5x T5 1.1 / mT5 names). With `bridge="qformer"` the image tokens come
from a Q-Former instead of `img_proj`: `query_tokens`, `qformer/...`,
`language_projection/...` (Hugging Face's BLIP-2 names, see `palimix.models.qformer`).
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from palimix.models import layers, qformer, quantize, t5, vit
from palimix.models.configs import PaliConfig

_PACKING_ERROR = (
    "PaLI examples cannot be packed (each example has its own image tokens): "
    "use pack=False in the feature converter."
)


class Pali(nn.Module):
    config: PaliConfig

    # The model features `__call__` reads, in the order of its arguments, and those
    # decoding reads (the feature converter's names; docs/ARCHITECTURE.md).
    INPUTS = ("encoder_images", "encoder_image_mask", "encoder_input_tokens", "decoder_input_tokens",
              "decoder_target_tokens")
    PREDICT_INPUTS = ("encoder_images", "encoder_image_mask", "encoder_input_tokens")

    def setup(self):
        cfg = self.config
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.img = vit.VisionTransformer(cfg.vit, cfg.remat, dtype, param_dtype, cfg.scan_layers)
        if cfg.bridge == "qformer":
            self.bridge = qformer.QFormerBridge(cfg.qformer, cfg.text.emb_dim, dtype, param_dtype)
            nn.share_scope(self, self.bridge)  # HF's top-level names: query_tokens, qformer, ...
        else:
            self.img_proj = layers.DenseGeneral(
                cfg.text.emb_dim, kernel_axes=("vit_embed", "embed"), use_bias=True, bias_axes=("embed",),
                dtype=dtype, param_dtype=param_dtype,
            )
        self.token_embedder = quantize.embed_class(cfg.text.int8_kernels)(cfg.text.vocab_size, cfg.text.emb_dim,
                                                                          dtype, param_dtype)
        self.encoder = t5.Encoder(cfg.text, cfg.remat, dtype, param_dtype, cfg.scan_layers)
        self.decoder = t5.Decoder(cfg.text, cfg.remat, dtype, param_dtype, cfg.scan_layers)

    # --- image side -----------------------------------------------------------------

    def embed_images(self, encoder_images, enable_dropout: bool = False):
        """Images -> image tokens at the text width `[B, num_image_tokens, emb_dim]`."""
        cfg = self.config
        x = self.img(encoder_images, train=enable_dropout)
        if cfg.bridge == "qformer":
            return self.bridge(x, deterministic=not enable_dropout)
        if cfg.image_pooling == "mean":
            x = jnp.mean(x, axis=1, keepdims=True)
        if cfg.max_image_tokens:
            x = x[:, : cfg.max_image_tokens]
        return layers.constrain(self.img_proj(x), ("batch", "length", "embed"))

    def encoder_key_mask(self, encoder_image_mask, encoder_input_tokens, with_images: bool = True):
        """`[B, N]` True where the encoder may attend: real images' tokens, non-pad text."""
        text = encoder_input_tokens > 0
        if not with_images:
            return text
        if encoder_image_mask is None:
            raise ValueError("encoder_image_mask [batch] is required when the encoder has image tokens.")
        n = self.config.num_image_tokens
        image = jnp.broadcast_to((jnp.asarray(encoder_image_mask) > 0)[:, None], (text.shape[0], n))
        return jnp.concatenate([image, text], axis=1)

    # --- t5x-style interface ----------------------------------------------------------

    def encode(self, encoder_images, encoder_image_mask, encoder_input_tokens, encoder_segment_ids=None,
               enable_dropout: bool = True):
        """-> encoded `[B, num_image_tokens + L, emb_dim]`: image tokens first, then the prompt.

        encoder_images=None encodes text only (no ViT): a language-only batch, or the
        text half of the fusion benchmark.
        """
        if encoder_segment_ids is not None:
            raise ValueError(_PACKING_ERROR)
        if encoder_input_tokens.ndim != 2:
            raise ValueError(f"encoder_input_tokens must be [batch, length], got {encoder_input_tokens.shape}")
        x = self.token_embedder(encoder_input_tokens.astype(jnp.int32))
        with_images = encoder_images is not None
        if with_images:
            if encoder_images.ndim != 4 or encoder_images.shape[0] != encoder_input_tokens.shape[0]:
                raise ValueError(f"encoder_images must be [batch, S, S, 3], got {encoder_images.shape}")
            x = jnp.concatenate([self.embed_images(encoder_images, enable_dropout).astype(x.dtype), x], axis=1)
        key_mask = self.encoder_key_mask(encoder_image_mask, encoder_input_tokens, with_images)
        return self.encoder(x, key_mask, deterministic=not enable_dropout)

    def decode(self, encoded, encoder_image_mask, encoder_input_tokens, decoder_input_tokens,
               decoder_target_tokens, encoder_segment_ids=None, decoder_segment_ids=None,
               decoder_positions=None, enable_dropout: bool = True, decode: bool = False,
               max_decode_length: Optional[int] = None):
        """Decoder logits `[B, T, vocab]` (float32) given `encode`'s output.

        encoder_image_mask and encoder_input_tokens only build the cross-attention mask;
        pass encoder_image_mask=None with an `encoded` from text-only `encode`.
        decode=True: one position per call with the `cache` collection (see t5.Decoder).
        decoder_positions is accepted for t5x compatibility (T5 uses relative positions).
        """
        del decoder_positions
        if encoder_segment_ids is not None or decoder_segment_ids is not None:
            raise ValueError(_PACKING_ERROR)
        with_images = encoded.shape[1] != encoder_input_tokens.shape[1]
        key_mask = self.encoder_key_mask(encoder_image_mask, encoder_input_tokens, with_images)
        y = self.token_embedder(decoder_input_tokens.astype(jnp.int32))
        return self.decoder(
            y, encoded, key_mask, None if decode else decoder_target_tokens, deterministic=not enable_dropout,
            decode=decode, max_decode_length=max_decode_length,
        )

    def __call__(self, encoder_images, encoder_image_mask, encoder_input_tokens, decoder_input_tokens,
                 decoder_target_tokens, encoder_segment_ids=None, decoder_segment_ids=None,
                 encoder_positions=None, decoder_positions=None, *, enable_dropout: bool = True,
                 decode: bool = False, max_decode_length: Optional[int] = None):
        """Logits `[B, T, vocab]` for teacher-forced decoder inputs."""
        del encoder_positions
        encoded = self.encode(encoder_images, encoder_image_mask, encoder_input_tokens, encoder_segment_ids,
                              enable_dropout=enable_dropout)
        return self.decode(encoded, encoder_image_mask, encoder_input_tokens, decoder_input_tokens,
                           decoder_target_tokens, encoder_segment_ids, decoder_segment_ids, decoder_positions,
                           enable_dropout=enable_dropout, decode=decode, max_decode_length=max_decode_length)


# --- helpers for runners, tests and benchmarks ---------------------------------------

def dummy_batch(config: PaliConfig, batch_size: int = 1, input_length: int = 8, target_length: int = 8):
    """All-ones inputs of the right shapes and dtypes (for init and eval_shape)."""
    s = config.vit.image_size
    tokens = lambda n: jnp.ones((batch_size, n), jnp.int32)  # noqa: E731
    return dict(
        encoder_images=jnp.zeros((batch_size, s, s, 3), jnp.float32),
        encoder_image_mask=jnp.ones((batch_size,), jnp.int32),
        encoder_input_tokens=tokens(input_length),
        decoder_input_tokens=tokens(target_length),
        decoder_target_tokens=tokens(target_length),
    )


def shift_right(targets):
    """Decoder inputs from targets: start with 0 (T5's BOS is the pad id)."""
    return jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]


def num_params(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
