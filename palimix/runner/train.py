"""The embedded training loop: one machine, every local device, no T5X.

    from palimix.runner import train
    result = train.train(train.TrainConfig(mixture_or_task_name="palimix_demo",
                                           model_dir="/tmp/run", train_steps=2000))

Data parallel over `jax.devices()` (a `("data", "model")` mesh of shape (n, 1), the
parameters placed by the model's logical-axis rules); optax (Adafactor by default,
warmup then rsqrt/cosine decay); orbax checkpoints with the input position, resumed
automatically from `model_dir`; TensorBoard summaries and `metrics.jsonl`; a progress
bar; a loss that becomes NaN or Inf stops the run with the last good checkpoint kept.

Determinism: the dropout key of step `s` is `fold_in(key(seed), s)` and the input
position is restored exactly, so a run killed at any point and started again with
the same command continues the same loss curve.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import signal
import time
from typing import Any, Callable, Mapping

import gin

from palimix.errors import PalimixError, UsageError

log = logging.getLogger(__name__)


class NonFiniteLossError(PalimixError, FloatingPointError):
    """The loss became NaN or Inf; the run stopped and kept its last good checkpoint."""


@gin.configurable(module="palimix.runner")
@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs. Flags, gin (`TrainConfig.batch_size = 64`) or Python."""

    mixture_or_task_name: str = "palimix_demo"
    model_dir: str = "palimix_runs/default"
    # {"inputs": L, "targets": T, "image": S}; None: the demo's lengths.
    task_feature_lengths: Mapping[str, int] | None = None
    model: str = "tiny"
    batch_size: int = 32
    train_steps: int = 1000
    optimizer: str = "adafactor"
    learning_rate: float = 1e-2
    schedule: str = "rsqrt"
    warmup_steps: int = 100
    weight_decay: float = 0.0
    clip_gradient_norm: float | None = None
    z_loss: float = 1e-4
    seed: int = 0
    split: str = "train"
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 50
    progress: bool = True
    # Input: "memory" preprocesses the split once and samples batches with numpy (no
    # tf.data competing with the step for the cores); "stream" reads seqio's tf.data
    # pipeline; "auto" picks memory when every example with its own image fits in
    # memory_limit_mb. memory_passes: epochs of random preprocessing kept in memory.
    input_mode: str = "auto"
    memory_limit_mb: float = 1024
    memory_passes: int = 2

    def validate(self) -> None:
        for name in ("batch_size", "train_steps", "checkpoint_every", "log_every", "keep_checkpoints"):
            if int(getattr(self, name)) <= 0:
                raise UsageError(f"--{name} must be positive, got {getattr(self, name)}.")
        if self.memory_passes < 1:
            raise UsageError(f"--memory_passes must be >= 1, got {self.memory_passes}.")
        if self.warmup_steps < 0:
            raise UsageError(f"--warmup_steps must be >= 0, got {self.warmup_steps}.")
        lengths = self.task_feature_lengths or {}
        missing = {"inputs", "targets", "image"} - set(lengths)
        if missing:
            raise UsageError(f"task_feature_lengths needs {sorted(missing)} (got {dict(lengths)}); "
                             "e.g. {'inputs': 32, 'targets': 16, 'image': 32}.")


@dataclasses.dataclass
class TrainResult:
    step: int
    start_step: int
    last_loss: float | None
    seconds: float
    steps_per_s: float  # Excluding the first step of this process (compilation).
    input_wait_share: float  # Time waiting for input batches / wall time of the steps.
    model_dir: str


def default_task_feature_lengths() -> dict[str, int]:
    from palimix.tasks import demo

    return dict(demo.TASK_FEATURE_LENGTHS)


def run_description(config: TrainConfig, spec, input_mode: str) -> dict:
    return {"model": spec.to_dict(), "mixture_or_task_name": config.mixture_or_task_name,
            "task_feature_lengths": dict(config.task_feature_lengths), "seed": config.seed,
            "batch_size": config.batch_size, "input_mode": input_mode}


def _check_same_run(model_dir: str, description: dict) -> None:
    """Refuse to resume a model dir written by a different run (a wrong --model_dir
    would otherwise fail deep inside the checkpoint restore)."""
    path = os.path.join(model_dir, "run.json")
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        before = json.load(f)
    differences = [k for k in description if before.get(k) != description[k]]
    if differences:
        details = "; ".join(f"{k}: {before.get(k)} -> {description[k]}" for k in differences)
        raise UsageError(f"{model_dir} holds a run with other settings ({details}). "
                         "Use a new --model_dir, or the settings of that run to resume it.")


def _write_json_atomically(path: str, value: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1, ensure_ascii=False)
    os.replace(tmp, path)


class Trainer:
    """The network, optimizer, mesh and jitted step of one run (also used by eval/infer
    to build parameters of the right shapes and shardings)."""

    def __init__(self, spec, task_feature_lengths: Mapping[str, int], *, batch_size: int,
                 tx=None, schedule=None, z_loss: float = 1e-4, seed: int = 0):
        import jax
        import numpy as np
        from flax import linen as nn
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        from palimix.runner import model as model_lib

        self.spec = spec
        self.network = model_lib.build_network(spec)
        self.task_feature_lengths = dict(task_feature_lengths)
        self.tx = tx
        self.schedule = schedule
        self.z_loss = z_loss
        self.seed = seed
        devices = jax.devices()
        if batch_size % len(devices):
            raise UsageError(f"the batch size {batch_size} must be a multiple of the {len(devices)} "
                             "devices it is split over.")
        self.mesh = Mesh(np.array(devices).reshape(-1, 1), ("data", "model"))
        self.rules = model_lib.partitioning_rules()
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self._nn = nn
        dummy = model_lib.dummy_batch(len(devices), self.task_feature_lengths)
        self._init_inputs = model_lib.network_inputs(dummy)
        abstract = jax.eval_shape(self._init_variables, jax.random.key(0))
        logical = model_lib.logical_param_specs(abstract)
        self.param_shardings = model_lib.mesh_shardings(logical, self.mesh, self.rules)

    def _init_variables(self, rng):
        return self.network.init({"params": rng, "dropout": rng}, *self._init_inputs, enable_dropout=False)

    def context(self):
        """The mesh every jitted call runs under. Parameters are placed by the model's
        logical-axis rules (`param_shardings`); activations follow the batch's
        data-parallel sharding by XLA's propagation, so the model's logical
        constraints are left inactive (on a ("data", "model") mesh of shape (n, 1)
        they would only restate that)."""
        return self.mesh

    def init_params(self):
        import jax

        with self.context():
            init = jax.jit(lambda rng: self._nn.meta.unbox(self._init_variables(rng)["params"]),
                           out_shardings=self.param_shardings)
            return init(jax.random.key(self.seed))

    def init_state(self) -> dict:
        import jax
        import jax.numpy as jnp

        params = self.init_params()
        with self.context():
            opt_state = jax.jit(self.tx.init, out_shardings=self.opt_state_shardings(params))(params)
        step = jax.device_put(jnp.zeros((), jnp.int32), self.replicated)
        return {"step": step, "params": params, "opt_state": opt_state}

    def opt_state_shardings(self, params):
        """Optimizer state is replicated: on a (n, 1) mesh that is all data parallelism
        needs, and Adafactor's factored statistics are small."""
        import jax

        return jax.tree.map(lambda _: self.replicated, jax.eval_shape(self.tx.init, params))

    def state_shardings(self, params) -> dict:
        return {"step": self.replicated, "params": self.param_shardings,
                "opt_state": self.opt_state_shardings(params)}

    def abstract_params(self):
        import jax

        shapes = jax.eval_shape(lambda: self._nn.meta.unbox(self._init_variables(jax.random.key(0))["params"]))
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            shapes, self.param_shardings)

    def shard_batch(self, batch: Mapping[str, Any]):
        import jax

        return jax.device_put(dict(batch), self.batch_sharding)

    @functools.cached_property
    def train_step(self) -> Callable:
        import jax
        import jax.numpy as jnp
        import optax

        from palimix.runner import model as model_lib

        network, tx, z_loss, schedule = self.network, self.tx, self.z_loss, self.schedule
        base_key = jax.random.key(self.seed)

        def step_fn(state, batch):
            dropout_key = jax.random.fold_in(base_key, state["step"])

            def loss_fn(params):
                logits = network.apply({"params": params}, *model_lib.network_inputs(batch),
                                       enable_dropout=True, rngs={"dropout": dropout_key})
                return model_lib.cross_entropy_loss(logits, batch["decoder_target_tokens"],
                                                    batch["decoder_loss_weights"], z_loss=z_loss)

            (loss, (xent_sum, num_tokens, correct)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                state["params"])
            grad_norm = optax.global_norm(grads)
            updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
            params = optax.apply_updates(state["params"], updates)
            # No on-device guard against a non-finite step (a select over the whole state
            # costs ~5% of a tiny model's step): the host reads every step's loss before
            # it saves a checkpoint and stops at a NaN/Inf, so a bad state is never saved.
            new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state}
            metrics = {"loss": loss, "cross_entropy": xent_sum / num_tokens,
                       "token_accuracy": correct / num_tokens, "grad_norm": grad_norm,
                       "learning_rate": schedule(state["step"]) if schedule else jnp.zeros(())}
            return new_state, metrics

        # Fixed in/out shardings: the state a step returns is placed exactly like the one
        # it received, so the second step reuses the first step's compiled program.
        shardings = self.state_shardings(self.abstract_params())
        return jax.jit(step_fn, donate_argnums=0, in_shardings=(shardings, self.batch_sharding),
                       out_shardings=(shardings, self.replicated))


def _test_sigkill_step() -> int | None:
    """Tests: $PALIMIX_TEST_SIGKILL_AFTER_STEP=N makes the run SIGKILL itself right after
    step N, a crash at a known step (tests/test_runner_resume.py), with no timing race."""
    value = os.environ.get("PALIMIX_TEST_SIGKILL_AFTER_STEP")
    return int(value) if value else None


def train(config: TrainConfig, *, stop_after: int | None = None) -> TrainResult:
    """Trains until `config.train_steps` (resuming from `model_dir` when it holds a
    checkpoint). `stop_after`: return after that many steps of this call (tests)."""
    import jax
    import numpy as np

    from palimix.runner import checkpoints as checkpoints_lib
    from palimix.runner import data as data_lib
    from palimix.runner import model as model_lib
    from palimix.runner import schedules
    from palimix.runner.progress import Progress
    from palimix.runner.summaries import Summaries

    if config.task_feature_lengths is None:
        config = dataclasses.replace(config, task_feature_lengths=default_task_feature_lengths())
    config.validate()
    provider = data_lib.get_mixture_or_task(config.mixture_or_task_name)
    vocabulary = provider.output_features["targets"].vocabulary
    spec = model_lib.ModelSpec(name=config.model, vocab_size=vocabulary.vocab_size,
                               image_size=int(config.task_feature_lengths["image"]))
    input_mode = data_lib.choose_input_mode(config.input_mode, config.mixture_or_task_name, config.split,
                                            config.task_feature_lengths, config.memory_limit_mb)
    description = run_description(config, spec, input_mode)
    _check_same_run(config.model_dir, description)

    schedule = schedules.learning_rate_schedule(
        config.schedule, base_learning_rate=config.learning_rate, warmup_steps=config.warmup_steps,
        total_steps=config.train_steps)
    tx = schedules.optimizer(config.optimizer, schedule, weight_decay=config.weight_decay,
                             clip_gradient_norm=config.clip_gradient_norm)
    trainer = Trainer(spec, config.task_feature_lengths, batch_size=config.batch_size, tx=tx,
                      schedule=schedule, z_loss=config.z_loss, seed=config.seed)
    checkpoints = checkpoints_lib.Checkpoints(config.model_dir, keep=config.keep_checkpoints)
    finished = (checkpoints.latest_step() or 0) >= config.train_steps
    # A finished run needs no input pipeline (building a large mixture's takes a while).
    batches = None if finished else data_lib.train_batches(
        input_mode, config.mixture_or_task_name, config.task_feature_lengths, config.batch_size,
        seed=config.seed, split=config.split, memory_passes=config.memory_passes)
    state = trainer.init_state()
    start_step = 0
    if checkpoints.latest_step() is not None:
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        state, _ = checkpoints.restore(abstract, iterator=batches)
        start_step = int(state["step"])
        log.info("Resumed %s from step %d.", config.model_dir, start_step)
    _write_json_atomically(os.path.join(config.model_dir, "run.json"), description)
    _write_json_atomically(os.path.join(config.model_dir, "train_config.json"),
                           {k: v for k, v in dataclasses.asdict(config).items()})

    summaries = Summaries(config.model_dir)
    progress = Progress(config.train_steps, start_step, config.batch_size, enabled=config.progress)
    if start_step:
        import sys

        print(f"resuming from the checkpoint at step {start_step} in {config.model_dir}",
              file=sys.stderr, flush=True)
    end_step = config.train_steps if stop_after is None else min(config.train_steps, start_step + stop_after)

    step = start_step
    last_saved = start_step if checkpoints.latest_step() is not None else None
    pending: list[tuple[int, dict]] = []  # Step metrics not yet read back from the device.
    interval = {"loss": 0.0, "cross_entropy": 0.0, "token_accuracy": 0.0, "grad_norm": 0.0, "n": 0}
    last_loss = None
    wall_start = time.perf_counter()
    interval_start = wall_start
    steady_start = None  # After the first (compiling) step.
    steady_wait_start = 0.0

    def resolve(keep_last: int) -> None:
        """Reads back step metrics (all but the newest `keep_last`, so that the host
        never waits for the step it just dispatched), logs them, stops on NaN/Inf."""
        nonlocal last_loss, interval_start
        while len(pending) > keep_last:
            done_step, metrics = pending.pop(0)
            values = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if not np.isfinite(values["loss"]) or not np.isfinite(values["grad_norm"]):
                where = (f"the last good checkpoint (step {last_saved}) is kept in {checkpoints.directory}"
                         if last_saved is not None else "no checkpoint was written before it")
                raise NonFiniteLossError(
                    f"the loss became {values['loss']} (gradient norm {values['grad_norm']}) at step "
                    f"{done_step}; training stopped and {where}. Try a lower --learning_rate, more "
                    "--warmup_steps or --clip_gradient_norm 1.0.")
            last_loss = values["loss"]
            for k in ("loss", "cross_entropy", "token_accuracy", "grad_norm"):
                interval[k] += values[k]
            interval["n"] += 1
            if done_step % config.log_every == 0 or done_step == end_step:
                now = time.perf_counter()
                steps_per_s = interval["n"] / max(now - interval_start, 1e-9)
                row = {k: interval[k] / interval["n"] for k in ("loss", "cross_entropy", "token_accuracy",
                                                                 "grad_norm")}
                row.update(learning_rate=values["learning_rate"], steps_per_s=steps_per_s,
                           examples_per_s=steps_per_s * config.batch_size)
                summaries.scalars(done_step, row)
                progress.update(done_step, row["loss"], steps_per_s)
                interval.update(loss=0.0, cross_entropy=0.0, token_accuracy=0.0, grad_norm=0.0, n=0)
                interval_start = now

    try:
        with trainer.context():
            while step < end_step:
                batch = trainer.shard_batch(next(batches))
                state, metrics = trainer.train_step(state, batch)
                step += 1
                pending.append((step, metrics))
                if steady_start is None:
                    jax.block_until_ready(metrics)
                    steady_start = time.perf_counter()
                    steady_wait_start = batches.wait_seconds
                resolve(keep_last=1)
                if step % config.checkpoint_every == 0 or step == config.train_steps:
                    resolve(keep_last=0)  # Never save past a NaN.
                    checkpoints.save(step, state, batches, {"loss": last_loss, "time": time.time()})
                    last_saved = step
                if step == _test_sigkill_step():
                    resolve(keep_last=0)  # This step's metrics are written; then die uncleanly.
                    os.kill(os.getpid(), signal.SIGKILL)
            resolve(keep_last=0)
    finally:
        progress.close()
        summaries.close()
        checkpoints.close()
    end = time.perf_counter()
    steady_steps = step - start_step - 1
    steady_seconds = end - steady_start if steady_start else 0.0
    return TrainResult(
        step=step, start_step=start_step, last_loss=last_loss, seconds=end - wall_start,
        steps_per_s=steady_steps / steady_seconds if steady_steps > 0 and steady_seconds > 0 else 0.0,
        input_wait_share=((batches.wait_seconds - steady_wait_start) / steady_seconds
                          if steady_seconds > 0 and batches is not None else 0.0),
        model_dir=config.model_dir)
