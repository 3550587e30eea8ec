"""PaLI inside T5X: `PaliModel`, partitioning and Adafactor rules for every palimix
network, the trainable-parameter optimizer, mT5 warm start, and the batch helpers the
T5X model classes share (the decoder-only `PaliGemmaModel` is in t5x_decoder_model.py).

`PaliModel` is a `t5x.models.EncoderDecoderModel` whose module is palimix's network
(`palimix.models.pali.Pali`): the same loss, metrics, scoring and decoding functions
as t5x's T5, with the image (`encoder_images`, float32 [B, S, S, 3]) and its mask
(`encoder_image_mask`, int32 [B]) passed to the network wherever t5x passes
`encoder_input_tokens`. Nothing of t5x is patched, so `python -m t5x.train|eval|infer`
run it from gin (`palimix/gin/models/pali.gin`).

Decoding (any t5x `decode_fn`: `decoding.beam_search`, `decoding.temperature_sample`,
greedy = `temperature_sample` with `temperature=0.0`) encodes image + prompt once,
initialises the decoder cache from those encodings (so cross-attention sees the image
tokens), then runs one decoder step per output token.

Warm start from a text-only mT5 T5X checkpoint: `MT5_WARM_START_ASSIGNMENT_MAP` with
`fallback_to_scratch=True` restores every text parameter (palimix's text side uses
t5x's T5 1.1 parameter names) and initialises the image side (ViT and projection) and
its optimizer state fresh. `runs/pretrain.gin` binds it when `INITIAL_CHECKPOINT_PATH`
is set.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Mapping, MutableMapping, Optional, Tuple

import jax
import jax.numpy as jnp
from absl import logging
from flax import core as flax_core
import tensorflow as tf
from flax import traverse_util
from t5x import adafactor, decoding, models, optimizers, partitioning, utils

from palimix.models import partitioning as pali_partitioning
from palimix.models import qformer
from palimix.models import trainable
from palimix.models.feature_converter import PaliFeatureConverter

PyTree = Any

# The network's image submodules (`palimix.models.pali.Pali`): the ViT and the
# bridge to the text width (`img_proj`, or the Q-Former's qformer.BRIDGE_PARAMS).
# Everything else has t5x's T5 1.1 / mT5 names.
IMAGE_MODULES = ("img", "img_proj") + qformer.BRIDGE_PARAMS

# The ViT's logical axes come from the network's own rules (palimix.models.partitioning:
# VIT_RULES for the mesh, VIT_FACTOR_RULES for Adafactor); t5x's standard rules cover
# the text side, whose axis names are t5x's.
VIT_LOGICAL_AXIS_RULES = tuple(pali_partitioning.VIT_RULES)
VIT_FACTOR_RULES = dict(pali_partitioning.VIT_FACTOR_RULES)
# Gemma (palimix.models.gemma) names its axes as t5x does, plus `kv_heads` (the
# key/value heads of multi-query / grouped-query attention): the network's own rules
# again (GEMMA_RULES, GEMMA_FACTOR_RULES).
GEMMA_LOGICAL_AXIS_RULES = tuple(pali_partitioning.GEMMA_RULES)
GEMMA_FACTOR_RULES = dict(pali_partitioning.GEMMA_FACTOR_RULES)
# LoRA adapters' rank axis (palimix.models.lora).
ADAPTER_LOGICAL_AXIS_RULES = tuple(pali_partitioning.ADAPTER_RULES)
ADAPTER_FACTOR_RULES = dict(pali_partitioning.ADAPTER_FACTOR_RULES)

# Flattened t5x state keys (e.g. 'target/img/embedding/kernel',
# 'state/param_states/img/...') of the image side: everything a text-only checkpoint
# lacks. `IMAGE_MODULES` names the network's image submodules.
IMAGE_PARAM_PATTERN = r"(.*/)?(%s)(/.*)?" % "|".join(IMAGE_MODULES)
MT5_WARM_START_ASSIGNMENT_MAP = ((IMAGE_PARAM_PATTERN, None),)


def mt5_warm_start_assignment_map():
    """`RestoreCheckpointConfig.assignment_map` for a text-only (mT5) checkpoint.

    Every parameter and optimizer slot of the image side matches `IMAGE_PARAM_PATTERN`
    and is skipped (None); with `fallback_to_scratch=True` t5x initialises those
    fresh and restores everything else by its own name.
    """
    return MT5_WARM_START_ASSIGNMENT_MAP


def mixture_training_eval_datasets(
    cfg: utils.DatasetConfig,
    shard_id: int,
    num_shards: int,
    eval_steps: int,
    feature_converter_cls,
    deterministic: bool = False,
    model_dir: Optional[str] = None,
    start_step: int = 0,
) -> Mapping[str, tf.data.Dataset]:
    """Training evaluation on the mixture as a whole: `{mixture name: batches}`.

    A drop-in `train_eval_get_dataset_fn` for `t5x.train`. t5x's default evaluates
    every sub-task separately; a palimix mixture has one task per language (hundreds
    in `palimix_demo`), so t5x would build hundreds of pipelines at start-up and run
    eval_steps batches through each at every evaluation. This evaluates eval_steps
    batches drawn from the mixture at its own rates; per-task, per-language quality
    comes from the inference evaluation (runs/finetune.gin, runs/eval.gin).
    """
    if deterministic:
        raise ValueError("mixture_training_eval_datasets does not support deterministic datasets.")
    del model_dir, start_step
    if cfg.batch_size % num_shards:
        raise ValueError(f"Batch size ({cfg.batch_size}) must be divisible by number of shards ({num_shards}).")
    # As t5x does per task: a finite unbatched stream, repeated, sharded, re-batched.
    ds = utils.get_dataset(
        dataclasses.replace(cfg, batch_size=1),
        shard_id=0,
        num_shards=1,
        feature_converter_cls=feature_converter_cls,
        num_epochs=eval_steps * cfg.batch_size,
    )
    ds = (
        ds.unbatch()
        .repeat()
        .shard(num_shards, shard_id)
        .batch(cfg.batch_size // num_shards, drop_remainder=True)
        .take(eval_steps)
    )
    if cfg.use_memory_cache:
        ds = ds.cache()
    name = cfg.mixture_or_task_name
    return {name if isinstance(name, str) else name.name: ds}


def pali_logical_axis_rules(
    activation_partitioning_dims: int = 1,
    parameter_partitioning_dims: int = 1,
    additional_rules=None,
):
    """t5x's standard logical axis rules plus the ViT's and Gemma's axes (for
    `PjitPartitioner`; both models/pali.gin and models/paligemma.gin use them)."""
    return partitioning.standard_logical_axis_rules(
        activation_partitioning_dims=activation_partitioning_dims,
        parameter_partitioning_dims=parameter_partitioning_dims,
        additional_rules=[*VIT_LOGICAL_AXIS_RULES, *GEMMA_LOGICAL_AXIS_RULES, *ADAPTER_LOGICAL_AXIS_RULES,
                          *(additional_rules or ())],
    )


class PjitPartitioner(partitioning.PjitPartitioner):
    """t5x's `PjitPartitioner` whose `num_partitions` also holds on CPU devices.

    t5x gives CPU devices a (processes, devices per process) mesh whatever
    `num_partitions` says: on one machine every device is a 'model' shard, and
    `num_partitions = 2` on 8 forced host devices (XLA_FLAGS=
    --xla_force_host_platform_device_count=8) becomes 8-way model parallelism. Here a
    CPU mesh is (devices / num_partitions, num_partitions), as on GPUs, so a sharded
    run can be tried on a laptop before it goes to accelerators. GPUs and TPUs, and
    an explicit `model_parallel_submesh` or `ici_mesh_shape`, get t5x's mesh unchanged.
    """

    @functools.cached_property
    def mesh(self):
        devices = jax.devices(self._backend)
        if (devices[-1].platform != "cpu" or self._model_parallel_submesh
                or self._ici_mesh_shape is not None or jax.process_count() > 1):
            return super().mesh
        return pali_partitioning.make_mesh(model=self._num_partitions, devices=devices)


def pali_logical_factor_rules():
    """Adafactor's standard factor rules plus the ViT's and Gemma's axes.

    Adafactor factors the second moment of a matrix into row and column statistics;
    it needs to know which named axis is which, or it refuses the parameter.
    """
    factor_dims = {
        name: adafactor.factor_name_to_factordim(kind)
        for name, kind in {**VIT_FACTOR_RULES, **GEMMA_FACTOR_RULES, **ADAPTER_FACTOR_RULES}.items()
    }
    return flax_core.freeze({**adafactor.standard_logical_factor_rules(), **factor_dims})


class TrainableOptimizer(optimizers.MultiOptimizer):
    """A t5x optimizer over the parameters a `trainable.ParamSelection` selects: the
    others get no optimizer state (None in the checkpoint) and are never updated."""

    def __init__(self, optimizer: optimizers.OptimizerDef, selection: trainable.ParamSelection):
        self.selection = selection
        # t5x's traversal paths start with "/" ("/img/embedding/kernel").
        only_trainable = traverse_util.ModelParamTraversal(lambda path, _: selection.is_trainable(path[1:]))
        super().__init__(((only_trainable, optimizer),))

    def init_state(self, params):
        self.selection.mask(params)  # Every pattern must name some parameter (a typo is an error).
        return super().init_state(params)

    # Checkpoints: t5x's MultiOptimizer leaves None where a parameter has no state, and
    # t5x's orbax checkpointer would then look for arrays that were never written. The
    # state dict leaves frozen parameters out instead, and restoring puts the None back.

    def state_dict(self, target, state):
        state_dict = super().state_dict(target, state)
        param_states = traverse_util.flatten_dict(state_dict["state"]["param_states"], keep_empty_nodes=True)
        frozen = self._frozen_paths(target)
        kept = {k: v for k, v in param_states.items() if not any(k[:len(f)] == f for f in frozen)}
        state_dict["state"]["param_states"] = traverse_util.unflatten_dict(kept)
        return state_dict

    def restore_state(self, opt_target, opt_state, state_dict):
        param_states = traverse_util.flatten_dict(state_dict["state"]["param_states"], keep_empty_nodes=True)
        param_states.update({path: None for path in self._frozen_paths(opt_target)})
        state = {**state_dict["state"], "param_states": traverse_util.unflatten_dict(param_states)}
        return super().restore_state(opt_target, opt_state, {**state_dict, "state": state})

    def _frozen_paths(self, target) -> list[tuple]:
        paths = traverse_util.flatten_dict(flax_core.unfreeze(target))
        return [path for path in paths if not self.selection.is_trainable("/".join(path))]


def trainable_optimizer(optimizer: optimizers.OptimizerDef,
                        selection: trainable.ParamSelection) -> optimizers.OptimizerDef:
    """`optimizer`, restricted to the selected parameters when some are frozen
    (models/pali.gin binds it to gin's `ParamSelection`, which the runner reads too)."""
    if selection.trains_everything:
        return optimizer  # Everything trains: keep t5x's plain optimizer and checkpoint layout.
    return TrainableOptimizer(optimizer, selection)


class PaliModel(models.EncoderDecoderModel):
    """`EncoderDecoderModel` for palimix's PaLI network (ViT tokens ++ prompt -> mT5).

    Constructed exactly like `EncoderDecoderModel` (module, vocabularies, optimizer,
    decode_fn, ...); the module must have palimix's PaLI interface:
    `__call__(encoder_images, encoder_image_mask, encoder_input_tokens,
    decoder_input_tokens, decoder_target_tokens, enable_dropout=..., decode=...)`,
    `encode(encoder_images, encoder_image_mask, encoder_input_tokens, ...)` and
    `decode(encoded, encoder_image_mask, encoder_input_tokens, decoder_input_tokens,
    decoder_target_tokens, ..., decode=..., max_decode_length=...)`.
    """

    FEATURE_CONVERTER_CLS = PaliFeatureConverter

    def get_initial_variables(
        self,
        rng: jax.Array,
        input_shapes: Mapping[str, Any],
        input_types: Optional[Mapping[str, jnp.dtype]] = None,
    ) -> flax_core.scope.FrozenVariableDict:
        """Initialise the network; the image is a float32 input (tokens are int32).

        `input_shapes` comes from the model features; t5x.eval leaves out rank-0
        features, so the image mask defaults to one entry per example. Without
        `encoder_images` the network is initialised text-only (no ViT parameters): an
        mT5 in PaLI's clothes, for language-only training and the step benchmark.
        """
        input_types = dict(input_types or {})
        encoder_shape = tuple(input_shapes["encoder_input_tokens"])
        decoder_shape = tuple(input_shapes["decoder_input_tokens"])
        images = image_mask = None
        if "encoder_images" in input_shapes:
            image_type = input_types.get("encoder_images", jnp.float32)
            images = jnp.zeros(tuple(input_shapes["encoder_images"]), image_type)
            mask_shape = tuple(input_shapes.get("encoder_image_mask", encoder_shape[:1]))
            image_mask = jnp.ones(mask_shape, jnp.int32)
        return flax_core.freeze(
            self.module.init(
                rng,
                images,
                image_mask,
                jnp.ones(encoder_shape, jnp.int32),
                jnp.ones(decoder_shape, jnp.int32),
                jnp.ones(decoder_shape, jnp.int32),
                enable_dropout=False,
            )
        )

    def _compute_logits(  # pytype: disable=signature-mismatch
        self,
        params: PyTree,
        batch: Mapping[str, jnp.ndarray],
        dropout_rng: Optional[jax.Array] = None,
        mutable=False,
        other_variables: Optional[PyTree] = None,
    ):
        """Teacher-forced logits [B, T, V]; used by t5x's `loss_fn` and `score_batch`."""
        return teacher_forced_logits(self.module, params, batch, dropout_rng, mutable, other_variables)

    def _encode(self, params: PyTree, batch: Mapping[str, jnp.ndarray]) -> jnp.ndarray:
        """Image tokens ++ prompt tokens through the encoder: [B, N_image + L, D]."""
        return self.module.apply(
            {"params": params},
            batch.get("encoder_images"),
            batch_image_mask(batch),
            batch["encoder_input_tokens"],
            enable_dropout=False,
            method=self.module.encode,
        )

    def _compute_logits_from_slice(  # pytype: disable=signature-mismatch
        self,
        decoding_state: decoding.DecodingState,
        params: PyTree,
        encoded_inputs: jnp.ndarray,
        encoder_image_mask: jnp.ndarray,
        encoder_input_tokens: jnp.ndarray,
        max_decode_length: int,
    ) -> Tuple[jnp.ndarray, Mapping[str, jnp.ndarray]]:
        """One decoder step for [batch * num_decodes, 1] tokens, with the cache."""
        flat_ids = decoding_state.cur_token
        flat_logits, new_vars = self.module.apply(
            {"params": params, "cache": decoding_state.cache},
            encoded_inputs,
            encoder_image_mask,
            encoder_input_tokens,  # only for the cross-attention mask
            flat_ids,
            flat_ids,
            enable_dropout=False,
            decode=True,
            max_decode_length=max_decode_length,
            mutable=["cache"],
            method=self.module.decode,
        )
        return jnp.squeeze(flat_logits, axis=1), new_vars["cache"]

    def _compute_kv_cache(  # pytype: disable=signature-mismatch
        self,
        params: PyTree,
        encoded_inputs: jnp.ndarray,
        encoder_image_mask: jnp.ndarray,
        encoder_input_tokens: jnp.ndarray,
        decoder_input_tokens: jnp.ndarray,
        prefill_decoder_prompt: bool = False,
    ) -> Tuple[PyTree, Optional[jnp.ndarray]]:
        """The decoder cache, created from the real image+prompt encodings.

        Creating it through `decode` (not `__call__` on dummy inputs as t5x's T5 does)
        skips a second ViT + encoder pass, and lets a network that caches the
        cross-attention keys/values fill them from the actual image tokens.
        """
        _, variables = self.module.apply(
            {"params": params},
            encoded_inputs,
            encoder_image_mask,
            encoder_input_tokens,
            jnp.ones_like(decoder_input_tokens),
            jnp.ones_like(decoder_input_tokens),
            enable_dropout=False,
            decode=True,
            max_decode_length=decoder_input_tokens.shape[1],
            mutable=["cache"],
            method=self.module.decode,
        )
        cache = variables["cache"]
        if not prefill_decoder_prompt:
            return cache, None
        # As in t5x: the only 0 tokens of a prompt are BOS at the start and padding.
        inputs_lengths = jnp.sum(decoder_input_tokens != 0, axis=1)
        _, variables = self.module.apply(
            {"params": params, "cache": cache},
            encoded_inputs,
            encoder_image_mask,
            encoder_input_tokens,
            decoder_input_tokens,
            jnp.ones_like(decoder_input_tokens),
            enable_dropout=False,
            mutable=["cache"],
            prefill=True,
            prefill_lengths=inputs_lengths,
            method=self.module.decode,
        )
        return variables["cache"], inputs_lengths

    def predict_batch_with_aux(
        self,
        params: PyTree,
        batch: Mapping[str, jnp.ndarray],
        rng: Optional[jax.Array] = None,
        decoder_params: Optional[MutableMapping[str, Any]] = None,
        return_all_decodes: bool = None,
        num_decodes: int = None,
        prompt_with_targets: bool = False,
    ) -> Tuple[jnp.ndarray, Mapping[str, jnp.ndarray]]:
        """Decode with `self.decode_fn`; same arguments and outputs as t5x's T5.

        Returns `(decodes [B, T], {"scores": [B]})`, or with `return_all_decodes`
        `(decodes [B, num_decodes, T], {"scores": [B, num_decodes]})` sorted by
        increasing score.
        """
        return_all_decodes, num_decodes = decodes_wanted(self._default_decoder_params, return_all_decodes,
                                                          num_decodes)
        decoder_params = decode_fn_kwargs(decoder_params, rng, self.output_vocabulary)
        decoder_prompt = self._decoder_prompt(batch["decoder_input_tokens"], prompt_with_targets)
        encoded_inputs = self._encode(params, batch)
        cache, initial_index = self._compute_kv_cache(
            params,
            encoded_inputs=encoded_inputs,
            encoder_image_mask=batch_image_mask(batch),
            encoder_input_tokens=batch["encoder_input_tokens"],
            decoder_input_tokens=decoder_prompt,
            prefill_decoder_prompt=self._can_prefill(),
        )
        if initial_index is not None:
            decoder_params["initial_index"] = initial_index
        decodes, scores = self._decode_fn(
            inputs=decoder_prompt,
            cache=cache,
            tokens_to_logits=self._tokens_to_logits(params, encoded_inputs, batch, num_decodes),
            num_decodes=num_decodes,
            # Every cache entry is batch-first, scanned layers too (their depth axis is
            # second: layers.SCAN_VARIABLE_AXES), so t5x needs no cache_offset.
            cache_offset=0,
            **decoder_params,
        )
        return best_decodes(decodes, scores, return_all_decodes)

    def _decoder_prompt(self, decoder_input_tokens, prompt_with_targets: bool):
        """The forced decoder prefix: the targets without EOS (so decoding does not stop
        right after the forced prompt), or nothing."""
        if prompt_with_targets:
            return decoder_input_tokens * (decoder_input_tokens != self.output_vocabulary.eos_id)
        return jnp.zeros_like(decoder_input_tokens)

    def _tokens_to_logits(self, params, encoded_inputs, batch, num_decodes: int):
        """One cached decoder step over [batch * num_decodes, ...]: beam search and
        sampling repeat each example in place (the cache is expanded inside decode_fn)."""
        image_mask = batch_image_mask(batch)
        return functools.partial(
            self._compute_logits_from_slice,
            params=params,
            encoded_inputs=decoding.flat_batch_beam_expand(encoded_inputs, num_decodes),
            encoder_image_mask=None if image_mask is None else decoding.flat_batch_beam_expand(image_mask, num_decodes),
            encoder_input_tokens=decoding.flat_batch_beam_expand(batch["encoder_input_tokens"], num_decodes),
            max_decode_length=batch["decoder_input_tokens"].shape[1],
        )

    def _can_prefill(self) -> bool:
        """Prefill a forced decoder prompt when both decode_fn and the network can."""
        decode_fn_takes_index = "initial_index" in inspect.signature(self.decode_fn).parameters
        network_prefills = "prefill" in inspect.signature(self.module.decode).parameters
        if not (decode_fn_takes_index and network_prefills):
            logging.info("Prompt prefilling disabled (decode_fn or network lacks support).")
        return decode_fn_takes_index and network_prefills


def decodes_wanted(defaults: models.DecoderParams, return_all_decodes: Optional[bool],
                    num_decodes: Optional[int]) -> Tuple[bool, int]:
    """The caller's `return_all_decodes` and `num_decodes`, else the model's defaults."""
    if return_all_decodes is None:
        return_all_decodes = defaults.return_all_decodes
    return return_all_decodes, defaults.num_decodes if num_decodes is None else num_decodes


def decode_fn_kwargs(decoder_params, rng, vocabulary) -> dict:
    """decode_fn's keyword arguments: the caller's, the RNG, and the EOS id."""
    decoder_params = dict(decoder_params or {})
    if rng is not None:
        if decoder_params.get("decode_rng") is not None:
            raise ValueError("Got an RNG both as `rng` and as decoder_params['decode_rng']; pass one.")
        decoder_params["decode_rng"] = rng
    decoder_params.setdefault("eos_id", vocabulary.eos_id or 1)
    return decoder_params


def best_decodes(decodes, scores, return_all_decodes: bool):
    """decode_fn's `[B, num_decodes, T]` decodes sorted by increasing score: all of
    them, or the best of each example `[B, T]`; with their scores (t5x's outputs)."""
    if return_all_decodes:
        return decodes, {"scores": scores}
    return decodes[:, -1, :], {"scores": scores[:, -1]}


# Inputs a text-only batch lacks (the network masks its blank image tokens out).
_OPTIONAL_INPUTS = ("encoder_images", "encoder_image_mask")


def teacher_forced_logits(module, params, batch, dropout_rng, mutable, other_variables):
    """`module` (either network) applied to a feature-converted batch, in its `INPUTS`
    order: the one `_compute_logits` of both T5X wrappers."""
    refuse_packed(batch)
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    batch = with_image_mask(batch)
    return module.apply(
        {"params": params, **(other_variables or {})},
        *(batch.get(name) if name in _OPTIONAL_INPUTS else batch[name] for name in module.INPUTS),
        enable_dropout=rngs is not None,
        rngs=rngs,
        mutable=mutable,
    )


def with_image_mask(batch: Mapping[str, jnp.ndarray]) -> Mapping[str, jnp.ndarray]:
    return {**batch, "encoder_image_mask": batch_image_mask(batch)}


def batch_image_mask(batch: Mapping[str, jnp.ndarray]) -> Optional[jnp.ndarray]:
    """The [B] image mask: all real images when the batch has images but no mask;
    None for a text-only batch (no `encoder_images`)."""
    mask = batch.get("encoder_image_mask")
    if mask is None and "encoder_images" in batch:
        return jnp.ones(batch["encoder_images"].shape[:1], jnp.int32)
    return mask


def refuse_packed(batch: Mapping[str, jnp.ndarray]) -> None:
    packed = sorted(k for k in ("encoder_segment_ids", "decoder_segment_ids") if k in batch)
    if packed:
        raise ValueError(
            f"got a packed batch ({', '.join(packed)}): image examples cannot be packed; "
            "set DatasetConfig.pack = False (palimix's feature converters refuse pack=True)."
        )
