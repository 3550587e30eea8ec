"""Configuration shared by `palimix train | eval | infer`: gin files and bindings,
user modules that register tasks, and how flags, gin and defaults combine.

Precedence: an explicit flag > a gin binding (`TrainConfig.batch_size = 64` or the
t5x macros `MIXTURE_OR_TASK_NAME`, `TASK_FEATURE_LENGTHS`, `TRAIN_STEPS`,
`BATCH_SIZE`, `MODEL_DIR`) > the defaults. gin files are looked up in the current
directory, then in palimix's gin folder (`palimix gin-path`), so
`--gin_file models/pali.gin --gin_file sizes/tiny.gin` reads the same network and size
files as a T5X run. The runner needs only those (they bind palimix configurables);
`runs/*.gin` configure T5X's binaries and need T5X installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Sequence

from palimix.errors import UsageError

# t5x macro -> TrainConfig field.
T5X_MACROS = {
    "MIXTURE_OR_TASK_NAME": "mixture_or_task_name",
    "TASK_FEATURE_LENGTHS": "task_feature_lengths",
    "TRAIN_STEPS": "train_steps",
    "BATCH_SIZE": "batch_size",
    "MODEL_DIR": "model_dir",
}
# The network is not a macro: the runner reads gin's `configs.get` bindings, as T5X's
# gin files apply them (MODEL_SIZE, IMAGE_SIZE, DROPOUT_RATE, sizes/*.gin overrides);
# see palimix.runner.model.


def palimix_gin_dir() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")


def add_module_flag(parser) -> None:
    """`--module`, the same for every command that reads registered tasks."""
    parser.add_argument("--module", action="append", default=[], metavar="MODULE",
                        help="import this Python module first, e.g. one that registers your tasks: a "
                             "dotted name (found in the current directory or the installed packages) "
                             "or a .py file; repeatable")


def import_modules(modules: Sequence[str]) -> None:
    """Imports the `--module` modules, in order: each is a .py file (`mytasks.py`,
    `dir/mytasks.py`) or a dotted module name (`mytasks`, `pkg.tasks`) looked up in the
    current directory first, as `python -m` does. A module that does not exist is a
    UsageError; an error raised while the module runs (an ImportError of one of its own
    imports included) propagates unchanged, with its traceback."""
    for module in modules:
        if module.endswith(".py") or os.sep in module or "/" in module:
            _import_file(module)
        else:
            _import_name(module)


def _import_name(module: str) -> None:
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    importlib.invalidate_caches()  # A module written since the last import (tests) is found.
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        # Only the module asked for (or a package above it) missing is the user's typo;
        # a module that *it* imports and that is missing is an error inside it.
        if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
            raise
        raise UsageError(f"--module {module}: no module named {e.name!r} in the current directory "
                         f"({os.getcwd()}) or the installed packages.") from None


def _import_file(path: str) -> None:
    if not path.endswith(".py"):
        raise UsageError(f"--module {path}: a path must name a .py file (or give a dotted module name).")
    if not os.path.isfile(path):
        raise UsageError(f"--module {path}: no such file (in {os.getcwd()}).")
    path = os.path.abspath(path)
    name = os.path.splitext(os.path.basename(path))[0]
    if name in sys.modules:
        loaded_from = getattr(sys.modules[name], "__file__", None)  # None: a built-in module
        if loaded_from and os.path.abspath(loaded_from) == path:
            return  # Imported already (its tasks are registered).
        raise UsageError(f"--module {path}: a module named {name!r} is already loaded "
                         f"(from {loaded_from or 'the interpreter'}); rename the file.")
    # As `python mytasks.py` would: the file's folder is importable, for its helper modules.
    folder = os.path.dirname(path)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, path)
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[name] = loaded
    try:
        spec.loader.exec_module(loaded)
    except BaseException:
        del sys.modules[name]  # As importlib does: no half-run module stays importable.
        raise


def parse_gin(gin_files: Sequence[str] = (), gin_bindings: Sequence[str] = ()) -> None:
    """Parses gin files and bindings; a bad file or binding is one clear error."""
    import gin

    if not gin_files and not gin_bindings:
        return
    for path in (os.getcwd(), palimix_gin_dir()):
        gin.add_config_file_search_path(path)
    try:
        gin.parse_config_files_and_bindings(list(gin_files), list(gin_bindings), finalize_config=False,
                                            skip_unknown=False)
    except IOError as e:
        raise UsageError(f"gin: {e} (searched the current directory and {palimix_gin_dir()}).") from None
    except ImportError as e:
        hint = " (runs/*.gin configure T5X's binaries; the runner reads models/ and sizes/ files)" \
            if "t5x" in str(e) else ""
        raise UsageError(f"gin: an import in a gin file failed: {e}{hint}.") from None
    except (ValueError, SyntaxError, KeyError, TypeError) as e:
        message = str(e).strip().splitlines()
        raise UsageError(f"gin: {' '.join(m.strip() for m in message[:3])}") from None


def gin_macro(name: str):
    """The value of a gin macro, or None when it is not bound. A macro bound to a call
    (`MIXTURE_OR_TASK_NAME = @davinci.register()`, as T5X's binaries evaluate it) is
    called: a mixture that a gin file defines is registered here."""
    import gin

    try:
        value = gin.query_parameter(f"%{name}")
    except (ValueError, KeyError):
        return None
    if isinstance(value, gin.config.ConfigurableReference) and value.evaluate:
        value = value.scoped_configurable_fn()
    return value


def parse_lengths(text: str | None) -> dict[str, int] | None:
    """`inputs=32,targets=16,image=64` -> dict."""
    if not text:
        return None
    lengths = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not value.strip().isdigit():
            raise UsageError(f"--lengths wants feature=length pairs like inputs=32,targets=16,image=64; "
                             f"got {text!r}.")
        lengths[key.strip()] = int(value)
    return lengths


def add_common_flags(parser) -> None:
    add_module_flag(parser)
    parser.add_argument("--gin_file", action="append", default=[], metavar="FILE",
                        help="gin file (current dir, then `palimix gin-path`); repeatable")
    parser.add_argument("--gin", action="append", default=[], metavar="BINDING", dest="gin_bindings",
                        help="gin binding, e.g. \"TrainConfig.warmup_steps = 50\"; repeatable")


def enable_compilation_cache() -> str | None:
    """Turns on JAX's persistent compilation cache, so a second `palimix train`/`eval`/
    `demo` on the same model skips XLA compilation (tens of seconds on a laptop CPU).

    Location: $PALIMIX_COMPILATION_CACHE (`off` disables it), else
    $JAX_COMPILATION_CACHE_DIR when set, else ~/.cache/palimix/jax.
    """
    import jax

    where = os.environ.get("PALIMIX_COMPILATION_CACHE") or os.environ.get("JAX_COMPILATION_CACHE_DIR") \
        or os.path.join(os.path.expanduser("~"), ".cache", "palimix", "jax")
    if where.lower() in ("off", "0", "none", ""):
        return None
    os.makedirs(where, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return where
