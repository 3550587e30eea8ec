"""Autoregressive decoding for `Pali` and `PaliGemma`: greedy, temperature / top-k
sampling, beam search.

    tokens, scores = decoding.generate(model, params, batch, max_decode_length=32)
    fast = jax.jit(functools.partial(decoding.generate, model, max_decode_length=32,
                                     method="beam", num_beams=4))

    # The same in two halves: encode once, decode (e.g. with several methods) after.
    prepared = decoding.prepare(model, params, batch, max_decode_length=32)
    tokens, scores = decoding.generate_from(model, params, prepared, method="greedy")

The image and prompt are encoded once, and the cross-attention keys/values over the
image+prompt tokens are projected once when the cache is created (beam search: once
per example, then copied to the beams); each step feeds one token through the decoder
with the `cache` collection, whose self-attention keys/values grow by one position.
Everything is jittable: fixed shapes, `lax.while_loop`, no host round-trips.

A decoder-only `PaliGemma` (batch: encoder_images, encoder_image_mask,
decoder_input_tokens, decoder_causal_attention; the prompt is where
decoder_causal_attention is 1) is prepared by prefilling image + prompt once
(`PaliGemma.prefill`), which also gives the first answer token's logits; each later
step feeds one token (`PaliGemma.decode_step`). The same loops (`_sample`,
`_beam_search`) run both networks: only the step function differs.

Classifier-free guidance (greedy / sample; `guidance_scale=S, unconditional=batch`):
the batch and its unconditional twin (the same features with the condition removed,
e.g. text_to_image's prompt without its description; same shapes) are prepared as one
doubled batch, rows [conditional; unconditional], so both branches share the cache
machinery; each step feeds the chosen token to both halves and samples from
`uncond + S * (cond - uncond)` of the two halves' logits (Parti, Make-A-Scene). S = 1
is plain conditional decoding, S = 0 unconditional, S > 1 strengthens the condition.

Restricted decoding (`token_mask`, every method): a function of the step's position
(0 = the first answer token) returning which vocabulary ids may be chosen there (bool
`[vocab]`); the others get NEG_INF logits before the softmax, so scores are under the
restricted distribution. `ImageCodeMask` makes image generation spell a whole grid:
`<img>`, then only codebook ids until h*w codes are out, then EOS.

Outputs: tokens `[B, max_decode_length]` int32 (EOS included, 0 after it) and scores
`[B]` (sum of token log-probabilities; beam search: length-normalised; with guidance:
under the guided distribution).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from flax import struct

from palimix.errors import UsageError
from palimix.models import pali, paligemma

METHODS = ("greedy", "sample", "beam")
NEG_INF = -1.0e7


@struct.dataclass
class Prepared:
    """An encoded batch ready for `generate_from` (a pytree: pass it through `jax.jit`).

    Rows are repeated `num_beams` times in place when prepared for beam search.
    """

    encoded: jax.Array  # [N, image tokens + L, emb_dim]
    image_mask: Optional[jax.Array]  # [N] or None (text-only)
    input_tokens: jax.Array  # [N, L]: with image_mask, the cross-attention mask
    cache: Any  # the decoder's "cache" collection, None when use_cache=False
    max_decode_length: int = struct.field(pytree_node=False)
    num_beams: int = struct.field(pytree_node=False, default=1)

    @property
    def batch_size(self) -> int:
        """Rows decoded (examples times beams)."""
        return self.input_tokens.shape[0]


@struct.dataclass
class PreparedPrefix:
    """A decoder-only batch ready for `generate_from`: image + prompt prefilled.

    Rows are repeated `num_beams` times in place when prepared for beam search.
    """

    batch: dict  # the network's PREDICT_INPUTS (the uncached path re-reads them)
    first_logits: Optional[jax.Array]  # [N, vocab]: each prompt's last position; None uncached
    cache: Any  # the "cache" collection after the prefill, None when use_cache=False
    max_decode_length: int = struct.field(pytree_node=False)
    num_beams: int = struct.field(pytree_node=False, default=1)

    @property
    def batch_size(self) -> int:
        return self.batch["decoder_input_tokens"].shape[0]


TokenMask = Callable[[jax.Array], jax.Array]  # position -> bool [vocab]: the ids allowed there


@dataclasses.dataclass(frozen=True)
class ImageCodeMask:
    """A `token_mask` for image codes: position 0 only `<img>` (begin_id), positions
    1..num_codes only the codebook's ids (code_ids: those of `<img0000>`.. up to the
    tokenizer's codebook size), then only EOS; so every sample is a whole grid of
    drawable codes. vocab_size: the network's logits width (config.vocab_size)."""

    vocab_size: int
    begin_id: int
    code_ids: tuple[int, ...]
    num_codes: int  # h*w for a whole image; the rows left to generate for a prefix
    eos_id: int = 1

    def __post_init__(self):
        ids = (self.begin_id, self.eos_id, *self.code_ids)
        if not self.code_ids or self.num_codes < 1 or not all(0 <= i < self.vocab_size for i in ids):
            raise UsageError(f"ImageCodeMask: {len(self.code_ids)} code ids and {self.num_codes} codes to spell, "
                             f"ids {min(ids)}..{max(ids)} in a vocabulary of {self.vocab_size}: need some codes, "
                             "and every id inside the vocabulary.")

    def __call__(self, position):
        def only(ids):
            return jnp.zeros((self.vocab_size,), bool).at[jnp.asarray(ids, jnp.int32)].set(True)

        return jnp.where(position == 0, only([self.begin_id]),
                         jnp.where(position <= self.num_codes, only(self.code_ids), only([self.eos_id])))


def _masked(logits, token_mask: Optional[TokenMask], position):
    """`logits` [N, V] with the ids `token_mask` disallows at `position` set to NEG_INF."""
    if token_mask is None:
        return logits
    allowed = token_mask(position)
    if allowed.shape[-1] != logits.shape[-1]:
        raise UsageError(f"token_mask covers {allowed.shape[-1]} ids; the network's logits have {logits.shape[-1]}.")
    return jnp.where(allowed, logits, NEG_INF)


def generate(model, params, batch: dict, *, max_decode_length: int, method: str = "greedy",
             eos_id: Optional[int] = 1, temperature: float = 1.0, top_k: int = 0, rng=None,
             num_beams: int = 4, length_penalty: float = 0.6, use_cache: bool = True,
             guidance_scale: Optional[float] = None, unconditional: Optional[dict] = None,
             token_mask: Optional[TokenMask] = None):
    """Decodes `batch`: the network's PREDICT_INPUTS (Pali: encoder_images,
    encoder_image_mask, encoder_input_tokens; PaliGemma: encoder_images,
    encoder_image_mask, decoder_input_tokens, decoder_causal_attention).

    method: "greedy"; "sample" (temperature, top_k (0 = whole vocabulary), rng);
      "beam" (num_beams, length_penalty alpha: scores are divided by ((5+len)/6)^alpha).
    eos_id: stop a sequence at this token (None: always decode max_decode_length).
    use_cache=False recomputes the whole decoder at every step (greedy/sample only):
      slow, a reference for tests and benchmarks.
    guidance_scale, unconditional: classifier-free guidance (module docstring): both
      or neither; `unconditional` has `batch`'s features and shapes.
    token_mask: position -> the ids allowed there (module docstring; e.g. ImageCodeMask).
    """
    _check_method(method, rng)
    _check_guidance(method, guidance_scale, unconditional)
    if method == "beam" and not use_cache:
        raise UsageError("Beam search always decodes with the cache.")
    if unconditional is not None:
        batch = guidance_batch(model, batch, unconditional)
    prepared = prepare(model, params, batch, max_decode_length=max_decode_length,
                       num_beams=num_beams if method == "beam" else 1, use_cache=use_cache)
    return generate_from(model, params, prepared, method=method, eos_id=eos_id, temperature=temperature,
                         top_k=top_k, rng=rng, length_penalty=length_penalty, guidance_scale=guidance_scale,
                         token_mask=token_mask)


def prepare(model, params, batch: dict, *, max_decode_length: int, num_beams: int = 1,
            use_cache: bool = True):
    """Encodes `batch` (Pali) or prefills its image + prompt (PaliGemma) and creates the
    decoding cache: the part of `generate` that is done once per batch, not per token.
    num_beams > 1: for method="beam"."""
    if max_decode_length < 1:
        raise UsageError(f"max_decode_length must be >= 1, got {max_decode_length}.")
    if num_beams < 1:
        raise UsageError(f"num_beams must be >= 1, got {num_beams}.")
    if isinstance(model, paligemma.PaliGemma):
        return _prefill(model, params, batch, max_decode_length, num_beams, use_cache)
    images = batch.get("encoder_images")
    image_mask = batch.get("encoder_image_mask")
    input_tokens = batch["encoder_input_tokens"]
    encoded = model.apply({"params": params}, images, image_mask, input_tokens, enable_dropout=False,
                          method=model.encode)
    cache = init_cache(model, params, encoded, image_mask, input_tokens, max_decode_length) if use_cache else None
    if num_beams > 1:  # encode and project once per example, then copy to the beams
        expand = functools.partial(_repeat_leaves, repeats=num_beams)
        encoded, image_mask, input_tokens, cache = expand((encoded, image_mask, input_tokens, cache))
    return Prepared(encoded, image_mask, input_tokens, cache, max_decode_length, num_beams)


def _prefill(model: paligemma.PaliGemma, params, batch, max_decode_length, num_beams, use_cache) -> PreparedPrefix:
    """`prepare` for a decoder-only network: the cache holds the image, the prompt and
    room for max_decode_length answer tokens."""
    batch = {name: batch[name] for name in model.PREDICT_INPUTS}
    first_logits = cache = None
    if use_cache:
        cache_length = model.config.num_image_tokens + batch["decoder_input_tokens"].shape[1] + max_decode_length
        first_logits, variables = model.apply({"params": params}, **batch, cache_length=cache_length,
                                              mutable=["cache"], method=model.prefill)
        cache = variables["cache"]
    if num_beams > 1:  # prefill once per example, then copy to the beams
        batch, first_logits, cache = _repeat_leaves((batch, first_logits, cache), repeats=num_beams)
    return PreparedPrefix(batch, first_logits, cache, max_decode_length, num_beams)


def generate_from(model, params, prepared, *, method: str = "greedy",
                  eos_id: Optional[int] = 1, temperature: float = 1.0, top_k: int = 0, rng=None,
                  length_penalty: float = 0.6, guidance_scale: Optional[float] = None,
                  token_mask: Optional[TokenMask] = None):
    """Decodes a `prepare`d batch; the arguments mean what they mean for `generate`.
    guidance_scale: the batch was prepared from `guidance_batch` (rows [conditional;
    unconditional]); returns one row per conditional example."""
    _check_method(method, rng)
    _check_guidance(method, guidance_scale, None if guidance_scale is None else prepared)
    if (method == "beam") != (prepared.num_beams > 1):
        raise UsageError(f"method={method!r} on a batch prepared with num_beams={prepared.num_beams}: "
                         "prepare with num_beams > 1 for beam search, and only for it.")
    if method == "beam" and prepared.cache is None:
        raise UsageError("Beam search always decodes with the cache.")
    max_len = prepared.max_decode_length
    prefix = isinstance(prepared, PreparedPrefix)
    step = _prefix_step_fn(model, params, prepared) if prefix else _step_fn(model, params, prepared)
    # A prefilled batch already has the logits of answer token 0: the loops choose it
    # before they start, and every step in the loop feeds a token.
    first_logits = prepared.first_logits if prefix else None
    batch_size = prepared.batch_size
    if guidance_scale is not None:
        step, first_logits = _guided(step, first_logits, guidance_scale)
        batch_size //= 2
    if method == "beam":
        k = prepared.num_beams
        return _beam_search(step, prepared.cache, prepared.batch_size // k, k, max_len, eos_id, length_penalty,
                            first_logits=first_logits, token_mask=token_mask)
    greedy = method == "greedy"
    return _sample(step, prepared.cache, batch_size, max_len, eos_id,
                   temperature=None if greedy else temperature, top_k=top_k,
                   rng=jax.random.PRNGKey(0) if rng is None else rng, first_logits=first_logits,
                   token_mask=token_mask)


def _check_method(method, rng):
    if method not in METHODS:
        raise UsageError(f"Unknown decoding method {method!r}; use one of {METHODS}.")
    if method == "sample" and rng is None:
        raise UsageError("method='sample' needs rng=jax.random.PRNGKey(...).")


def _check_guidance(method, guidance_scale, unconditional):
    if (guidance_scale is None) != (unconditional is None):
        raise UsageError("Classifier-free guidance needs both guidance_scale and the unconditional batch.")
    if guidance_scale is not None and method == "beam":
        raise UsageError("Classifier-free guidance samples (method 'sample' or 'greedy'), not beam search.")
    if isinstance(unconditional, (Prepared, PreparedPrefix)) and unconditional.batch_size % 2:
        raise UsageError("A guided batch holds conditional and unconditional rows (guidance_batch): an even "
                         f"number, not {unconditional.batch_size}.")


def guidance_batch(model, batch: dict, unconditional: dict) -> dict:
    """One batch for classifier-free guidance: rows [conditional; unconditional] of the
    network's PREDICT_INPUTS (each feature of `unconditional` shaped as `batch`'s)."""
    stacked = {}
    for name in model.PREDICT_INPUTS:
        cond, uncond = batch.get(name), unconditional.get(name)
        if cond is None or uncond is None:
            if cond is not None or uncond is not None:
                raise UsageError(f"guidance: {name!r} is in one of the two batches only.")
            continue
        if jnp.shape(cond) != jnp.shape(uncond):
            raise UsageError(f"guidance: {name!r} is {jnp.shape(cond)} conditionally but "
                             f"{jnp.shape(uncond)} unconditionally; pad both to the same length.")
        stacked[name] = jnp.concatenate([jnp.asarray(cond), jnp.asarray(uncond)])
    return stacked


def guided_logits(logits, guidance_scale):
    """Rows [cond; uncond] `[2N, V]` -> `uncond + S * (cond - uncond)` `[N, V]`, written as
    `cond + (S - 1) * (cond - uncond)` so that S = 1 gives the conditional logits exactly."""
    cond, uncond = jnp.split(logits.astype(jnp.float32), 2)
    return cond + (guidance_scale - 1.0) * (cond - uncond)


def _guided(step, first_logits, guidance_scale):
    """A step function over a doubled batch as one over its N conditional rows: the
    token chosen for row i is fed to rows i and N + i."""

    def twice(x):
        return None if x is None else jnp.concatenate([x, x])

    def step_both(last, position, cache, tokens):
        logits, cache = step(twice(last), position, cache, twice(tokens))
        return guided_logits(logits, guidance_scale), cache

    first = None if first_logits is None else guided_logits(first_logits, guidance_scale)
    return step_both, first


def init_cache(model, params, encoded, encoder_image_mask, encoder_input_tokens, max_decode_length):
    """The decoding cache for `encoded`: empty self-attention keys/values for
    `max_decode_length` positions, and the cross-attention keys/values of `encoded`
    (projected here, once). One decoder pass over dummy tokens creates it."""
    dummy = jnp.ones((encoded.shape[0], max_decode_length), jnp.int32)
    _, variables = model.apply({"params": params}, encoded, encoder_image_mask, encoder_input_tokens, dummy, dummy,
                               enable_dropout=False, decode=True, max_decode_length=max_decode_length,
                               mutable=["cache"], method=model.decode)
    return variables["cache"]


def _repeat_leaves(tree, repeats):
    """Each example's rows repeated `repeats` times in place (scalars, None left alone)."""
    return jax.tree_util.tree_map(lambda x: x if x.ndim == 0 else jnp.repeat(x, repeats, axis=0), tree)


def _step_fn(model, params, prepared: Prepared):
    """(last tokens [N], position, cache, tokens so far [N, T]) -> (logits [N, V], cache)."""
    encoded, image_mask, input_tokens = prepared.encoded, prepared.image_mask, prepared.input_tokens
    max_decode_length = prepared.max_decode_length

    def cached(last, position, cache, tokens):
        del position, tokens  # the cache knows the position
        logits, variables = model.apply(
            {"params": params, "cache": cache}, encoded, image_mask, input_tokens, last[:, None], last[:, None],
            enable_dropout=False, decode=True, max_decode_length=max_decode_length, mutable=["cache"],
            method=model.decode)
        return logits[:, 0], variables["cache"]

    def uncached(last, position, cache, tokens):
        del last
        decoder_inputs = pali.shift_right(tokens)
        logits = model.apply({"params": params}, encoded, image_mask, input_tokens, decoder_inputs,
                             jnp.ones_like(decoder_inputs), enable_dropout=False, method=model.decode)
        return jax.lax.dynamic_index_in_dim(logits, position, axis=1, keepdims=False), cache

    return uncached if prepared.cache is None else cached


def _prefix_step_fn(model: paligemma.PaliGemma, params, prepared: PreparedPrefix):
    """`_step_fn` for a decoder-only network. Cached: step i > 0 feeds the token chosen
    at step i - 1 (step 0's logits are the prefill's, `first_logits` of the loops: a
    `lax.cond` between the two inside the loop made XLA copy the whole cache at every
    step, a cost growing with the image tokens)."""

    def cached(last, position, cache, tokens):
        del position, tokens  # the cache knows each example's next slot
        logits, variables = model.apply({"params": params, "cache": cache}, last, mutable=["cache"],
                                        method=model.decode_step)
        return logits, variables["cache"]

    def uncached(last, position, cache, tokens):
        del last
        batch = prepared.batch
        inputs, targets, causal, query = _prompt_then_answer(batch["decoder_input_tokens"],
                                                             batch["decoder_causal_attention"], tokens, position)
        logits = model.apply({"params": params}, batch["encoder_images"], batch["encoder_image_mask"], inputs,
                             targets, causal, enable_dropout=False)
        return jnp.take_along_axis(logits, query[:, None, None], axis=1)[:, 0], cache

    return uncached if prepared.cache is None else cached


def _prompt_then_answer(input_tokens, causal_attention, answer, position):
    """Teacher-forcing features for the whole network (the uncached reference): each
    example's prompt, then its answer tokens so far (`answer [N, T]`, valid before
    `position`). Returns decoder inputs, targets (1 = a valid position), causal
    attention `[N, L + T]`, and the column whose logits predict answer token `position`."""
    prompt = causal_attention > 0
    prompt_length = jnp.sum(prompt, axis=1, dtype=jnp.int32)[:, None]
    width = input_tokens.shape[1] + answer.shape[1]
    column = jnp.arange(width, dtype=jnp.int32)[None]
    in_prompt = column < prompt_length
    prompt_tokens = jnp.pad(jnp.where(prompt, input_tokens, 0), ((0, 0), (0, answer.shape[1])))
    answer_index = jnp.clip(column - prompt_length, 0, answer.shape[1] - 1)
    inputs = jnp.where(in_prompt, prompt_tokens, jnp.take_along_axis(answer, answer_index, axis=1))
    query = jnp.maximum(prompt_length[:, 0] - 1 + position, 0)
    targets = (column <= query[:, None]).astype(jnp.int32)
    return inputs, targets, in_prompt.astype(jnp.int32), query


def _top_k_mask(logits, k):
    if not k or k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, NEG_INF, logits)


def _sample(step, cache, batch_size, max_len, eos_id, *, temperature, top_k, rng, first_logits=None,
            token_mask=None):
    """Greedy (temperature None) or ancestral sampling, stopping when all sequences end.
    first_logits: token 0's logits, known before the loop (a prefill's)."""

    def cond(state):
        i, _, _, done, _, _, _ = state
        return (i < max_len) & ~jnp.all(done)

    def body(state):
        i, tokens, last, _, _, cache, _ = state
        return choose(state, *step(last, i, cache, tokens))

    def choose(state, logits, cache):
        """Token i from its logits."""
        i, tokens, last, done, scores, _, rng = state
        log_probs = jax.nn.log_softmax(_masked(logits.astype(jnp.float32), token_mask, i))
        if temperature is None:
            next_token = jnp.argmax(log_probs, axis=-1)
        else:
            rng, key = jax.random.split(rng)
            scaled = _top_k_mask(log_probs / jnp.maximum(temperature, 1e-6), top_k)
            next_token = jax.random.categorical(key, scaled, axis=-1)
        next_token = next_token.astype(jnp.int32)
        token_logp = jnp.take_along_axis(log_probs, next_token[:, None], axis=-1)[:, 0]
        next_token = jnp.where(done, 0, next_token)
        scores = scores + jnp.where(done, 0.0, token_logp)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, next_token[:, None], i, axis=1)
        if eos_id is not None:
            done = done | (next_token == eos_id)
        return i + 1, tokens, next_token, done, scores, cache, rng

    tokens = jnp.zeros((batch_size, max_len), jnp.int32)
    state = (jnp.array(0), tokens, jnp.zeros((batch_size,), jnp.int32), jnp.zeros((batch_size,), bool),
             jnp.zeros((batch_size,), jnp.float32), cache, rng)
    if first_logits is not None:
        state = choose(state, first_logits, cache)
    _, tokens, _, _, scores, _, _ = jax.lax.while_loop(cond, body, state)
    return tokens, scores


def _length_penalty(length, alpha):
    return ((5.0 + length) / 6.0) ** alpha


def _gather_beams(tree, beam_indices, batch_size, num_beams):
    """Reorders every `[B*K, ...]` leaf by `beam_indices [B, K']` (scalars left alone)."""

    def gather(x):
        if x.ndim == 0:
            return x
        x = x.reshape((batch_size, num_beams) + x.shape[1:])
        idx = beam_indices.reshape(beam_indices.shape + (1,) * (x.ndim - 2))
        out = jnp.take_along_axis(x, idx, axis=1)
        return out.reshape((-1,) + x.shape[2:])

    return jax.tree_util.tree_map(gather, tree)


def _beam_search(step, cache, batch_size, k, max_len, eos_id, alpha, first_logits=None, token_mask=None):
    """Beam search over `k` beams; returns the best finished beam per example.
    first_logits: step 0's logits, known before the loop (a prefill's)."""
    eos = -1 if eos_id is None else eos_id

    def cond(state):
        i, _, alive_logp, _, finished_scores, finished, _ = state
        # Stop when no alive beam can beat the worst finished beam of any example.
        best_possible = alive_logp[:, 0] / _length_penalty(max_len, alpha)
        worst_finished = jnp.where(jnp.all(finished, axis=1), jnp.min(finished_scores, axis=1), NEG_INF)
        return (i < max_len) & ~jnp.all(best_possible < worst_finished)

    def body(state):
        i, alive_seq, _, _, _, _, cache = state
        last = jax.lax.dynamic_index_in_dim(alive_seq, jnp.maximum(i - 1, 0), axis=2, keepdims=False)
        last = jnp.where(i == 0, 0, last).reshape(-1)
        return advance(state, *step(last, i, cache, None))

    def advance(state, logits, cache):
        """Every beam extended by step i's logits."""
        i, alive_seq, alive_logp, finished_seq, finished_scores, finished, _ = state
        vocab = logits.shape[-1]
        log_probs = jax.nn.log_softmax(_masked(logits.astype(jnp.float32), token_mask, i)).reshape(batch_size, k, vocab)
        candidates = (alive_logp[:, :, None] + log_probs).reshape(batch_size, k * vocab)
        top_logp, top_idx = jax.lax.top_k(candidates, 2 * k)
        beam, token = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
        seqs = jnp.take_along_axis(alive_seq, beam[:, :, None], axis=1)
        seqs = jax.lax.dynamic_update_slice_in_dim(seqs, token[:, :, None], i, axis=2)
        is_eos = token == eos
        # The k best candidates that did not end continue...
        alive_scores, alive_pick = jax.lax.top_k(jnp.where(is_eos, NEG_INF, top_logp), k)
        new_alive_seq = jnp.take_along_axis(seqs, alive_pick[:, :, None], axis=1)
        cache = _gather_beams(cache, jnp.take_along_axis(beam, alive_pick, axis=1), batch_size, k)
        # ...and the ones that ended (or reached max_len) compete for the finished slots.
        ends = is_eos | (i == max_len - 1)
        new_scores = jnp.where(ends, top_logp / _length_penalty(i + 1, alpha), NEG_INF)
        all_seq = jnp.concatenate([finished_seq, seqs], axis=1)
        all_scores = jnp.concatenate([finished_scores, new_scores], axis=1)
        all_flags = jnp.concatenate([finished, ends], axis=1)
        finished_scores, pick = jax.lax.top_k(all_scores, k)
        finished_seq = jnp.take_along_axis(all_seq, pick[:, :, None], axis=1)
        finished = jnp.take_along_axis(all_flags, pick, axis=1)
        return i + 1, new_alive_seq, alive_scores, finished_seq, finished_scores, finished, cache

    alive_logp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (batch_size, 1))
    seqs = jnp.zeros((batch_size, k, max_len), jnp.int32)
    state = (jnp.array(0), seqs, alive_logp, seqs, jnp.full((batch_size, k), NEG_INF, jnp.float32),
             jnp.zeros((batch_size, k), bool), cache)
    if first_logits is not None:
        state = advance(state, first_logits, cache)
    _, alive_seq, alive_logp, finished_seq, finished_scores, finished, _ = jax.lax.while_loop(cond, body, state)
    # Every example finishes by max_len (forced); alive beams are a guard, not a path.
    any_finished = jnp.any(finished, axis=1)
    best_seq = jnp.where(any_finished[:, None], finished_seq[:, 0], alive_seq[:, 0])
    best_score = jnp.where(any_finished, finished_scores[:, 0], alive_logp[:, 0])
    return best_seq, best_score
