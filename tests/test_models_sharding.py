"""The tiny PaLI on a 2x4 ('data', 'model') mesh of forced host devices gives the same
loss and gradients as on one device (parameters and activations sharded by the
logical axis rules). Runs in a subprocess: the device count is fixed at JAX start-up.
"""

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from palimix.models import configs, losses, networks, pali, partitioning

    assert jax.device_count() == 8, jax.devices()
    # The tiny model with one layer per stack: the same code paths, half the compile time.
    config = configs.get("tiny", vocab_size=64, vit_depth=1, text_num_encoder_layers=1, text_num_decoder_layers=1)
    model = pali.Pali(config)
    variables = networks.init_variables(config, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    B, L, T = 8, 6, 6
    targets = jnp.asarray(rng.integers(1, 64, (B, T)), jnp.int32)
    batch = dict(
        encoder_images=jnp.asarray(rng.uniform(-1, 1, (B, 64, 64, 3)), jnp.float32),
        encoder_image_mask=jnp.asarray([1, 0] * 4, jnp.int32),
        encoder_input_tokens=jnp.asarray(rng.integers(1, 64, (B, L)), jnp.int32),
        decoder_input_tokens=pali.shift_right(targets), decoder_target_tokens=targets)

    def loss(params, batch):
        logits = model.apply({"params": params}, **batch, enable_dropout=False)
        return losses.cross_entropy(logits, batch["decoder_target_tokens"]).mean

    def sgd_step(params, batch):
        value, grads = jax.value_and_grad(loss)(params, batch)
        params = jax.tree_util.tree_map(lambda p, g: p - 0.5 * g, params, grads)
        return value, loss(params, batch), grads

    step = jax.jit(sgd_step)
    ref_loss, ref_next, ref_grads = step(variables["params"], batch)

    mesh = partitioning.make_mesh(data=2, model=4)
    shardings = partitioning.param_shardings(variables["params_axes"], mesh)
    params = jax.device_put(variables["params"], shardings)
    sharded_batch = {k: jax.device_put(v, partitioning.batch_sharding(mesh, v.ndim)) for k, v in batch.items()}
    with partitioning.activation_sharding(mesh):
        lowered = jax.jit(sgd_step).lower(params, sharded_batch)
        constraints = lowered.as_text().count("sharding_constraint")
        loss_value, next_loss, grads = lowered.compile()(params, sharded_batch)
    max_grad_diff = max(float(jnp.abs(a - b).max()) for a, b in
                        zip(jax.tree_util.tree_leaves(ref_grads), jax.tree_util.tree_leaves(grads)))
    print(json.dumps(dict(
        ref_loss=float(ref_loss), loss=float(loss_value), ref_next=float(ref_next), next=float(next_loss),
        max_grad_diff=max_grad_diff, constraints=constraints,
        logits_spec=list(grads["decoder"]["logits_dense"]["kernel"].sharding.spec),
        mlp_spec=list(params["img"]["Transformer"]["encoderblock_0"]["MlpBlock_0"]["Dense_0"]["kernel"].sharding.spec),
        devices=len(params["token_embedder"]["embedding"].sharding.device_set))))
    """
)


def test_tiny_model_on_a_2x4_mesh_matches_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert abs(out["loss"] - out["ref_loss"]) < 1e-5 * abs(out["ref_loss"])
    assert abs(out["next"] - out["ref_next"]) < 1e-4 * abs(out["ref_next"])
    assert out["next"] < out["loss"]  # the step learned something
    assert out["max_grad_diff"] < 1e-5
    # Parameters really are split over 'model' and activations constrained.
    assert out["logits_spec"] == [None, "model"] and out["mlp_spec"] == [None, "model"]
    assert out["devices"] == 8 and out["constraints"] > 20
