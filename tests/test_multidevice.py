"""Model parallelism end to end on 8 forced host devices
(XLA_FLAGS=--xla_force_host_platform_device_count=8, set in each subprocess: the device
count is fixed when JAX starts), against the same run on one device:

- `python -m t5x.train` with palimix's gin files and `num_partitions` 2 and 4 (meshes
  data 4 x model 2 and data 2 x model 4), then `t5x.eval` of the sharded checkpoint;
- `palimix train --mesh data=2,model=4` (the embedded runner).

The training losses of every step equal the single-device run's within float tolerance,
and the checkpoints' own sharding records show the large kernels split over 'model'.
Runs are shared between tests (module-scoped caches): each is made once. The models
are the tiny encoder-decoder with one layer per stack; the decoder-only backbone
(models/paligemma.gin) passes the same comparison but is left out to keep CI time small.
"""

import base64
import glob
import json
import os
import subprocess
import sys

import pytest

from palimix.commands.gin_path import gin_dir
from palimix.errors import UsageError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EIGHT_DEVICES = "--xla_force_host_platform_device_count=8"
# Summed losses of a few batches after up to 3 optimizer steps: reductions in another
# order (sharded matmuls) move them in the 7th digit (2.6e-7 relative seen here).
RELATIVE_TOLERANCE = 1e-5

# --- helpers shared by the T5X and runner runs -----------------------------------------


def _run(command, cwd, devices: int, **extra_env):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               XLA_FLAGS=EIGHT_DEVICES if devices == 8 else "", **extra_env)
    # cwd: a fresh folder, so no local models/ runs/ sizes/ folder shadows the gin files.
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-6000:]
    return result


def _orbax_shardings(state_dir) -> dict:
    """{array name: its sharding} as orbax recorded them when saving (`_sharding`:
    base64 names -> JSON NamedSharding with the mesh shape and partition spec)."""
    with open(os.path.join(state_dir, "_sharding"), encoding="utf-8") as f:
        raw = json.load(f)
    return {base64.b64decode(name).decode(): json.loads(value) for name, value in raw.items()}


def _shard_shape(sharding: dict, shape) -> tuple:
    """jax's per-device shape of an array of `shape` under a recorded NamedSharding."""
    from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec

    mesh = AbstractMesh(tuple(sharding["shape"]), tuple(sharding["axis_names"]))
    spec = PartitionSpec(*(tuple(a) if isinstance(a, list) else a for a in sharding["partition_spec"]))
    return NamedSharding(mesh, spec).shard_shape(tuple(shape))


def _assert_same_losses(losses: dict, reference: dict, steps: int):
    assert sorted(losses) == sorted(reference) == list(range(1, steps + 1))
    for step in reference:
        assert losses[step] == pytest.approx(reference[step], rel=RELATIVE_TOLERANCE), (step, losses, reference)
    assert len(set(reference.values())) == steps  # real, changing numbers


# --- T5X: python -m t5x.train / t5x.eval -----------------------------------------------

TASK = "palimix_demo_ocr_mul"  # 13 languages of OCR; a task, so no mixture sampling
LENGTHS = "{'inputs': 32, 'targets': 16, 'image': 64}"
T5X_STEPS = 3
T5X_BATCH = 8  # divisible by every data-parallel size here (8 / num_partitions)
# The tiny model with one layer per stack: the same code paths and shardings, about
# half the compile time (compiling is most of each run).
ONE_LAYER = ("configs.get.vit_depth=1", "configs.get.text_num_encoder_layers=1",
             "configs.get.text_num_decoder_layers=1")
# The largest kernel (the logits), split over 'model' by its vocabulary axis.
LOGITS, LOGITS_SHAPE = "decoder/logits_dense/kernel", (64, 8192)


def _t5x(binary, run_file, cwd, devices, partitions, *bindings):
    command = [
        sys.executable, "-m", f"t5x.{binary}", f"--gin_search_paths={gin_dir()}",
        "--gin_file=models/pali.gin", f"--gin_file=runs/{run_file}", "--gin_file=sizes/tiny.gin",
        f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'", f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
        f"--gin.t5x_model.PjitPartitioner.num_partitions={partitions}",
        *(f"--gin.{b}" for b in (*ONE_LAYER, *bindings)),
    ]
    return _run(command, cwd, devices)


@pytest.fixture(scope="module")
def t5x_run(tmp_path_factory):
    """`num_partitions -> model dir` of a T5X_STEPS t5x.train, made once: 1 on one
    device (the reference), 2 and 4 on 8 forced host devices."""
    pytest.importorskip("t5x", reason="T5X is not installed (pip install '.[t5x]')")
    runs = {}

    def run(partitions):
        if partitions not in runs:
            root = tmp_path_factory.mktemp(f"t5x_{partitions}")
            model_dir = root / "model"
            _t5x("train", "pretrain.gin", root, 1 if partitions == 1 else 8, partitions,
                 f"TRAIN_STEPS={T5X_STEPS}", f"BATCH_SIZE={T5X_BATCH}", f"MODEL_DIR='{model_dir}'",
                 f"CHECKPOINT_PERIOD={T5X_STEPS}", f"EVAL_PERIOD={T5X_STEPS}",
                 # The same batches and initialisation in every run; a loss every step.
                 "RANDOM_SEED=0", "SHUFFLE_TRAIN_EXAMPLES=False", "train/utils.DatasetConfig.seed=0",
                 "__main__.train.stats_period=1", "__main__.train.train_eval_dataset_cfg=None")
            runs[partitions] = model_dir
        return runs[partitions]

    return run


def _t5x_losses(model_dir) -> dict:
    """{step: loss} from t5x's TensorBoard events of the train collection."""
    import tensorflow as tf

    losses = {}
    for path in glob.glob(str(model_dir / "train" / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "loss":
                    losses[event.step] = float(tf.make_ndarray(value.tensor))
    return losses


@pytest.mark.slow
@pytest.mark.t5x
@pytest.mark.parametrize("partitions", [2, 4])
def test_t5x_model_parallel_training_matches_one_device(t5x_run, partitions):
    model_dir = t5x_run(partitions)
    _assert_same_losses(_t5x_losses(model_dir), _t5x_losses(t5x_run(1)), T5X_STEPS)
    # The checkpoint's arrays lived on a (8 / n, n) mesh, the vocabulary split n ways.
    shardings = _orbax_shardings(model_dir / f"checkpoint_{T5X_STEPS}" / "state")
    sharding = shardings["target." + LOGITS.replace("/", ".")]
    assert dict(zip(sharding["axis_names"], sharding["shape"])) == {"data": 8 // partitions, "model": partitions}
    assert _shard_shape(sharding, LOGITS_SHAPE) == (64, 8192 // partitions)


@pytest.mark.slow
@pytest.mark.t5x
def test_t5x_eval_decodes_with_the_model_split_four_ways(t5x_run, tmp_path):
    model_dir = t5x_run(4)
    out = tmp_path / "eval"
    _t5x("eval", "eval.gin", tmp_path, 8, 4, f"CHECKPOINT_PATH='{model_dir}/checkpoint_{T5X_STEPS}'",
         f"EVAL_OUTPUT_DIR='{out}'", "BATCH_SIZE=8", "seqio.Evaluator.num_examples=16")
    with open(out / "inference_eval" / f"{TASK}-metrics.jsonl", encoding="utf-8") as f:
        record = json.loads(f.readline())
    assert record["step"] == T5X_STEPS
    assert sum(v for k, v in record.items() if k.startswith("examples/")) == 16
    assert 0.0 <= record["anls/macro"] <= 100.0


# --- the embedded runner: palimix train --mesh -----------------------------------------

RUNNER_STEPS = 3


@pytest.fixture(scope="module")
def runner_run(tmp_path_factory):
    """`mesh flag or None -> model dir` of a RUNNER_STEPS `palimix train`, made once:
    None on one device, a mesh on 8 forced host devices."""
    fixture_images = str(tmp_path_factory.mktemp("fixture_images"))
    runs = {}

    def run(mesh):
        if mesh not in runs:
            model_dir = tmp_path_factory.mktemp("runner") / "model"
            command = [sys.executable, "-m", "palimix.cli", "train", "runner_fixture_colors",
                       "--module", "tests.runner_fixture_tasks", "--model_dir", str(model_dir),
                       "--steps", str(RUNNER_STEPS), "--batch_size", "8", "--lengths", "inputs=8,targets=8,image=32",
                       "--checkpoint_every", str(RUNNER_STEPS), "--log_every", "1", "--warmup_steps", "2",
                       "--learning_rate", "0.01", "--no_progress", *(["--mesh", mesh] if mesh else []),
                       *(arg for b in ONE_LAYER for arg in ("--gin", b))]
            _run(command, REPO, 8 if mesh else 1, PALIMIX_RUNNER_FIXTURE_DIR=fixture_images,
                 PALIMIX_COMPILATION_CACHE="off")
            runs[mesh] = model_dir
        return runs[mesh]

    return run


def _runner_losses(model_dir) -> dict:
    from palimix.runner.summaries import read_metrics

    return {step: record["loss"] for step, record in read_metrics(str(model_dir)).items()}


@pytest.mark.slow
def test_runner_on_a_2x4_mesh_matches_one_device(runner_run):
    model_dir = runner_run("data=2,model=4")
    reference = runner_run(None)
    _assert_same_losses(_runner_losses(model_dir), _runner_losses(reference), RUNNER_STEPS)
    with open(model_dir / "run.json", encoding="utf-8") as f:
        assert json.load(f)["mesh"] == {"data": 2, "model": 4}
    with open(reference / "run.json", encoding="utf-8") as f:
        assert json.load(f)["mesh"] == {"data": 1, "model": 1}
    # Parameters and their optimizer statistics were split over 'model' (vocabulary
    # and MLP), the rest replicated, as the checkpoint recorded them.
    shardings = _orbax_shardings(model_dir / "checkpoints" / str(RUNNER_STEPS) / "state")
    mlp = "img.Transformer.encoderblock_0.MlpBlock_0.Dense_0.kernel"
    for name, shape, shard in [("params.decoder.logits_dense.kernel", (64, 8192), (64, 2048)),
                               ("opt_state.0.v.decoder.logits_dense.kernel", (64, 8192), (64, 2048)),
                               (f"params.{mlp}", (64, 128), (64, 32)),
                               ("params.decoder.decoder_norm.scale", (64,), (64,))]:
        assert _shard_shape(shardings[name], shape) == shard, name


# --- the mesh flag and optimizer-state placement (no subprocess) -----------------------


def test_mesh_flag_reads_axis_sizes_and_refuses_anything_else():
    from palimix.models import partitioning

    assert partitioning.parse_mesh("data=2,model=4") == {"data": 2, "model": 4}
    assert partitioning.parse_mesh(" model = 4 ") == {"model": 4}
    for bad in ("2x4", "data=2,modle=4", "model=0", "model=four", "model=2,model=4", ""):
        with pytest.raises(UsageError, match="data=2,model=4"):
            partitioning.parse_mesh(bad)
    with pytest.raises(UsageError, match="needs 4 devices"):
        partitioning.make_mesh(data=1, model=4)  # this process has one device


def test_optimizer_state_is_placed_like_its_parameters():
    import jax
    import jax.numpy as jnp
    import optax
    from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec

    from palimix.models import partitioning

    mesh = AbstractMesh((2, 4), ("data", "model"))
    split, replicated = NamedSharding(mesh, PartitionSpec(None, "model")), NamedSharding(mesh, PartitionSpec())
    params = {"dense": {"kernel": jnp.zeros((256, 512)), "bias": jnp.zeros((512,))}}
    shardings = {"dense": {"kernel": split, "bias": replicated}}
    # Adafactor: the kernel's second moment is factored (row and column statistics of
    # other shapes: replicated), the bias's is not (placed like the bias).
    state = jax.eval_shape(optax.adafactor(1e-3).init, params)
    placed = partitioning.like_params(state, params, shardings, replicated)
    factored = placed[0]  # optax's ScaleByFactoredRMS state
    assert factored.v_row["dense"]["kernel"] == replicated and factored.v_col["dense"]["kernel"] == replicated
    assert factored.v["dense"]["bias"] == replicated and factored.count == replicated
    adam = partitioning.like_params(jax.eval_shape(optax.adam(1e-3).init, params), params, shardings, replicated)
    assert adam[0].mu["dense"]["kernel"] == split and adam[0].nu["dense"]["kernel"] == split
    assert adam[0].count == replicated


@pytest.mark.parametrize("recorded,batch,devices,expected", [
    (None, 1, 8, {"data": 1, "model": 1}),            # one request on 8 devices: one of them
    (None, 32, 8, {"data": 8, "model": 1}),
    (None, 12, 8, {"data": 4, "model": 1}),           # the largest split of the batch
    ({"data": 2, "model": 4}, 8, 8, {"data": 2, "model": 4}),
    ({"data": 2, "model": 4}, 1, 8, {"data": 1, "model": 4}),
    ({"data": 2, "model": 4}, 8, 6, {"data": 2, "model": 1}),  # fewer devices than its model axis needs
])
def test_eval_and_infer_mesh_fits_the_batch_and_the_run(recorded, batch, devices, expected):
    from palimix.runner.loading import serving_mesh

    assert serving_mesh(recorded, batch, devices) == expected
