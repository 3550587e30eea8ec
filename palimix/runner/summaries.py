"""What a run writes for people and tools to read: TensorBoard event files and a
JSON-lines metrics log (`<model_dir>/metrics.jsonl`, one object per logged step),
which is what tests and scripts compare, and what survives without TensorBoard.
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Sequence


class Summaries:
    """TensorBoard writers `<model_dir>/{train,eval}` plus `metrics.jsonl`."""

    def __init__(self, model_dir: str):
        import tensorflow as tf

        self._tf = tf
        self.model_dir = model_dir
        os.makedirs(model_dir, exist_ok=True)
        self._writers = {}
        self._jsonl = open(os.path.join(model_dir, "metrics.jsonl"), "a", encoding="utf-8")

    def _writer(self, name: str):
        if name not in self._writers:
            self._writers[name] = self._tf.summary.create_file_writer(os.path.join(self.model_dir, name))
        return self._writers[name]

    def scalars(self, step: int, values: Mapping[str, float], *, writer: str = "train") -> None:
        with self._writer(writer).as_default(step=step):
            for name, value in values.items():
                self._tf.summary.scalar(name, float(value))
        record = {"step": int(step), "kind": writer, **{k: float(v) for k, v in values.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()

    def text(self, step: int, name: str, rows: Sequence[Sequence[str]], header: Sequence[str],
             *, writer: str = "eval") -> None:
        """A markdown table (TensorBoard's text plugin renders it)."""
        def cell(s):
            return str(s).replace("|", "\\|").replace("\n", " ")

        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
        with self._writer(writer).as_default(step=step):
            self._tf.summary.text(name, "\n".join(lines))

    def flush(self) -> None:
        for w in self._writers.values():
            w.flush()
        self._jsonl.flush()

    def close(self) -> None:
        for w in self._writers.values():
            w.close()
        self._jsonl.close()


def read_metrics(model_dir: str, kind: str = "train") -> dict[int, dict]:
    """The last record per step of `metrics.jsonl` (a resumed run rewrites the steps
    after its last checkpoint; the latest record is the one that counts)."""
    path = os.path.join(model_dir, "metrics.jsonl")
    records: dict[int, dict] = {}
    if not os.path.exists(path):
        return records
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # A line cut short by a killed process.
                continue
            if record.get("kind") == kind:
                records[record["step"]] = record
    return dict(sorted(records.items()))
