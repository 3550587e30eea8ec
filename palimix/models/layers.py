"""Building blocks shared by the ViT and the T5 towers.

Every parameter is created with `param_with_axes`, so its logical axis names land in
the `params_axes` collection exactly as t5x expects (t5x's partitioner and Adafactor
read them from there), and every large activation gets a logical sharding constraint.
Parameter shapes follow the checkpoints we load: natural multi-axis kernels for the
ViT (flax `DenseGeneral`/`Conv` layout, as big_vision saves them) and 2-D kernels for
T5 (t5x's layout).
"""

from __future__ import annotations

import os
from typing import Callable, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen import partitioning as nn_partitioning

param_with_axes = nn_partitioning.param_with_axes
Initializer = Callable[..., jnp.ndarray]

# Additive attention bias for masked positions (t5x uses the same value).
NEG_INF = -1e10


def constrain(x, axes: Sequence[Optional[str]]):
    """Logical sharding constraint; a no-op outside a mesh + axis rules context."""
    return nn.with_logical_constraint(x, tuple(axes))


def _canonicalize(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


class DenseGeneral(nn.Module):
    """A linear map over `axis` of the input onto `features`, kernel shape in + out.

    `kernel_axes` names every kernel dimension (in dims first); `bias_axes` the
    bias (its shape is `features`). A 2-D kernel that widens its input (an MLP's
    `wi`, the vocabulary logits) multiplies with `wide_output_matmul`.
    """

    features: Union[int, Sequence[int]]
    kernel_axes: Sequence[str]
    axis: Union[int, Sequence[int]] = -1
    use_bias: bool = False
    bias_axes: Sequence[str] = ()
    kernel_init: Optional[Initializer] = None
    bias_init: Initializer = nn.initializers.zeros
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, inputs):
        features = _canonicalize(self.features)
        axis = tuple(a % inputs.ndim for a in _canonicalize(self.axis))
        in_shape = tuple(inputs.shape[a] for a in axis)
        kernel_shape = in_shape + features
        if len(self.kernel_axes) != len(kernel_shape):
            raise ValueError(f"{self.name}: kernel_axes {self.kernel_axes} do not name shape {kernel_shape}")
        n_in = len(in_shape)
        init = self.kernel_init or nn.initializers.variance_scaling(
            1.0, "fan_in", "truncated_normal",
            in_axis=tuple(range(n_in)), out_axis=tuple(range(n_in, len(kernel_shape))),
        )
        kernel = self._kernel(init, kernel_shape, n_in)
        x = jnp.asarray(inputs, self.dtype)
        if _widens(axis, inputs.ndim, in_shape, features):
            y = wide_output_matmul(x, kernel)
        else:
            y = jax.lax.dot_general(x, kernel, ((axis, tuple(range(n_in))), ((), ())))
        if self.use_bias:
            bias = param_with_axes("bias", self.bias_init, features, self.param_dtype, axes=tuple(self.bias_axes))
            y = y + jnp.asarray(bias, self.dtype)
        return y

    def _kernel(self, init, shape, n_in: int):
        """The kernel `[in..., out...]` in the activation dtype (a subclass may store it
        otherwise: palimix.models.quantize.Int8DenseGeneral)."""
        kernel = param_with_axes("kernel", init, shape, self.param_dtype, axes=tuple(self.kernel_axes))
        return jnp.asarray(kernel, self.dtype)


def _widens(axis, ndim, in_shape, features) -> bool:
    """A map of the last axis onto more features (the case `wide_output_matmul` is for)."""
    return axis == (ndim - 1,) and len(features) == 1 and features[0] > in_shape[0]


def _matmul_last(x, kernel):
    return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


@jax.custom_vjp
def wide_output_matmul(x, kernel):
    """`x [..., in] @ kernel [in, out]` with a kernel gradient that suits out > in.

    The same product and gradients as autodiff gives: for the kernel gradient
    `x^T @ dy`, XLA on CPU otherwise copies the output gradient `dy [tokens, out]` into
    a transposed `[out, tokens]` array at every step (for the vocabulary logits of a
    tiny model ~10% of its train step); here the narrower input is transposed instead
    (an optimization barrier keeps XLA from folding the transpose back into the product).
    """
    return _matmul_last(x, kernel)


def _wide_output_matmul_fwd(x, kernel):
    return _matmul_last(x, kernel), (x, kernel)


def _wide_output_matmul_bwd(residuals, dy):
    x, kernel = residuals
    dx = jax.lax.dot_general(dy, kernel, (((dy.ndim - 1,), (1,)), ((), ())))
    x_t = jax.lax.optimization_barrier(x.reshape(-1, x.shape[-1]).T)  # [in, tokens]
    dkernel = jnp.dot(x_t, dy.reshape(-1, dy.shape[-1]))
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


wide_output_matmul.defvjp(_wide_output_matmul_fwd, _wide_output_matmul_bwd)


class RMSNorm(nn.Module):
    """T5's layer norm: scale only, no mean subtraction; computed in float32."""

    epsilon: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x):
        x = jnp.asarray(x, jnp.float32)
        scale = param_with_axes("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype, axes=(self.axis_name,))
        y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
        return jnp.asarray(y * jnp.asarray(scale, jnp.float32), self.dtype)


class LayerNorm(nn.Module):
    """Standard layer norm with scale and bias (the ViT's), computed in float32."""

    epsilon: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    axis_name: str = "vit_embed"

    @nn.compact
    def __call__(self, x):
        x = jnp.asarray(x, jnp.float32)
        features = (x.shape[-1],)
        scale = param_with_axes("scale", nn.initializers.ones, features, self.param_dtype, axes=(self.axis_name,))
        bias = param_with_axes("bias", nn.initializers.zeros, features, self.param_dtype, axes=(self.axis_name,))
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
        return jnp.asarray(y * jnp.asarray(scale, jnp.float32) + jnp.asarray(bias, jnp.float32), self.dtype)


class Embed(nn.Module):
    """Token embedding table `embedding [vocab, embed]` (t5x's `token_embedder`)."""

    num_embeddings: int
    features: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    embedding_init: Initializer = nn.initializers.normal(stddev=1.0)

    def setup(self):
        self.embedding = param_with_axes(
            "embedding", self.embedding_init, (self.num_embeddings, self.features), self.param_dtype,
            axes=("vocab", "embed"),
        )

    def __call__(self, ids):
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(f"token ids must be integers, got {ids.dtype}")
        out = jnp.take(jnp.asarray(self.embedding, self.dtype), ids, axis=0)
        return constrain(out, ("batch", "length", "embed"))


def relative_position_buckets(
    query_positions: np.ndarray, key_positions: np.ndarray, *, bidirectional: bool,
    num_buckets: int, max_distance: int,
) -> np.ndarray:
    """T5's bucketing of key - query distances, `[q, k]` int32, computed in numpy.

    Exact distances below num_buckets/4 (/2 one-way) get their own bucket, larger
    ones share log-spaced buckets up to max_distance. Computed with numpy in float32
    like the Mesh TensorFlow original so that buckets (and loaded checkpoints) agree.
    """
    relative = np.asarray(key_positions)[None, :] - np.asarray(query_positions)[:, None]
    distance = -relative
    buckets = np.zeros_like(distance)
    if bidirectional:
        num_buckets //= 2
        buckets += (distance < 0).astype(np.int32) * num_buckets
        distance = np.abs(distance)
    else:
        distance = np.maximum(distance, 0)
    max_exact = num_buckets // 2
    log_ratio = np.log(distance.astype(np.float32) / max_exact + np.finfo(np.float32).eps)
    large = max_exact + (log_ratio / np.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(np.int32)
    large = np.minimum(large, num_buckets - 1)
    return (buckets + np.where(distance < max_exact, distance, large)).astype(np.int32)


class RelativePositionBias(nn.Module):
    """Per-head attention bias from relative-position buckets (`rel_embedding [heads, buckets]`)."""

    num_heads: int
    num_buckets: int = 32
    max_distance: int = 128
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, query_length: int, key_length: int, *, bidirectional: bool, query_position=None):
        """Bias `[1, heads, q, k]`; with `query_position` (a traced scalar) one row `[1, heads, 1, k]`."""
        table = param_with_axes(
            "rel_embedding", nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
            (self.num_heads, self.num_buckets), self.param_dtype, axes=("heads", "relpos_buckets"),
        )
        if query_position is not None and query_length != 1:
            raise ValueError("A decoding step (query_position given) has query_length 1.")
        # For one decoding step, bucket every (query, key) pair and take the row later.
        rows = key_length if query_position is not None else query_length
        buckets = relative_position_buckets(
            np.arange(rows), np.arange(key_length), bidirectional=bidirectional,
            num_buckets=self.num_buckets, max_distance=self.max_distance,
        )
        buckets = jnp.asarray(buckets)
        if query_position is not None:  # one decoding step: the row of the current position
            buckets = jax.lax.dynamic_slice_in_dim(buckets, query_position, 1, axis=0)
        bias = jnp.take(jnp.asarray(table, self.dtype), buckets, axis=1)  # [heads, q, k]
        return bias[None]


def mask_to_bias(mask, dtype):
    """Boolean mask (True = attend) -> additive bias (0 or NEG_INF)."""
    return jnp.where(mask, jnp.zeros((), dtype), jnp.asarray(NEG_INF, dtype))


# The kernel `dot_product_attention` asks `jax.nn.dot_product_attention` for: "auto"
# (cuDNN flash attention on an NVIDIA GPU where cuDNN's shape rules hold, XLA's fused
# attention everywhere else), "xla", or "cudnn" (an error where cuDNN cannot run the
# shapes). The environment variable overrides "auto", read when a function is traced: a
# run falls back to XLA without code changes if a cuDNN build refuses a shape.
ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn")
ATTENTION_ENV = "PALIMIX_ATTENTION"

# Logit of a key a query may not attend to in the explicit path (a `where`, not an added
# bias: a query with no key at all, e.g. a padding position, gets a uniform row, as in
# jax.nn.dot_product_attention).
MASKED_LOGIT = -1e30


def attention_implementation() -> str:
    """The kernel choice in force: $PALIMIX_ATTENTION, or "auto"."""
    choice = os.environ.get(ATTENTION_ENV, "auto")
    if choice not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"{ATTENTION_ENV}={choice!r}: use one of {ATTENTION_IMPLEMENTATIONS}.")
    return choice


def _cudnn_fits(query, key, value, has_bias: bool) -> bool:
    """cuDNN flash attention's rules (jax's `check_layout` and `check_is_flash_attention`):
    an NVIDIA GPU, q/k/v all bf16 or all fp16, head_dim a multiple of 8 up to 128 (256
    from Hopper on), and with a bias or mask even query and key lengths (its backward pass)."""
    if jax.default_backend() != "gpu" or "cuda" not in jax.devices()[0].client.platform_version:
        return False
    dtypes = {query.dtype, key.dtype, value.dtype}
    if len(dtypes) != 1 or dtypes.pop() not in (jnp.bfloat16, jnp.float16):
        return False
    capability = tuple(int(x) for x in jax.devices()[0].compute_capability.split("."))
    head_dim = query.shape[-1]
    if head_dim % 8 or head_dim > (256 if capability >= (9, 0) else 128):
        return False
    return not has_bias or (query.shape[1] % 2 == 0 and key.shape[1] % 2 == 0)


def _fused_attention(query, key, value, bias, mask):
    """jax.nn.dot_product_attention on `[B, T, heads, d]` queries and `[B, S, kv_heads, d]`
    keys/values, unscaled (palimix's towers scale the queries themselves)."""
    choice = attention_implementation()
    if choice == "auto":
        choice = "cudnn" if _cudnn_fits(query, key, value, bias is not None or mask is not None) else "xla"
    if choice == "cudnn":
        # cuDNN adds one bias of the full [.., T, S] extent in the query's dtype (a mask is
        # turned into one); XLA broadcasts whatever it gets.
        full = lambda x: None if x is None else jnp.broadcast_to(  # noqa: E731
            x, x.shape[:2] + (query.shape[1], key.shape[1]))
        bias = None if bias is None else full(bias).astype(query.dtype)
        mask = full(mask)
    return jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask, scale=1.0,
                                        implementation=choice)


def _explicit_attention(query, key, value, bias, mask, *, dropout_rng, dropout_rate, dtype, float32_logits,
                        kv_layout):
    """softmax(q k^T + bias) v spelled out: any key/value layout, attention dropout.

    Query heads are grouped over the key/value heads (`g` per head `h`), as in
    jax.nn.dot_product_attention's multi-query / grouped-query attention."""
    batch, q_len, heads, head_dim = query.shape
    kv_heads = key.shape[kv_layout.index("h")]
    group = heads // kv_heads
    query = query.reshape(batch, q_len, kv_heads, group, head_dim)
    if float32_logits:
        query, key = query.astype(jnp.float32), key.astype(jnp.float32)
    # Logits in the inputs' dtype, softmax in float32 (t5x's and big_vision's explicit
    # attention); XLA on CPU has no bf16 x bf16 -> f32 product for these dimension orders.
    logits = jnp.einsum(f"bqhgd,{kv_layout}->bhgqk", query, key).astype(jnp.float32)

    def grouped(x):  # [B|1, heads|1, q, k] -> [B|1, kv_heads|1, group|1, q, k]
        if x.shape[1] == 1:
            return x[:, :, None]
        return x.reshape(x.shape[0], kv_heads, group, *x.shape[2:])

    if bias is not None:
        logits = logits + grouped(bias).astype(logits.dtype)
    if mask is not None:
        logits = jnp.where(grouped(mask), logits, MASKED_LOGIT)
    weights = jax.nn.softmax(logits).astype(dtype)
    if dropout_rng is not None:
        # Like T5: one dropout mask per key, shared across query positions.
        keep_shape = weights.shape[:-2] + (1, weights.shape[-1])
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, keep_shape)
        weights = weights * (keep.astype(dtype) / jnp.asarray(1.0 - dropout_rate, dtype))
    out = jnp.einsum(f"bhgqk,{kv_layout}->bqhgd", weights, value.astype(dtype))
    return out.reshape(batch, q_len, heads, head_dim)


def dot_product_attention(query, key, value, bias=None, mask=None, *, dropout_rng=None, dropout_rate=0.0,
                          deterministic=True, dtype=jnp.float32, float32_logits=False, kv_layout="bkhd"):
    """softmax(q k^T + bias, masked) v, without 1/sqrt(head_dim) scaling (the callers fold
    it into the query or its initialisation). Returns `[batch, q_length, heads, head_dim]`.

    query `[batch, q_length, heads, head_dim]`; key and value with `kv_heads` heads, a
    divisor of `heads` (multi-query / grouped-query attention), in `kv_layout`: "bkhd"
    (`[batch, kv_length, kv_heads, head_dim]`) or "bhdk" (`[batch, kv_heads, head_dim,
    kv_length]`, the decoding caches'). bias (additive) and mask (bool, True = attend)
    broadcast to `[batch, heads, q_length, kv_length]` (batch and heads may be 1).

    "bkhd" runs jax.nn.dot_product_attention (cuDNN flash attention or XLA: see
    ATTENTION_IMPLEMENTATIONS), whose logits are always float32, so float32_logits changes
    nothing there; the explicit path forms them in the inputs' dtype unless float32_logits.
    Two cases keep the explicit path:
    - attention dropout while training: jax.nn.dot_product_attention has no dropout;
    - a decoding cache ("bhdk", one query position): jax.nn wants keys as [B, S, heads, d],
      and transposing the whole cache at every step is what made a step's cost grow with
      the number of cached image tokens on CPU; a single query row gains nothing from a
      flash kernel.
    """
    if sorted(kv_layout) != sorted("bkhd"):
        raise ValueError(f"kv_layout must order the letters b, k, h, d; got {kv_layout!r}")
    for name, x in (("bias", bias), ("mask", mask)):
        if x is not None and x.ndim != 4:
            raise ValueError(f"{name} must be 4-D [batch, heads, q_length, kv_length] (1 to broadcast), "
                             f"got shape {x.shape}")
    if mask is not None and mask.dtype != jnp.bool_:
        raise ValueError(f"mask must be boolean (True = attend), got {mask.dtype}")
    dropout = not deterministic and dropout_rate > 0.0
    if kv_layout == "bkhd" and not dropout:
        value = value.astype(query.dtype)
        key = key.astype(query.dtype)
        return _fused_attention(query, key, value, bias, mask).astype(dtype)
    return _explicit_attention(query, key, value, bias, mask, dropout_rng=dropout_rng if dropout else None,
                               dropout_rate=dropout_rate, dtype=dtype, float32_logits=float32_logits,
                               kv_layout=kv_layout)


def remat_policy(name: str):
    """jax.checkpoint policy for a PaliConfig.remat name."""
    return {
        "full": None,  # save nothing: recompute each layer in the backward pass
        "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    }[name]


# How a scanned stack of blocks lays out its variables: parameters with the layer axis
# leading (t5x's logical axis "layers", big_vision's checkpoints); the decoding cache with
# it second, so that every cache entry stays batch-first (as big_vision's Gemma does):
# decoding and t5x's decode functions copy and reorder cache rows (beams) without
# knowing whether the layers are scanned (t5x's cache_offset stays 0).
SCAN_VARIABLE_AXES = {"params": 0, "cache": 1}
SCAN_AXIS_NAME = "layers"


def _block_carry(block, x, *args):
    """nn.scan's body: the block's output is the carry; nothing is stacked per layer."""
    return block(x, *args), None


def apply_blocks(block_class, x, *args, name: str, depth: int, scan: bool, remat: str = "none",
                 static_argnums: tuple = (), **block_fields):
    """`x` through `depth` blocks `block_class(**block_fields)`, each called as
    `block(x, *args)`; call it from a compact method (the blocks are its children).

    Unscanned: `depth` modules `{name}_0`, `{name}_1`, ... (t5x's and big_vision's
    per-layer names). scan=True: one `nn.scan` over a module `name` whose parameters
    have a leading "layers" axis (see SCAN_VARIABLE_AXES); `args` are the same for every
    layer (broadcast). remat != "none": each block is rematerialised with that policy
    (static_argnums: the block's non-array arguments, counted with self as 0).
    """
    if remat != "none":
        # prevent_cse is only needed outside a scan (t5x and big_vision do the same).
        block_class = nn.remat(block_class, static_argnums=static_argnums, policy=remat_policy(remat),
                               prevent_cse=not scan)
    if not scan:
        for i in range(depth):
            x = block_class(**block_fields, name=f"{name}_{i}")(x, *args)
        return x
    scanned = nn_partitioning.scan_with_axes(
        _block_carry, variable_axes=SCAN_VARIABLE_AXES, split_rngs={"params": True, "dropout": True},
        in_axes=nn.broadcast, length=depth, axis_name=SCAN_AXIS_NAME,
    )
    x, _ = scanned(block_class(**block_fields, name=name), x, *args)
    return x
