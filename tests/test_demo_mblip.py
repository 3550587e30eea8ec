"""`palimix demo --recipe mblip`'s stages on a few steps each (no evaluation): the
pretraining stage trains the whole Q-Former model on the image and text kinds, warm-up
only the Q-Former's projection, instruct the Q-Former, projection and LoRA over a frozen
ViT and an int8 LM, on the image kinds; each stage starts from the previous one's run,
and what a stage freezes is exactly what it was given."""

import re

import jax
import numpy as np
import pytest
from flax import traverse_util

from palimix.models import lora, quantize
from palimix.runner import demo as demo_runner

pytestmark = pytest.mark.slow

STEPS = 2


def _flat(params) -> dict:
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(params)).items()}


def _load(path):
    from palimix.runner.loading import load_run

    return load_run(str(path))


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    import palimix.tasks  # noqa: F401  (registers palimix_demo)

    recipe = demo_runner.DemoSettings(recipe_name="mblip", steps=STEPS, batch_size=4).recipe()
    model_dir = tmp_path_factory.mktemp("mblip")
    done = demo_runner.train_stages(recipe, str(model_dir), seed=0, progress=False)
    return recipe, model_dir, done


def test_stages_train_in_order_each_from_the_previous(stages):
    recipe, model_dir, done = stages
    assert [s["name"] for s in done] == ["pretrain", "warmup", "instruct"]
    assert all(s["steps"] == STEPS for s in done)
    assert done[0]["kinds"] == list(demo_runner.IMAGE_KINDS + demo_runner.TEXT_KINDS)
    assert done[1]["kinds"] == done[2]["kinds"] == list(demo_runner.IMAGE_KINDS)
    dirs = [model_dir / "stages" / "pretrain", model_dir / "stages" / "warmup", model_dir]
    assert [s["model_dir"] for s in done] == [str(d) for d in dirs]
    runs = [_load(d) for d in dirs]
    assert [r.description["init_checkpoint"] for r in runs] == [None, str(dirs[0]), str(dirs[1])]
    assert {r.description["init_format"] for r in runs[1:]} == {"palimix"}
    assert {r.trainer.definition.config.bridge for r in runs} == {"qformer"}
    selections = [r.trainer.definition.trainable for r in runs]
    assert selections[0].trains_everything
    assert selections[1].trainable == ("language_projection/.*",)
    assert selections[2].trainable == tuple(lora.MBLIP_TRAINABLE)
    assert runs[0].mixture_or_task_name != runs[1].mixture_or_task_name


def test_each_stage_freezes_what_it_should(stages):
    _, model_dir, _ = stages
    pretrain, warmup, instruct = (_load(d) for d in (model_dir / "stages" / "pretrain",
                                                    model_dir / "stages" / "warmup", model_dir))
    pretrain_params, warmup_params, instruct_params = (_flat(r.params) for r in (pretrain, warmup, instruct))
    # Pretraining moved every parameter.
    initial = _flat(pretrain.trainer.init_params())
    assert all(not np.array_equal(pretrain_params[n], initial[n]) for n in pretrain_params)
    # Warm-up: only the projection moved from the pretrained parameters.
    moved = {n for n in warmup_params if not np.array_equal(warmup_params[n], pretrain_params[n])}
    assert moved and all(n.startswith("language_projection/") for n in moved)
    # Instruct: the LM is the warm-up's, in int8, untouched; the adapters are new.
    definition = instruct.trainer.definition
    quantized = _flat(quantize.quantize_params(warmup_params,
                                               quantize.with_int8_kernels(warmup.trainer.definition.config)))
    int8 = quantize.int8_weights(definition.config)
    assert int8 and all(instruct_params[n].dtype == np.int8 for n in int8)
    frozen = [n for n in instruct_params if not definition.trainable.is_trainable(n)]
    for name in frozen:
        np.testing.assert_array_equal(instruct_params[name], quantized[name], err_msg=name)
    assert any(re.fullmatch(lora.TRAINABLE_PATTERN, n) for n in instruct_params)


def test_trainable_share_of_the_instruct_stage(stages):
    _, model_dir, _ = stages
    run = _load(model_dir)
    share = demo_runner.trainable_share(run)
    mask = _flat(run.trainer.definition.trainable.mask(run.params))
    sizes = {n: v.size for n, v in _flat(run.params).items()}
    assert share["params"] == sum(sizes.values())
    assert share["trainable"] == sum(sizes[n] for n, t in mask.items() if t)
    assert 0 < share["share"] < 0.5
