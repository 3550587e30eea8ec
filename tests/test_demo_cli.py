"""`palimix demo --json`, shortened (a few steps, one kind evaluated): the output schema,
the report and the TensorBoard logs, and no library noise on stderr. The full demo is
the README's main command."""

import json
import os
import subprocess
import sys

import pytest

from tests.library_noise import noise_lines

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_short_demo_prints_the_json_summary_and_writes_report_and_logs(tmp_path):
    env = dict(os.environ, PALIMIX_COMPILATION_CACHE=str(tmp_path / "jax_cache"))
    model_dir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "palimix.cli", "demo", "--model_dir", str(model_dir), "--steps", "3",
         "--batch_size", "8", "--eval_examples", "24", "--kinds", "translation,classification,text_to_image", "--json",
         "--no_progress"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert noise_lines(result.stderr) == []  # Quiet by default (tests/test_cli_quiet.py).
    lines = result.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert set(summary) == {"kinds", "languages", "seconds"}
    assert set(summary["kinds"]) == {"translation", "classification", "text_to_image"}
    for kind, row in summary["kinds"].items():
        assert set(row) == {"metric", "baseline", "model"}
        assert isinstance(row["baseline"], float) and isinstance(row["model"], float)
    assert summary["kinds"]["classification"]["metric"] == "accuracy"
    assert summary["kinds"]["translation"]["metric"] == "bleu"
    assert summary["kinds"]["text_to_image"]["metric"] == "faithfulness"
    assert summary["languages"] >= 20 and summary["seconds"] > 0
    assert "baseline" in result.stdout and "model" in result.stdout  # the table
    report = (model_dir / "report.html").read_text(encoding="utf-8")
    assert "<img src='data:image/png;base64," in report  # classification images
    assert "translate" in report
    # text_to_image rows: the real image, then the baseline's and the model's codes drawn.
    assert "generate en " in report
    t2i_row = "<td>palimix_demo_text_to_image_mul</td><td><img src='data:image/png;base64,"
    assert report.count(t2i_row) >= 3
    first_row = report[report.index(t2i_row):].split("</tr>")[0]
    assert first_row.count("<img src='data:image/png;base64,") == 3
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(model_dir / "eval"))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(model_dir / "train"))


def test_demo_refuses_an_unknown_kind(tmp_path):
    result = subprocess.run([sys.executable, "-m", "palimix.cli", "demo", "--model_dir", str(tmp_path / "d"),
                             "--steps", "0"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "--steps must be positive" in result.stderr


@pytest.mark.slow
def test_short_decoder_demo_trains_the_decoder_only_model_and_scores_detection(tmp_path):
    """`palimix demo --model tiny_decoder`, a smoke run: the decoder-only network trains on
    the same mixture (run.json records it) and detection is scored with its baseline."""
    env = dict(os.environ, PALIMIX_COMPILATION_CACHE=str(tmp_path / "jax_cache"))
    model_dir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "palimix.cli", "demo", "--model", "tiny_decoder", "--model_dir", str(model_dir),
         "--steps", "2", "--batch_size", "4", "--eval_examples", "8", "--kinds", "detection,vqa", "--json",
         "--no_progress"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(summary["kinds"]) == {"detection", "vqa"}
    assert summary["kinds"]["detection"]["metric"] == "detection_f1"
    run = json.loads((model_dir / "run.json").read_text(encoding="utf-8"))
    assert run["model"]["name"] == "tiny_decoder" and run["model"]["config"]["family"] == "paligemma"
    details = json.loads((model_dir / "demo.json").read_text(encoding="utf-8"))
    assert details["model"] == "tiny_decoder" and details["step"] == 2
    assert "tiny_decoder after 2 steps" in (model_dir / "report.html").read_text(encoding="utf-8")


def test_demo_refuses_a_model_without_a_recipe(tmp_path):
    result = subprocess.run([sys.executable, "-m", "palimix.cli", "demo", "--model", "paligemma_3b",
                             "--model_dir", str(tmp_path / "d")], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and "tiny_decoder" in result.stderr
