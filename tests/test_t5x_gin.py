"""palimix's gin files: the t5x-free half parses without T5X; every size builds a config."""

import os
import subprocess
import sys

import pytest

from palimix.commands.gin_path import gin_dir

# Each size with the model files of its network family.
SIZES = ["tiny", "small", "pali_3b", "pali_15b", "pali_17b", "mblip_mt0_xl"]
DECODER_SIZES = ["tiny_decoder", "paligemma_3b"]
FAMILY_FILES = {"pali": ("models/pali.gin", "models/network.gin"),
                "paligemma": ("models/paligemma.gin", "models/network.gin")}
SIZES_OF = {"pali": SIZES, "paligemma": DECODER_SIZES}


def test_gin_path_command_prints_the_folder_with_every_file():
    out = subprocess.run([sys.executable, "-m", "palimix.cli", "gin-path", "--list"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[0] == gin_dir() and os.path.isdir(lines[0])
    expected = {f for files in FAMILY_FILES.values() for f in files} | {"models/t5x_optimizer.gin"}
    expected |= {f"runs/{r}.gin" for r in ("pretrain", "finetune", "eval", "infer")}
    expected |= {f"sizes/{s}.gin" for s in SIZES + DECODER_SIZES}
    assert expected <= set(lines[1:])


# Runs in a subprocess with `import t5x` made impossible: what the embedded runner does
# on a machine without T5X.
_WITHOUT_T5X = """
import sys
sys.modules["t5x"] = None  # any `import t5x...` now raises ImportError
import gin
from palimix.commands.gin_path import gin_dir
gin.add_config_file_search_path(gin_dir())
gin.parse_config_files_and_bindings(["{network_file}", "sizes/{size}.gin"], [])
network = gin.query_parameter("%NETWORK").scoped_configurable_fn()
vocabulary = gin.query_parameter("%VOCABULARY").scoped_configurable_fn()
cfg = network.config
print(type(network).__name__, cfg.vit.image_size, cfg.dtype, vocabulary.vocab_size <= cfg.vocab_size)
"""


@pytest.mark.parametrize("family,size,expected", [
    ("pali", "tiny", ("Pali", "64", "float32")),
    ("pali", "pali_17b", ("Pali", "224", "bfloat16")),
    ("paligemma", "tiny_decoder", ("PaliGemma", "64", "float32")),
    ("paligemma", "paligemma_3b", ("PaliGemma", "224", "bfloat16")),
])
def test_network_and_size_files_parse_without_t5x(family, size, expected):
    code = _WITHOUT_T5X.format(network_file=FAMILY_FILES[family][1], size=size)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    name, image_size, dtype, vocab_fits = out.stdout.split()[-4:]
    assert (name, image_size, dtype) == expected and vocab_fits == "True"


def test_t5x_free_files_import_nothing_from_t5x():
    network_files = [files[1] for files in FAMILY_FILES.values()] + ["models/mblip_lora.gin", "runs/davinci.gin"]
    for relative in network_files + [f"sizes/{s}.gin" for s in SIZES + DECODER_SIZES]:
        with open(os.path.join(gin_dir(), relative), encoding="utf-8") as f:
            code = [line for line in f if not line.lstrip().startswith("#")]
        assert not any("t5x" in line for line in code), relative


def test_t5x_files_parse_and_build_the_model_for_every_size():
    pytest.importorskip("t5x", reason="T5X is not installed (pip install '.[t5x]')")
    import gin

    from palimix.models import t5x_decoder_model, t5x_model

    model_classes = {"pali": (t5x_model.PaliModel, "PaliFeatureConverter"),
                     "paligemma": (t5x_decoder_model.PaliGemmaModel, "PaliDecoderFeatureConverter")}
    for family, (model_class, converter_name) in model_classes.items():
        for size in SIZES_OF[family]:
            gin.clear_config(clear_constants=False)
            gin.add_config_file_search_path(gin_dir())
            gin.parse_config_files_and_bindings([FAMILY_FILES[family][0], f"sizes/{size}.gin"], [])
            model = gin.query_parameter("%MODEL").scoped_configurable_fn()
            assert type(model) is model_class, (family, size)
            assert model.FEATURE_CONVERTER_CLS.__name__ == converter_name
            assert model.module.config.vit.image_size == gin.query_parameter("%IMAGE_SIZE")
    gin.clear_config(clear_constants=False)

