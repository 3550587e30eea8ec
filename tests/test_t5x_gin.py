"""palimix's gin files: the t5x-free half parses without T5X; every size builds a config."""

import os
import subprocess
import sys

import pytest

from palimix.commands.gin_path import gin_dir

SIZES = ["tiny", "small", "pali_3b", "pali_15b", "pali_17b"]


def test_gin_path_command_prints_the_folder_with_every_file():
    out = subprocess.run([sys.executable, "-m", "palimix.cli", "gin-path", "--list"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[0] == gin_dir() and os.path.isdir(lines[0])
    expected = {"models/pali.gin", "models/pali_network.gin"} | {f"runs/{r}.gin" for r in
                                                                   ("pretrain", "finetune", "eval", "infer")}
    expected |= {f"sizes/{s}.gin" for s in SIZES}
    assert expected <= set(lines[1:])


# Runs in a subprocess with `import t5x` made impossible: what the embedded runner does
# on a machine without T5X.
_WITHOUT_T5X = """
import sys
sys.modules["t5x"] = None  # any `import t5x...` now raises ImportError
import gin
from palimix.commands.gin_path import gin_dir
gin.add_config_file_search_path(gin_dir())
gin.parse_config_files_and_bindings(["models/pali_network.gin", "sizes/{size}.gin"], [])
network = gin.query_parameter("%NETWORK").scoped_configurable_fn()
vocabulary = gin.query_parameter("%VOCABULARY").scoped_configurable_fn()
cfg = network.config
print(type(network).__name__, cfg.vit.image_size, cfg.text.emb_dim, cfg.dtype, vocabulary.vocab_size <= cfg.text.vocab_size)
"""


@pytest.mark.parametrize("size", ["tiny", "pali_17b"])
def test_network_and_size_files_parse_without_t5x(size):
    out = subprocess.run([sys.executable, "-c", _WITHOUT_T5X.format(size=size)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    name, image_size, emb_dim, dtype, vocab_fits = out.stdout.split()[-5:]
    assert name == "Pali" and vocab_fits == "True"
    if size == "tiny":
        assert (image_size, emb_dim, dtype) == ("64", "64", "float32")
    else:
        assert (image_size, emb_dim, dtype) == ("224", "4096", "bfloat16")


def test_t5x_free_files_import_nothing_from_t5x():
    for relative in ["models/pali_network.gin"] + [f"sizes/{s}.gin" for s in SIZES]:
        with open(os.path.join(gin_dir(), relative), encoding="utf-8") as f:
            code = [line for line in f if not line.lstrip().startswith("#")]
        assert not any("t5x" in line for line in code), relative


def test_t5x_files_parse_and_build_the_model_for_every_size():
    pytest.importorskip("t5x", reason="T5X is not installed (pip install '.[t5x]')")
    import gin

    from palimix.models import t5x_model

    for size in SIZES:
        gin.clear_config(clear_constants=False)
        gin.add_config_file_search_path(gin_dir())
        gin.parse_config_files_and_bindings(["models/pali.gin", f"sizes/{size}.gin"], [])
        model = gin.query_parameter("%MODEL").scoped_configurable_fn()
        assert isinstance(model, t5x_model.PaliModel)
        assert model.FEATURE_CONVERTER_CLS.__name__ == "PaliFeatureConverter"
        assert model.module.config.vit.image_size == gin.query_parameter("%IMAGE_SIZE")
    gin.clear_config(clear_constants=False)
