"""The decoder-only network inside T5X: `PaliGemmaModel`.

`PaliGemmaModel` is a `t5x.models.DecoderOnlyModel` whose module is palimix's
decoder-only network (`palimix.models.paligemma.PaliGemma`, gin
`palimix/gin/models/paligemma.gin`): seqio's prefix-LM features
(`PaliDecoderFeatureConverter`) plus the image and its mask, t5x's loss and scores.
Decoding prefills image + prompt once with the network's `prefill`, then any t5x
`decode_fn` extends each prompt with the network's `decode_step` (t5x's
`initial_index` protocol), and the prompt is removed from the outputs.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, MutableMapping, Optional, Tuple

import jax
import jax.numpy as jnp
from flax import core as flax_core
from t5x import decoding, models

from palimix.models import t5x_model
from palimix.models.feature_converter import PaliDecoderFeatureConverter

PyTree = Any


class PaliGemmaModel(models.DecoderOnlyModel):
    """`DecoderOnlyModel` for palimix's decoder-only network (`palimix.models.paligemma`:
    image tokens ++ prompt as a fully attended prefix, the answer generated causally).

    Constructed like `DecoderOnlyModel` (module, vocabulary, optimizer_def, decode_fn,
    ...), plus `default_decoder_params` as `EncoderDecoderModel` has (e.g. the number of
    beams). The features are seqio's prefix-LM ones (`PaliDecoderFeatureConverter`), so
    t5x's loss, metrics and `score_batch` apply unchanged; the network always reads
    `decoder_causal_attention` (it is a prefix LM: t5x's
    `inputs_bidirectional_attention` flag has no effect). The module must have
    `INPUTS` (its `__call__` arguments' feature names), `config.num_image_tokens`,
    `prefill(encoder_images, encoder_image_mask, decoder_input_tokens,
    decoder_causal_attention, cache_length=...)`, `decode_step(tokens)` and
    `rewind_cache(cache, steps)`.
    """

    FEATURE_CONVERTER_CLS = PaliDecoderFeatureConverter

    def __init__(self, *args, default_decoder_params: Optional[models.DecoderParams] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._default_decoder_params = default_decoder_params or models.DecoderParams()

    def get_initial_variables(
        self,
        rng: jax.Array,
        input_shapes: Mapping[str, Any],
        input_types: Optional[Mapping[str, jnp.dtype]] = None,
    ) -> flax_core.scope.FrozenVariableDict:
        """Initialise the network from the model features' shapes: a float32 image,
        int32 tokens (t5x.eval leaves out the rank-0 image mask: one per example)."""
        del input_types  # the network fixes its inputs' dtypes
        text_shape = tuple(input_shapes["decoder_input_tokens"])
        default_shapes = {"encoder_image_mask": text_shape[:1]}
        inputs = [
            jnp.zeros(input_shapes[name], jnp.float32) if name == "encoder_images"
            else jnp.ones(tuple(input_shapes.get(name, default_shapes.get(name, text_shape))), jnp.int32)
            for name in self.module.INPUTS
        ]
        return flax_core.freeze(self.module.init(rng, *inputs, enable_dropout=False))

    def _compute_logits(  # pytype: disable=signature-mismatch
        self,
        params: PyTree,
        batch: Mapping[str, jnp.ndarray],
        dropout_rng: Optional[jax.Array] = None,
        mutable=False,
        other_variables: Optional[PyTree] = None,
    ):
        """Teacher-forced logits [B, L, V] over the text positions (t5x's `loss_fn`
        and `score_batch` weight them with `decoder_loss_weights`: the answer only)."""
        return t5x_model.teacher_forced_logits(self.module, params, batch, dropout_rng, mutable, other_variables)

    def predict_batch_with_aux(  # pytype: disable=signature-mismatch
        self,
        params: PyTree,
        batch: Mapping[str, jnp.ndarray],
        rng: Optional[jax.Array] = None,
        *,
        return_all_decodes: Optional[bool] = None,
        num_decodes: Optional[int] = None,
        decoder_params: Optional[MutableMapping[str, Any]] = None,
    ) -> Tuple[jnp.ndarray, Mapping[str, jnp.ndarray]]:
        """Decode each example's answer after its image and prompt (t5x's decoder-only
        decoding, with one prefill pass over image + prompt).

        Returns the answers without the prompt, `(decodes [B, L], {"scores": [B]})`,
        or with `return_all_decodes` `([B, num_decodes, L], {"scores": [B,
        num_decodes]})` sorted by increasing score.
        """
        return_all_decodes, num_decodes = t5x_model.decodes_wanted(
            self._default_decoder_params, return_all_decodes, num_decodes)
        prompts = decoder_prompts(batch)
        cache, prompt_lengths = self._prefill(params, batch)
        decodes, scores = self._decode_fn(
            inputs=prompts,
            cache=cache,
            tokens_to_logits=functools.partial(self._compute_logits_from_slice, params=params),
            num_decodes=num_decodes,
            initial_index=prompt_lengths,
            cache_offset=0,  # batch-first cache, scanned layers too (layers.SCAN_VARIABLE_AXES)
            **t5x_model.decode_fn_kwargs(decoder_params, rng, self.output_vocabulary),
        )
        decodes, aux = t5x_model.best_decodes(decodes, scores, return_all_decodes)
        return models.remove_prefix(decodes, prompt_lengths), aux

    def _prefill(self, params: PyTree, batch: Mapping[str, jnp.ndarray]) -> Tuple[PyTree, jnp.ndarray]:
        """The decoding cache after one pass over image + prompt, and each example's
        prompt length n (tokens after BOS; t5x's `initial_index`).

        The network's prefill consumes the whole prefix, BOS and prompt (positions
        0..n); t5x's decode functions start by feeding the prompt's last token again
        (position n, to get the logits of the first answer token). The cache is set
        back by that one position (the network's `rewind_cache`), which the first step
        then recomputes: the same keys and values, since position n attends to the whole
        prefix either way.
        """
        text_length = batch["decoder_input_tokens"].shape[1]
        num_image_tokens = self.module.config.num_image_tokens
        _, variables = self.module.apply(
            {"params": params},
            *(t5x_model.with_image_mask(batch)[name] for name in self.module.PREDICT_INPUTS),
            cache_length=num_image_tokens + text_length,
            mutable=["cache"],
            method=self.module.prefill,
        )
        prefix_lengths = jnp.sum(batch["decoder_causal_attention"], axis=1, dtype=jnp.int32)  # BOS + prompt
        cache = self.module.rewind_cache(flax_core.unfreeze(variables["cache"]), jnp.minimum(prefix_lengths, 1))
        return cache, jnp.maximum(prefix_lengths - 1, 0)

    def _compute_logits_from_slice(  # pytype: disable=signature-mismatch
        self, decoding_state: decoding.DecodingState, params: PyTree
    ) -> Tuple[jnp.ndarray, PyTree]:
        """One cached step: each example's current token [N, 1] -> logits [N, V]. The
        cache knows each row's position, so t5x may reorder and copy its rows (beam
        search, num_decodes) freely."""
        logits, variables = self.module.apply(
            {"params": params, "cache": decoding_state.cache},
            decoding_state.cur_token[:, 0],
            mutable=["cache"],
            method=self.module.decode_step,
        )
        return logits, variables["cache"]




def decoder_prompts(batch: Mapping[str, jnp.ndarray]) -> jnp.ndarray:
    """BOS and each prompt, the answer zeroed: the prefix a decode_fn extends."""
    if "decoder_causal_attention" not in batch:
        raise ValueError(
            "PaliGemmaModel decodes prefix-LM batches: decoder_causal_attention is "
            "missing (use PaliDecoderFeatureConverter with 'inputs' and 'targets' lengths)."
        )
    return batch["decoder_input_tokens"] * batch["decoder_causal_attention"]
