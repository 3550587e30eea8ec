"""The "palimix" warm-start format: a run of `palimix train` continued by another, as
mBLIP's warm-up -> instruct stages run (`palimix train --gin_file runs/mblip_instruct.gin
--init_checkpoint WARMUP_DIR --init_format palimix`). A tiny warm-up run (float LM, only
the projection trains), then the instruct stage from it (int8 LM, LoRA): every parameter
is carried over (the LM quantized), the adapters start fresh, nothing else."""

import re

import jax
import numpy as np
import pytest
from flax import traverse_util

from palimix.errors import CheckpointMismatchError
from palimix.models import checkpoints, lora, quantize
from tests.runner_env import clean_gin, runner_environment  # noqa: F401  (autouse fixtures)

pytestmark = pytest.mark.slow

SMALL_QFORMER = dict(qformer_num_queries=4, qformer_depth=2, qformer_width=32, qformer_num_heads=4,
                     qformer_mlp_dim=48)
COMMON = ["--batch_size", "4", "--lengths", "inputs=8,targets=8,image=32", "--warmup_steps", "1", "--no_progress",
          "--gin", "IMAGE_SIZE = 32", *(a for k, v in SMALL_QFORMER.items() for a in ("--gin", f"configs.get.{k} = {v}"))]


def _train(run_dir, run_file: str, steps: int, *extra: str) -> None:
    import gin

    from palimix import cli

    gin.clear_config()
    args = ["train", "runner_fixture_colors", "--model_dir", str(run_dir), "--steps", str(steps), *COMMON,
            "--gin_file", run_file, "--gin_file", "sizes/tiny.gin", *extra]
    assert cli.main(args) == 0


def _flat(params) -> dict:
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(params)).items()}


def _run(path):
    from palimix.runner.loading import load_run

    run = load_run(str(path))
    return run.trainer.definition, _flat(run.params)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-step warm-up run and a 1-step instruct run continued from it."""
    root = tmp_path_factory.mktemp("stages")
    warmup, instruct = root / "warmup", root / "instruct"
    _train(warmup, "runs/mblip_warmup.gin", 2)
    _train(instruct, "runs/mblip_instruct.gin", 1, "--init_checkpoint", str(warmup), "--init_format", "palimix")
    return warmup, instruct


def _is_adapter(name: str) -> bool:
    return re.fullmatch(lora.TRAINABLE_PATTERN, name) is not None


def test_instruct_continues_the_warmup_run(runs):
    warmup_dir, instruct_dir = runs
    warmup_definition, warmup = _run(warmup_dir)
    definition, instruct = _run(instruct_dir)
    assert not any(v.dtype == np.int8 for v in warmup.values())
    int8 = quantize.int8_weights(definition.config)
    assert int8, "the instruct stage stores its LM in int8"
    quantized = _flat(quantize.quantize_params(warmup, quantize.with_int8_kernels(warmup_definition.config)))
    adapters = {n for n in instruct if _is_adapter(n)}
    assert adapters and not any(_is_adapter(n) for n in warmup)
    # Everything but the adapters came from the warm-up run; what the instruct stage
    # freezes (the ViT, the LM: int8 now) is exactly that after its step too.
    assert set(instruct) - adapters == set(quantized)
    frozen = [n for n in instruct if not definition.trainable.is_trainable(n)]
    assert frozen and set(int8) <= set(frozen)
    for name in frozen:
        np.testing.assert_array_equal(instruct[name], quantized[name], err_msg=name)
    assert definition.trainable.trainable == tuple(lora.MBLIP_TRAINABLE)


def test_warm_start_values_before_any_step(runs, tmp_path):
    """The loaded tree itself: trainable parameters carried over too, adapters fresh
    (B zero, A as initialised)."""
    from palimix.runner.loading import load_run

    warmup_dir, instruct_dir = runs
    run = load_run(str(instruct_dir))
    fresh = _flat(run.trainer.init_params())
    loaded = _flat(checkpoints.warm_start(run.trainer.init_params(), str(warmup_dir), "palimix"))
    warmup_definition, warmup = _run(warmup_dir)
    quantized = _flat(quantize.quantize_params(warmup, quantize.with_int8_kernels(warmup_definition.config)))
    for name, value in loaded.items():
        expected = fresh[name] if _is_adapter(name) else quantized[name]
        np.testing.assert_array_equal(value, expected, err_msg=name)
    assert all(not loaded[n].any() for n in loaded if _is_adapter(n) and n.endswith("/b"))
    # One checkpoint step folder works as well as the model dir.
    step_dir = warmup_dir / "checkpoints" / "2"
    again = _flat(checkpoints.warm_start(run.trainer.init_params(), str(step_dir), "palimix"))
    assert all(np.array_equal(again[n], loaded[n]) for n in loaded)


def test_int8_run_into_a_float_network_dequantizes(runs):
    from palimix.models import networks

    _, instruct_dir = runs
    definition, instruct = _run(instruct_dir)
    float_config = quantize.with_int8_kernels(definition.config, False)
    params = networks.init_params(float_config, jax.random.PRNGKey(1))
    loaded = _flat(checkpoints.load_palimix(str(instruct_dir), params))
    expected = _flat(quantize.dequantize_params(instruct, definition.config))
    assert loaded.keys() == expected.keys()
    assert not any(v.dtype == np.int8 for v in loaded.values())
    for name in loaded:
        np.testing.assert_array_equal(loaded[name], expected[name], err_msg=name)


def test_adapters_the_model_lacks_are_an_error(runs):
    from palimix.models import networks

    _, instruct_dir = runs
    definition, _ = _run(instruct_dir)
    without = lora.without_lora(definition.config)
    params = networks.init_params(without, jax.random.PRNGKey(0))
    with pytest.raises(CheckpointMismatchError, match="lora_q/a: in the checkpoint, not in the model"):
        checkpoints.load_palimix(str(instruct_dir), params)


def test_a_folder_that_is_not_a_run_is_an_error(tmp_path):
    with pytest.raises(CheckpointMismatchError, match="no finished palimix checkpoint"):
        checkpoints.read_palimix_run(str(tmp_path))
    (tmp_path / "checkpoints" / "3").mkdir(parents=True)
    with pytest.raises(CheckpointMismatchError, match="no run.json"):
        checkpoints.read_palimix_run(str(tmp_path))
