"""The decoder-only backbone through the embedded runner, as a user runs it:
`palimix train --model tiny_decoder` (or its sizes/ gin file), then eval and infer on
the same tasks the encoder-decoder trains on (no change to tasks or mixtures)."""

import json
import os

import pytest

from palimix import cli

from tests.runner_env import clean_gin, runner_environment  # noqa: F401  (autouse fixtures)

LENGTHS = "inputs=8,targets=8,image=32"


def _train(model_dir, *extra):
    return cli.main(["train", "runner_fixture_colors", "--model_dir", str(model_dir), "--batch_size", "4",
                     "--lengths", LENGTHS, "--warmup_steps", "2", "--log_every", "1", "--no_progress",
                     "--steps", "3", *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("decoder_run")
    assert _train(model_dir, "--model", "tiny_decoder") == 0
    return model_dir


def test_train_records_the_decoder_config(trained):
    model = json.load(open(trained / "run.json"))["model"]
    assert model["name"] == "tiny_decoder" and model["config"]["family"] == "paligemma"
    assert model["config"]["vit"]["image_size"] == 32


def test_the_sizes_gin_file_picks_the_decoder(tmp_path):
    assert _train(tmp_path / "gin", "--gin_file", "sizes/tiny_decoder.gin", "--gin", "IMAGE_SIZE = 32",
                  "--gin", "DROPOUT_RATE = 0.1") == 0
    model = json.load(open(tmp_path / "gin" / "run.json"))["model"]
    assert model["name"] == "tiny_decoder" and model["config"]["llm"]["dropout_rate"] == 0.1


def test_eval_and_infer_rebuild_the_decoder(trained, tmp_path, capsys):
    from tests.runner_fixture_tasks import fixture_dir

    output = tmp_path / "metrics.json"
    assert cli.main(["eval", "--model_dir", str(trained), "--batch_size", "8", "--output", str(output)]) == 0
    metrics = json.load(open(output))
    assert metrics["step"] == 3 and {t["language"] for t in metrics["tasks"].values()} == {"en", "de"}
    capsys.readouterr()
    image = os.path.join(fixture_dir(), "validation_000.png")
    assert cli.main(["infer", "--model_dir", str(trained), "--image", image, "--prompt", "colour de"]) == 0
    assert capsys.readouterr().out.count("\n") == 1  # One prediction (a 3-step model may predict "").
