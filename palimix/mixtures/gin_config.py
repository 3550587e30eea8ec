"""Defining mixtures in a .gin file, without Python.

    # my_mixture.gin
    import palimix.tasks                 # registers palimix's tasks (and palimix.mixture)
    MIXTURE_OR_TASK_NAME = @my_mix/palimix.mixture()
    my_mix/palimix.mixture.name = "my_mix"
    my_mix/palimix.mixture.tasks = ["palimix_demo_caption", "palimix_demo_vqa"]
    my_mix/palimix.mixture.temperature = 3.0

T5X's run configs pass `%MIXTURE_OR_TASK_NAME` to `utils.DatasetConfig`; gin calls
`palimix.mixture()` then, which registers the mixture and returns its name. Calling
it again with the same definition (train and eval configs both do) is a no-op; a
changed definition (another gin file parsed in the same process) replaces the
mixture that gin defined before. `load_gin_mixture(path)` does the same for the
palimix CLI (`palimix stats --gin_file my_mixture.gin`).
"""

from __future__ import annotations

import gin

from palimix.errors import UsageError
from palimix.mixtures.mixture import add_mixture

# name -> the definition gin registered it with.
_DEFINED_BY_GIN: dict[str, tuple] = {}


@gin.configurable("mixture", module="palimix")
def gin_mixture(name=gin.REQUIRED, tasks=gin.REQUIRED, rate="examples", temperature=1.0, max_rate=None, unimax=None) -> str:
    """Registers the mixture (see palimix.mixtures.add_mixture) and returns its name."""
    import seqio

    tasks = list(tasks)
    spec = (tuple(tasks), _freeze(rate), temperature, max_rate, _freeze(unimax))
    if _DEFINED_BY_GIN.get(name) == spec and name in seqio.MixtureRegistry.names():
        return name
    add_mixture(name, tasks, rate=_thaw(rate), temperature=temperature, max_rate=max_rate, unimax=_thaw(unimax),
                overwrite=name in _DEFINED_BY_GIN)
    _DEFINED_BY_GIN[name] = spec
    return name


def _freeze(value):
    if isinstance(value, dict):
        return tuple(sorted(value.items()))
    return value


def _thaw(value):
    return dict(value) if hasattr(value, "items") else value


def load_gin_mixture(path: str, macro: str = "MIXTURE_OR_TASK_NAME") -> str:
    """Parses a .gin file and returns the name its `macro` evaluates to (registering
    the mixture a `@palimix.mixture()` reference defines)."""
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        raise UsageError(f"gin file not found: {path!r}")
    with tf.io.gfile.GFile(path) as f:
        gin.parse_config(f.read(), skip_unknown=True)
    try:
        value = gin.query_parameter(f"%{macro}")
    except ValueError:
        raise UsageError(f"{path} does not set the macro {macro}.") from None
    if isinstance(value, gin.config.ConfigurableReference):
        value = value.scoped_configurable_fn() if value.evaluate else value
    if not isinstance(value, str):
        raise UsageError(f"{path}: {macro} must name a task or mixture, got {value!r}.")
    return value
