"""`--module` means the same for every command that takes it: a .py file or a dotted
name, found from the current directory; a missing module is one clear error; an error
inside the user's module is reported as that error.

The commands run as the installed `palimix` script from a temporary folder, as a user
runs them (`python -m palimix.cli` would put the folder on sys.path by itself and hide
a command that forgets to).
"""

import os
import subprocess
import sys
import textwrap

import pytest

from palimix import cli

PALIMIX = os.path.join(os.path.dirname(sys.executable), "palimix")

MYTASKS = textwrap.dedent('''
    """Registers one small language-only task with palimix's features, as a user's module does."""
    import seqio
    import tensorflow as tf

    from palimix import features


    def _examples(split, shuffle_files, seed=None):
        return tf.data.Dataset.from_tensor_slices({
            "inputs": ["one", "two", "three"], "targets": ["1", "2", "3"],
            "image": tf.zeros([3, 16, 16, 3]), "has_image": tf.zeros([3, 1], tf.int32)})


    seqio.TaskRegistry.add(
        "mytasks_echo",
        source=seqio.FunctionDataSource(_examples, splits=["train"], num_input_examples={"train": 3}),
        preprocessors=[seqio.preprocessors.tokenize],
        output_features=features.output_features(16, seqio.ByteVocabulary()),
    )
''')


def _commands_with_module_flag() -> list[str]:
    """Every command whose parser has --module (so a new one is tested too)."""
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    return sorted(name for name, sub in subparsers.choices.items()
                  if any("--module" in action.option_strings for action in sub._actions))


def _palimix(folder, *args):
    return subprocess.run([PALIMIX, *args], cwd=folder, capture_output=True, text=True, timeout=600)


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "mytasks.py").write_text(MYTASKS)
    return tmp_path


def test_the_commands_that_read_tasks_take_module():
    assert {"list", "show", "stats", "train", "eval", "infer"} <= set(_commands_with_module_flag())


@pytest.mark.parametrize("spelling", ["mytasks.py", "mytasks"])
def test_stats_imports_a_module_in_the_current_folder_by_file_or_name(folder, spelling):
    out = _palimix(folder, "stats", "mytasks_echo", "--module", spelling, "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    assert '"examples": 3' in out.stdout


def test_list_imports_it_by_name(folder):
    out = _palimix(folder, "list", "--tasks", "--module", "mytasks")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "mytasks_echo" in out.stdout


def test_show_imports_it_by_file(folder):
    out = _palimix(folder, "show", "mytasks_echo", "-n", "2", "--module", "mytasks.py")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("prompt: ") == 2


@pytest.mark.parametrize("command", _commands_with_module_flag())
def test_a_missing_module_is_one_clear_error(folder, command):
    positional = {"show": ["mytasks_echo"], "stats": ["mytasks_echo"], "train-tokenizer": ["mytasks_echo"],
                  "convert-checkpoint": [str(folder / "pt.npz"), str(folder / "out")]}.get(command, [])
    required = {"eval": ["--model_dir", str(folder)], "infer": ["--model_dir", str(folder), "--prompt", "x"],
                "train-tokenizer": ["--out", str(folder / "tokenizer")], "convert-checkpoint": ["--format", "paligemma"]}
    out = _palimix(folder, command, *positional, *required.get(command, []), "--module", "nosuchmodule")
    assert out.returncode == 2, out.stderr[-3000:]
    assert f"palimix {command}: error: --module nosuchmodule: no module named 'nosuchmodule'" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_missing_file_is_one_clear_error(folder):
    out = _palimix(folder, "list", "--module", "nosuchfile.py")
    assert out.returncode == 2
    assert "--module nosuchfile.py: no such file" in out.stderr


def test_an_import_error_inside_the_module_is_reported_as_itself(folder):
    (folder / "broken.py").write_text("import mytasks  # fine\nimport a_dependency_that_is_not_installed\n")
    for spelling in ("broken", "broken.py"):
        out = _palimix(folder, "list", "--module", spelling)
        assert out.returncode == 1
        assert "ModuleNotFoundError: No module named 'a_dependency_that_is_not_installed'" in out.stderr
        assert 'broken.py", line 2' in out.stderr  # The traceback points into the user's file.
        assert "--module" not in out.stderr
