"""Reading JSON Lines annotation files (one JSON value per line), with errors that name
the file and line."""

from __future__ import annotations

import json

import tensorflow as tf

from palimix.sources import base


def json_lines(path: str):
    """(line number, parsed value) of each non-blank line of `path` (local or gs://)."""
    with tf.io.gfile.GFile(path, "r") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as e:
                    raise base.UsageError(f"{path}:{number}: not valid JSON ({e}).") from None
