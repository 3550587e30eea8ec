"""`PaliGemma.rewind_cache`: the decoding cache takes back each example's last positions,
and feeding them again gives the teacher-forced logits. T5X decoding relies on it: its
decode functions re-feed the last prompt token after the prefill
(`t5x_decoder_model.PaliGemmaModel._prefill`)."""

import jax
import numpy as np

from tests.test_models_decoder import B, L, PREFIX, VALID, logits_of, make_batch, network, prompt_of

ROWS = np.arange(B)


def _prefilled(model, params, batch):
    cache_length = model.config.num_image_tokens + 2 * batch["decoder_input_tokens"].shape[1]
    _, state = model.apply({"params": params}, **prompt_of(batch), cache_length=cache_length,
                           mutable=["cache"], method=model.prefill)
    return state["cache"]


def _stepper(model, params):
    return jax.jit(lambda cache, tokens: model.apply({"params": params, "cache": cache}, tokens,
                                                     mutable=["cache"], method=model.decode_step))


def _feed(step, cache, batch, positions):
    """Feeds each example's input token at each of `positions` ([B] arrays, in turn);
    returns the logits of the last step and the cache."""
    for position in positions:
        logits, state = step(cache, batch["decoder_input_tokens"][ROWS, position])
        cache = state["cache"]
    return np.asarray(logits), cache


def test_the_last_prompt_position_fed_again_gives_its_logits_and_the_same_cache():
    model, variables = network()
    params, batch = variables["params"], make_batch(model.config)
    cache = _prefilled(model, params, batch)
    rewound = model.rewind_cache(cache, 1)
    np.testing.assert_array_equal(rewound["next_slot"], cache["next_slot"] - 1)
    assert not np.asarray(rewound["key_mask"])[ROWS, np.asarray(rewound["next_slot"])].any()
    logits, again = _feed(_stepper(model, params), rewound, batch, [PREFIX - 1])
    np.testing.assert_allclose(logits, logits_of(batch)[ROWS, PREFIX - 1], atol=1e-4)
    np.testing.assert_array_equal(again["next_slot"], cache["next_slot"])
    np.testing.assert_array_equal(again["key_mask"], cache["key_mask"])


def test_rewound_answer_positions_fed_again_give_the_teacher_forced_logits():
    model, variables = network()
    params, batch = variables["params"], make_batch(model.config)
    step = _stepper(model, params)
    answer = [np.minimum(PREFIX + i, L - 1) for i in (0, 1)]  # the first two answer tokens (the last
    valid = PREFIX + 1 < VALID                                # example has none: padding)
    assert valid.sum() >= 2
    first, cache = _feed(step, _prefilled(model, params, batch), batch, answer)
    again, _ = _feed(step, model.rewind_cache(cache, 2), batch, answer)
    np.testing.assert_allclose(again[valid], logits_of(batch)[ROWS, answer[1]][valid], atol=1e-4)
    np.testing.assert_allclose(again, first, atol=1e-5)


def test_per_example_steps_and_zero_leave_the_rest_alone():
    model, variables = network()
    cache = _prefilled(model, variables["params"], make_batch(model.config))
    same = model.rewind_cache(cache, 0)
    np.testing.assert_array_equal(same["key_mask"], cache["key_mask"])
    steps = np.array([0, 1, 2, 0], np.int32)
    rewound = model.rewind_cache(cache, steps)
    np.testing.assert_array_equal(rewound["next_slot"], cache["next_slot"] - steps)
    changed = np.asarray(rewound["key_mask"]) != np.asarray(cache["key_mask"])
    np.testing.assert_array_equal(changed.sum(axis=1), steps)
