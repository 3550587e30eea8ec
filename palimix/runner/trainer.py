"""The network, optimizer, mesh and compiled train step of one run (eval and infer
use it too, to build parameters of the right shapes and shardings).

Everything model-specific comes from `palimix.models`: the network (`networks.build`),
its logical axes and mesh rules (`partitioning`), the loss (`losses`) and which
parameters train (`trainable`). Frozen parameters are not differentiated and have no
optimizer state: the state is `{"step", "params", "opt_state"}` with `opt_state` over
the trainable parameters only.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

from palimix.errors import UsageError
from palimix.models import losses, networks, partitioning, trainable
from palimix.runner.model import ModelDefinition

METRICS = ("loss", "cross_entropy", "token_accuracy", "grad_norm", "learning_rate")


class Trainer:
    def __init__(self, definition: ModelDefinition, task_feature_lengths: Mapping[str, int], *,
                 batch_size: int, tx=None, schedule=None, z_loss: float = 1e-4, seed: int = 0,
                 mesh: Mapping[str, int] | None = None, devices=None):
        import jax
        from jax.sharding import NamedSharding, PartitionSpec

        self.definition = definition
        self.network = networks.build(definition.config)
        self.task_feature_lengths = dict(task_feature_lengths)
        self.tx, self.schedule, self.z_loss, self.seed = tx, schedule, z_loss, seed
        # mesh: {"data": n, "model": m} (partitioning.parse_mesh); None: every device
        # data parallel. Parameters are placed by the model's logical-axis rules
        # (replicated when model is 1), batches split over "data". devices: the devices
        # the mesh spans (default: all of them).
        mesh = dict(mesh or {})
        self.mesh = partitioning.make_mesh(data=mesh.get("data", -1), model=mesh.get("model", 1), devices=devices)
        data = self.mesh.shape["data"]
        if batch_size % data:
            raise UsageError(f"the batch size {batch_size} must be a multiple of the {data} data-parallel "
                             f"devices it is split over (mesh {partitioning.mesh_shape(self.mesh)}).")
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        abstract = jax.eval_shape(self._init_variables, jax.random.key(0))
        self.param_shardings = partitioning.param_shardings(abstract["params_axes"], self.mesh)
        self.trainable_mask = definition.trainable.mask(abstract["params"])

    def _init_variables(self, rng):
        batch = networks.dummy_batch(self.definition.config, 1, self.task_feature_lengths)
        return self.network.init({"params": rng, "dropout": rng}, *networks.inputs(self.network, batch),
                                 enable_dropout=False)

    def context(self):
        """What every jitted call runs under: the mesh, and with model parallelism the
        model's logical activation constraints (partitioning.DEFAULT_RULES). On a
        data-parallel mesh activations follow the batch's sharding by XLA's propagation,
        so the constraints are left inactive (they would only restate that)."""
        if self.mesh.shape["model"] > 1:
            return partitioning.activation_sharding(self.mesh)
        return self.mesh

    def split(self, params) -> tuple[Any, Any]:
        """(trainable, frozen) parameters."""
        return trainable.split(params, self.trainable_mask)

    def init_params(self):
        import jax

        with self.context():
            init = jax.jit(lambda rng: self._init_variables(rng)["params"], out_shardings=self.param_shardings)
            return init(jax.random.key(self.seed))

    def init_state(self) -> dict:
        import jax
        import jax.numpy as jnp

        params = self.init_params()
        with self.context():
            opt_state = jax.jit(lambda p: self.tx.init(self.split(p)[0]),
                                out_shardings=self.opt_state_shardings())(params)
        step = jax.device_put(jnp.zeros((), jnp.int32), self.replicated)
        return {"step": step, "params": params, "opt_state": opt_state}

    def opt_state_shardings(self):
        """Optimizer state placed like the parameters it belongs to (sharded over
        'model' with them); counts and Adafactor's small factored statistics replicated."""
        import jax

        trainable_params = self.split(self.abstract_params())[0]
        return partitioning.like_params(jax.eval_shape(self.tx.init, trainable_params), trainable_params,
                                        self.split(self.param_shardings)[0], self.replicated)

    def state_shardings(self) -> dict:
        return {"step": self.replicated, "params": self.param_shardings, "opt_state": self.opt_state_shardings()}

    def abstract_params(self):
        import jax

        shapes = jax.eval_shape(lambda: self._init_variables(jax.random.key(0))["params"])
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            shapes, self.param_shardings)

    def shard_batch(self, batch: Mapping[str, Any]):
        import jax

        return jax.device_put(dict(batch), self.batch_sharding)

    def loss(self, params, batch, dropout_key) -> tuple[Any, losses.TokenLoss]:
        logits = self.network.apply({"params": params}, *networks.inputs(self.network, batch), enable_dropout=True,
                                    rngs={"dropout": dropout_key})
        token_loss = losses.cross_entropy(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"],
                                          z_loss=self.z_loss)
        return token_loss.mean, token_loss

    @functools.cached_property
    def train_step(self) -> Callable:
        """`(state, batch) -> (state, metrics)`, compiled once with fixed shardings."""
        import jax

        # Fixed in/out shardings: the state a step returns is placed exactly like the one
        # it received, so the second step reuses the first step's compiled program.
        shardings = self.state_shardings()
        return jax.jit(self._step, donate_argnums=0, in_shardings=(shardings, self.batch_sharding),
                       out_shardings=(shardings, self.replicated))

    def _step(self, state, batch):
        import jax
        import jax.numpy as jnp
        import optax

        dropout_key = jax.random.fold_in(jax.random.key(self.seed), state["step"])
        trainable_params, frozen_params = self.split(state["params"])

        def loss_fn(trainable_part):
            return self.loss(trainable.merge(trainable_part, frozen_params), batch, dropout_key)

        # Only the trainable parameters are differentiated: XLA drops the backward pass
        # of whatever feeds nothing trainable (a frozen ViT's, say).
        (loss, token_loss), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable_params)
        updates, opt_state = self.tx.update(grads, state["opt_state"], trainable_params)
        params = trainable.merge(optax.apply_updates(trainable_params, updates), frozen_params)
        # No on-device guard against a non-finite step (a select over the whole state
        # costs ~5% of a tiny model's step): the host reads every step's loss before it
        # saves a checkpoint and stops at a NaN/Inf, so a bad state is never saved.
        num_tokens = jnp.maximum(token_loss.num_tokens, 1.0)
        metrics = {"loss": loss, "cross_entropy": token_loss.cross_entropy / num_tokens,
                   "token_accuracy": token_loss.correct / num_tokens, "grad_norm": optax.global_norm(grads),
                   "learning_rate": self.schedule(state["step"]) if self.schedule else jnp.zeros(())}
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics
