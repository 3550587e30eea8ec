"""Keeps the libraries' start-up chatter off a palimix user's terminal.

TensorFlow, XLA and SentencePiece write info lines from C++ straight to file
descriptor 2 (oneDNN notes, "All log messages before absl::InitializeLog()", CUDA
probing on machines without a GPU, SentencePiece's "precompiled_charsmap is empty"),
and orbax and seqio log warnings about choices palimix makes on purpose. None of them
asks the user to do anything. This module removes exactly those lines, listed in the
tables below, and nothing else: every other line, warning or error still shows.

`PALIMIX_VERBOSE=1` (the CLI's `--verbose` sets it) turns all of this off.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import threading
from typing import Iterator, Sequence

VERBOSE_ENV = "PALIMIX_VERBOSE"

# Environment for native code, read when TensorFlow and XLA load (so set before they
# are imported); a value the user set already wins. Level 1 drops C++ INFO lines only.
NATIVE_LOG_ENV = {"TF_CPP_MIN_LOG_LEVEL": "1"}

# Lines that `import tensorflow` and TF's device probing print before (or regardless
# of) TF_CPP_MIN_LOG_LEVEL. Dropped only while `quiet_libraries` imports TF.
TENSORFLOW_START_UP_LINES = tuple(re.compile(p) for p in (
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",
    r"\] oneDNN custom operations are on\.",
    r"\] This TensorFlow binary is optimized to use available CPU instructions",
    r"^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.$",
    r"\] Could not find cuda drivers on your machine, GPU will not be used\.",
    r"\] failed call to cuInit: ",
    r"\] Unable to register cu(DNN|FFT|BLAS) factory: ",
    r"\] TF-TRT Warning: Could not find TensorRT",
))

# What SentencePiece prints each time a model with identity normalization loads: once
# per tf.data pipeline that tokenizes (its kernel loads the model when the pipeline's
# iterator is created), so anywhere in a run; `filter_native_stderr` drops it.
SENTENCEPIECE_LOAD_LINES = (
    re.compile(r"^normalizer\.cc\(\d+\) LOG\(INFO\) precompiled_charsmap is empty\. use identity normalization\.$"),
)

# (file that logs, start of the message) of Python log records that describe a choice
# palimix makes on purpose.
LOG_RECORDS = (
    # eval and infer open their checkpoints read only.
    ("orbax/checkpoint/checkpoint_manager.py", "Given directory is read only"),
    # Evaluation pads to fixed lengths: one compiled shape for every batch.
    ("seqio/evaluation.py", "Given sequence lengths are longer than necessary"),
    # palimix writes evaluation metrics itself.
    ("seqio/evaluation.py", "'logger_cls' is empty"),
    # gin tries each search path in turn (the current folder, then palimix's gin folder)
    # and logs every miss; a file found on none is an error palimix reports itself.
    ("gin/resource_reader.py", "Path not found"),
)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").lower() not in ("", "0", "false", "no")


def quiet_libraries() -> None:
    """For a command that uses TensorFlow/JAX: sets NATIVE_LOG_ENV, imports TensorFlow
    with its start-up lines dropped, and filters LOG_RECORDS. Call it before anything
    imports TensorFlow or JAX. Does nothing when verbose()."""
    if verbose():
        return
    for name, value in NATIVE_LOG_ENV.items():
        os.environ.setdefault(name, value)
    with native_stderr_without(TENSORFLOW_START_UP_LINES):
        import tensorflow as tf

        tf.config.list_physical_devices()  # Probes CUDA now, inside this window.
    # absl's logger (orbax, seqio) and the root logger (gin logs with logging.error).
    for logger in (logging.getLogger("absl"), logging.getLogger()):
        logger.addFilter(_keep_log_record)


@contextlib.contextmanager
def native_stderr_without(lines: Sequence[re.Pattern]) -> Iterator[None]:
    """Inside the block, file descriptor 2 (where C++ libraries write) goes to a
    temporary file; on exit everything written there is written to stderr again except
    the lines matching `lines`. Keep the block short: what it holds shows only at its
    end. Does nothing when verbose() or when fd 2 is not open."""
    if verbose():
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:  # No stderr at all: nothing to filter.
        yield
        return
    sys.stderr.flush()
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace")
            kept = [line for line in text.splitlines(keepends=True)
                    if not any(pattern.search(line.rstrip("\n")) for pattern in lines)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


_filter_thread: threading.Thread | None = None


def filter_native_stderr(lines: Sequence[re.Pattern]) -> None:
    """For the rest of the process (the palimix program, not a library user): what
    native code writes to file descriptor 2 goes through a pipe that a thread copies
    to the real stderr line by line, leaving out the lines matching `lines`. For lines
    C++ writes at any time, from any thread (SentencePiece loads its model in every
    tf.data pipeline that tokenizes, when the pipeline's iterator is created).

    Python's own `sys.stderr` (palimix's lines, the progress bar, warnings, tracebacks)
    is re-opened on the real stderr and bypasses the pipe. At exit the pipe is drained
    and fd 2 restored. Once per process; nothing when verbose()."""
    global _filter_thread
    if verbose() or _filter_thread is not None:
        return
    sys.stderr.flush()
    real_stderr = os.dup(2)
    sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(real_stderr), "wb", buffering=0), encoding=sys.stderr.encoding,
                                  errors=sys.stderr.errors, line_buffering=True, write_through=True)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def copy_lines():
        with os.fdopen(read_end, "rb") as pipe, os.fdopen(real_stderr, "wb", buffering=0) as out:
            for line in pipe:
                if not any(p.search(line.decode("utf-8", "replace").rstrip("\n")) for p in lines):
                    out.write(line)

    def restore():
        sys.stderr.flush()
        os.dup2(real_stderr, 2)  # Closes the pipe's last write end: the thread reads to EOF.
        _filter_thread.join(timeout=5)

    _filter_thread = threading.Thread(target=copy_lines, name="palimix-stderr-filter", daemon=True)
    _filter_thread.start()
    atexit.register(restore)


def _keep_log_record(record: logging.LogRecord) -> bool:
    """A logging filter: False for the records LOG_RECORDS lists."""
    path = record.pathname.replace(os.sep, "/")
    message = str(record.msg)
    return not any(path.endswith(where) and message.startswith(start) for where, start in LOG_RECORDS)
