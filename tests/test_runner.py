"""The embedded runner in-process: schedules, input position checkpoints, the NaN
guard, eval and infer outputs, and the errors users see. Uses the small real task of
tests/runner_fixture_tasks.py and the real tiny PaLI model."""

import json
import os

import numpy as np
import pytest

from palimix import cli
from palimix.errors import UnknownLanguageError, UnknownNameError, UsageError

LENGTHS = "inputs=8,targets=8,image=32"


def _converter():
    """The tiny PaLI's feature converter (what the runner passes for that network)."""
    from palimix.models import configs, networks

    return networks.feature_converter(configs.get("tiny"))


@pytest.fixture(scope="module", autouse=True)
def _environment(tmp_path_factory):
    # Once per process: the fixture module writes its images on first import, there.
    os.environ.setdefault("PALIMIX_RUNNER_FIXTURE_DIR", str(tmp_path_factory.mktemp("fixture_images")))
    os.environ["PALIMIX_COMPILATION_CACHE"] = str(tmp_path_factory.mktemp("jax_cache"))
    import tests.runner_fixture_tasks  # noqa: F401  (registers runner_fixture_colors)


def _train_args(model_dir, *extra):
    return ["train", "runner_fixture_colors", "--model_dir", str(model_dir), "--batch_size", "4",
            "--lengths", LENGTHS, "--warmup_steps", "2", "--log_every", "1", "--no_progress", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("run")
    assert cli.main(_train_args(model_dir, "--steps", "4", "--checkpoint_every", "2")) == 0
    return model_dir


# --- schedules -------------------------------------------------------------------------


def test_schedules_warm_up_then_decay():
    from palimix.runner import schedules

    rsqrt = schedules.learning_rate_schedule("rsqrt", base_learning_rate=0.1, warmup_steps=10)
    assert float(rsqrt(0)) == 0.0
    assert float(rsqrt(10)) == pytest.approx(0.1)
    assert float(rsqrt(40)) == pytest.approx(0.1 * np.sqrt(10 / 40))
    cosine = schedules.learning_rate_schedule("cosine", base_learning_rate=0.1, warmup_steps=10,
                                              total_steps=110)
    assert float(cosine(60)) == pytest.approx(0.05, rel=1e-3)
    assert float(cosine(110)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(UsageError, match="cosine"):
        schedules.learning_rate_schedule("cosin")


# --- the input position ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["tf_iterator", "replay"])
def test_input_position_restores_exactly(tmp_path, mode):
    from palimix.runner.data import TrainBatches

    def batches():
        return TrainBatches("runner_fixture_colors", {"inputs": 8, "targets": 8, "image": 32}, 4,
                            converter=_converter(), seed=3)

    first = batches()
    first._tf_checkpointable = mode == "tf_iterator"  # replay: what a py_function pipeline gets
    for _ in range(3):
        next(first)
    first.save_state(str(tmp_path))
    assert json.load(open(tmp_path / "position.json"))["mode"] == mode
    expected = [next(first) for _ in range(3)]
    second = batches()
    second.restore_state(str(tmp_path))
    for want in expected:
        got = next(second)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


# --- train: outputs, NaN guard, errors -------------------------------------------------


def test_train_writes_checkpoints_summaries_and_metrics(trained):
    from palimix.runner.summaries import read_metrics

    assert sorted(os.listdir(trained / "checkpoints"), key=int) == ["2", "4"]
    records = read_metrics(str(trained))
    assert sorted(records) == [1, 2, 3, 4]
    assert {"loss", "learning_rate", "steps_per_s", "examples_per_s"} <= set(records[4])
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(trained / "train"))
    assert json.load(open(trained / "run.json"))["mixture_or_task_name"] == "runner_fixture_colors"


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    model_dir = tmp_path / "nan"
    assert cli.main(_train_args(model_dir, "--steps", "2", "--checkpoint_every", "2")) == 0
    # An absurd learning rate blows the parameters up: the loss turns Inf/NaN.
    code = cli.main(_train_args(model_dir, "--steps", "10", "--checkpoint_every", "2", "--learning_rate", "1e30"))
    err = capsys.readouterr().err
    assert code == 2
    assert "the loss became" in err and "training stopped" in err
    assert "last good checkpoint (step" in err
    steps = sorted(int(s) for s in os.listdir(model_dir / "checkpoints"))
    import re

    stopped_at = int(re.search(r"at step (\d+); training stopped", err).group(1))
    assert max(steps) < stopped_at


def test_a_relative_model_dir_works(tmp_path, monkeypatch):
    """The demo's default --model_dir is relative (palimix_runs/demo); orbax needs an
    absolute path to write arrays."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(_train_args("runs/relative", "--steps", "2", "--checkpoint_every", "2")) == 0
    assert os.listdir(tmp_path / "runs" / "relative" / "checkpoints") == ["2"]


def test_unknown_task_name_suggests_close_matches(tmp_path):
    with pytest.raises(UnknownNameError, match="Did you mean: runner_fixture_colors"):
        _raise(["train", "runner_fixture_color", "--model_dir", str(tmp_path), "--lengths", LENGTHS])


def _raise(argv):
    """Runs a command's `run` directly so the PalimixError itself is visible."""
    parser = cli.build_parser()
    args = parser.parse_args(argv)
    return args._run(args)


def test_bad_gin_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.gin"
    bad.write_text("TrainConfig.no_such_field = 3\n")
    with pytest.raises(UsageError, match="gin"):
        _raise(_train_args(tmp_path / "m", "--gin_file", str(bad)))
    with pytest.raises(UsageError, match="gin"):
        _raise(_train_args(tmp_path / "m", "--gin_file", "missing_file.gin"))


def test_gin_binds_train_config(tmp_path):
    from palimix.commands import train as train_command

    args = cli.build_parser().parse_args(_train_args(tmp_path, "--gin", "TrainConfig.warmup_steps = 7",
                                                     "--gin", "MIXTURE_OR_TASK_NAME = 'x'"))
    args.mixture_or_task = None
    config = train_command.build_config(args)
    assert config.warmup_steps == 2  # the flag wins over gin
    assert config.mixture_or_task_name == "x"  # t5x's macro is read
    import gin

    gin.clear_config()


def test_the_network_comes_from_the_sizes_gin_file(tmp_path):
    """The same sizes/*.gin file (or MODEL_SIZE / IMAGE_SIZE bindings) as a T5X run picks
    the model and its image size."""
    import gin

    from palimix.commands import train as train_command
    from palimix.runner.train import resolve_model

    def resolved(*extra):
        args = cli.build_parser().parse_args(["train", "palimix_demo", "--model_dir", str(tmp_path), *extra])
        try:
            return resolve_model(train_command.build_config(args))
        finally:
            gin.clear_config()

    config, tiny = resolved("--gin_file", "sizes/tiny.gin")
    assert tiny.name == "tiny" and config.task_feature_lengths["image"] == 64 == tiny.config.vit.image_size
    config, small = resolved("--gin", "MODEL_SIZE = 'small'", "--gin", "IMAGE_SIZE = 32")
    assert small.name == "small" and small.config.vit.image_size == 32
    assert config.task_feature_lengths == {"inputs": 64, "targets": 32, "image": 32}
    assert resolved("--gin", "MODEL_SIZE = 'small'", "--model", "tiny")[1].name == "tiny"  # the flag wins
    # No gin: tiny, at the image length the tasks are read with.
    config, default = resolved("--lengths", "inputs=8,targets=8,image=32")
    assert default.name == "tiny" and default.overrides["image_size"] == 32
    with pytest.raises(UsageError, match="image_size is 32"):
        resolved("--gin", "IMAGE_SIZE = 32", "--lengths", "inputs=8,targets=8,image=64")


def test_resuming_with_other_settings_is_refused(trained):
    with pytest.raises(UsageError, match="other settings"):
        _raise(_train_args(trained, "--steps", "5", "--seed", "9"))


# --- eval and infer --------------------------------------------------------------------


def test_eval_writes_per_language_metrics_and_prints_macro_table(trained, tmp_path, capsys):
    output = tmp_path / "metrics.json"
    assert cli.main(["eval", "--model_dir", str(trained), "--batch_size", "8", "--output", str(output)]) == 0
    out = capsys.readouterr().out
    assert "macro average" in out and "classification" in out
    metrics = json.load(open(output))
    assert metrics["step"] == 4 and metrics["languages"] == 2
    assert {t["language"] for t in metrics["tasks"].values()} == {"en", "de"}
    for task in metrics["tasks"].values():
        assert 0.0 <= task["metrics"]["accuracy"] <= 100.0 and task["num_examples"] == 8
    assert set(metrics["macro"]["classification"]) == {"accuracy"}
    assert metrics["examples"]["runner_fixture_colors_de"][0]["target"] == "rot"


def test_infer_one_image_and_a_jsonl_file(trained, tmp_path, capsys):
    from tests.runner_fixture_tasks import fixture_dir

    image = os.path.join(fixture_dir(), "validation_000.png")
    assert cli.main(["infer", "--model_dir", str(trained), "--image", image, "--prompt", "colour de"]) == 0
    # One line: the prediction (a 4-step model may well predict the empty string).
    assert capsys.readouterr().out.count("\n") == 1
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps({"image": image, "prompt": "colour en", "id": "a"}) + "\n"
                        + json.dumps({"image": "missing.png", "prompt": "colour de", "id": "b"}) + "\n")
    output = tmp_path / "predictions.jsonl"
    assert cli.main(["infer", "--model_dir", str(trained), "--jsonl", str(requests), "--output", str(output)]) == 0
    rows = [json.loads(line) for line in open(output)]
    assert [r["id"] for r in rows] == ["a", "b"]
    assert isinstance(rows[0]["prediction"], str) and "error" not in rows[0]
    assert rows[1]["prediction"] is None and "does not exist" in rows[1]["error"]


def test_infer_errors(trained, tmp_path):
    with pytest.raises(UnknownLanguageError):
        _raise(["infer", "--model_dir", str(trained), "--prompt", "caption xx-notalanguage"])
    with pytest.raises(UsageError, match="does not exist"):
        _raise(["infer", "--model_dir", str(trained), "--image", str(tmp_path / "no.png"), "--prompt", "colour en"])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    with pytest.raises(UsageError, match="broken.png"):
        _raise(["infer", "--model_dir", str(trained), "--image", str(broken), "--prompt", "colour en"])


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    from palimix.runner.checkpoints import MissingCheckpointError

    with pytest.raises(MissingCheckpointError, match="does not exist"):
        _raise(["eval", "--model_dir", str(tmp_path / "nowhere")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingCheckpointError, match="no palimix checkpoints"):
        _raise(["infer", "--model_dir", str(tmp_path / "empty"), "--prompt", "colour en"])
