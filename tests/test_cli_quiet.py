"""Quiet by default: a command shows palimix's own lines and real warnings, not the
libraries' start-up and log chatter; --verbose (or PALIMIX_VERBOSE=1) shows it all."""

import logging
import os
import subprocess
import sys

import pytest

from palimix import quiet
from tests.library_noise import noise_lines

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _palimix(*args, **env):
    environ = {k: v for k, v in os.environ.items() if k not in (quiet.VERBOSE_ENV, "TF_CPP_MIN_LOG_LEVEL")}
    return subprocess.run([sys.executable, "-m", "palimix.cli", *args], cwd=REPO, env=dict(environ, **env),
                          capture_output=True, text=True, timeout=600)


def test_stats_of_the_demo_mixture_shows_no_library_noise():
    out = _palimix("stats", "palimix_demo")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "suggested TASK_FEATURE_LENGTHS" in out.stdout
    assert noise_lines(out.stderr) == []


def test_train_reading_gin_files_shows_no_library_noise(tmp_path):
    out = _palimix("train", "palimix_demo_ocr", "--steps", "1", "--model_dir", str(tmp_path / "run"),
                   "--gin_file", "sizes/tiny.gin", "--no_progress")
    assert out.returncode == 0, out.stderr[-3000:]
    assert noise_lines(out.stderr) == []


@pytest.mark.parametrize("how", ["--verbose", "PALIMIX_VERBOSE=1"])
def test_verbose_shows_the_library_lines(how):
    args, env = (["--verbose"], {}) if how == "--verbose" else ([], {quiet.VERBOSE_ENV: "1"})
    out = _palimix("stats", "palimix_demo_ocr", "--max_examples", "2", *args, **env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert any("precompiled_charsmap is empty" in line for line in noise_lines(out.stderr))


def test_native_lines_are_dropped_only_when_they_match(capfd, monkeypatch):
    monkeypatch.delenv(quiet.VERBOSE_ENV, raising=False)
    with quiet.native_stderr_without(quiet.SENTENCEPIECE_LOAD_LINES):
        os.write(2, b"normalizer.cc(51) LOG(INFO) precompiled_charsmap is empty. use identity normalization.\n")
        os.write(2, b"E0000 something really failed\n")
    assert capfd.readouterr().err == "E0000 something really failed\n"


def test_an_error_inside_the_block_still_shows_what_was_written(capfd, monkeypatch):
    monkeypatch.delenv(quiet.VERBOSE_ENV, raising=False)
    with pytest.raises(RuntimeError):
        with quiet.native_stderr_without(quiet.SENTENCEPIECE_LOAD_LINES):
            os.write(2, b"the last words\n")
            raise RuntimeError("boom")
    assert capfd.readouterr().err == "the last words\n"


def test_only_the_listed_log_records_are_dropped():
    def record(path, message):
        return logging.LogRecord("absl", logging.WARNING, path, 1, message, None, None)

    orbax = "/site-packages/orbax/checkpoint/checkpoint_manager.py"
    assert not quiet._keep_log_record(record(orbax, "Given directory is read only=%s"))
    assert quiet._keep_log_record(record(orbax, "Waiting for the previous save to finish"))
    assert quiet._keep_log_record(record("/home/me/mytasks.py", "Given directory is read only=%s"))
