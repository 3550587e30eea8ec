"""Evaluate a trained run on a task or mixture: per task, per language, macro averages.

Uses `seqio.Evaluator` with palimix's feature converter (what `t5x.eval` runs), so
postprocessing and metrics are exactly the tasks' own. Writes
`<output_dir>/metrics.json` (schema below), seqio's per-task inference logs, and
TensorBoard scalars/text under `<model_dir>/eval`.

metrics.json:
  {"model_dir", "step", "mixture_or_task_name", "split",
   "tasks": {task: {"language", "kind", "num_examples", "metrics": {name: value}}},
   "macro": {kind: {metric: mean over that kind's languages}},
   "languages": number of languages evaluated,
   "examples": {task: [{"input", "target", "prediction"}, ...]}  (a few per task)}
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import time
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

EXAMPLES_PER_TASK = 3


@dataclasses.dataclass
class EvalResult:
    step: int
    tasks: dict  # task -> {"language", "kind", "num_examples", "metrics"}
    macro: dict  # kind -> {metric: value}
    languages: int
    examples: dict  # task -> [{"input", "target", "prediction", "index"}]
    seconds: float
    output_path: str | None = None

    def to_json(self, **extra) -> dict:
        return {**extra, "step": self.step, "tasks": self.tasks, "macro": self.macro,
                "languages": self.languages, "examples": self.examples, "seconds": self.seconds}


def _first_example(dataset) -> dict:
    for example in dataset.take(1).as_numpy_iterator():
        return example
    return {}


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.dtype.kind in "SO":
        return " | ".join(_text(v) for v in value.tolist())
    return str(value)


def task_language_and_kind(task, dataset) -> tuple[str, str]:
    """From the examples' `language`/`kind` features, else the task name's suffix."""
    first = _first_example(dataset)
    language = _text(first["language"]) if "language" in first else task.name.rsplit("_", 1)[-1]
    kind = _text(first["kind"]) if "kind" in first else "unknown"
    return language, kind


def macro_averages(tasks: dict) -> dict:
    """kind -> metric -> mean over the tasks (languages) of that kind."""
    by_kind: dict[str, dict[str, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for info in tasks.values():
        for metric, value in info["metrics"].items():
            if isinstance(value, (int, float)) and np.isfinite(value):
                by_kind[info["kind"]][metric].append(float(value))
    return {kind: {m: float(np.mean(v)) for m, v in sorted(metrics.items())}
            for kind, metrics in sorted(by_kind.items())}


def primary_metric(kind: str, metrics: dict) -> str | None:
    """The kind's headline metric (palimix.metrics.primary_metric), else the first."""
    try:
        from palimix.metrics import primary_metric as primary

        name = primary(kind)
        if name in metrics:
            return name
    except (ImportError, KeyError, ValueError):
        pass
    return next(iter(sorted(metrics)), None)


def evaluate(run, mixture_or_task_name: str | None = None, *, split: str = "validation",
             batch_size: int = 32, num_examples: int | None = None, method: str = "greedy",
             num_beams: int = 4, output_dir: str | None = None, summaries=None) -> EvalResult:
    """Evaluates a `loading.LoadedRun`; returns (and writes) the per-language metrics."""
    import seqio

    from palimix.runner import data as data_lib
    from palimix.runner.predict import Predictor

    start = time.perf_counter()
    name = mixture_or_task_name or run.mixture_or_task_name
    provider = data_lib.get_mixture_or_task(name)
    data_lib.check_split(provider, split)
    lengths = run.task_feature_lengths
    output_dir = output_dir or os.path.join(run.model_dir, "eval", split)
    os.makedirs(output_dir, exist_ok=True)
    evaluator = seqio.Evaluator(
        mixture_or_task_name=name, feature_converter=data_lib.feature_converter(pack=False),
        eval_split=split, sequence_length=lengths, num_examples=num_examples,
        logger_cls=[seqio.JSONLogger], log_dir=output_dir, use_memory_cache=True)
    if not evaluator.eval_tasks:
        raise data_lib.UsageError(f"{name} has no task with metrics and a {split!r} split to evaluate.")
    predictor = Predictor(run, batch_size=batch_size, max_decode_length=lengths["targets"],
                          method=method, num_beams=num_beams)

    def predict_fn(dataset):
        indices, features = [], []
        for index, example in dataset.as_numpy_iterator():
            indices.append(int(index))
            features.append(example)
        tokens = predictor.predict_all(features)
        # Fixed-length rows, as t5x returns them: seqio stacks them and its vocabulary
        # decodes up to the first EOS.
        return [(i, [int(x) for x in t]) for i, t in zip(indices, tokens)]

    metrics_future, outputs = evaluator.evaluate(compute_metrics=True, step=run.step, predict_fn=predict_fn)
    all_metrics = metrics_future.result()
    evaluator.close()

    tasks, examples = {}, {}
    for task in evaluator.eval_tasks:
        dataset = evaluator.cached_task_datasets[task.name]
        language, kind = task_language_and_kind(task, dataset)
        metrics = {k: float(getattr(v, "value", v)) for k, v in all_metrics[task.name].items()
                   if np.isscalar(getattr(v, "value", v))}
        task_outputs = next(iter(outputs[task.name].values()))
        tasks[task.name] = {"language": language, "kind": kind, "num_examples": len(task_outputs),
                            "metrics": metrics}
        vocabulary = task.output_features["targets"].vocabulary
        rows = []
        for i, example in enumerate(dataset.take(EXAMPLES_PER_TASK).as_numpy_iterator()):
            rows.append({"index": i,
                         "input": _text(example.get("inputs_pretokenized", b"")),
                         "target": _text(example.get("targets_pretokenized", b"")),
                         "prediction": vocabulary.decode(list(task_outputs[i]))})
        examples[task.name] = rows
    macro = macro_averages(tasks)
    result = EvalResult(step=run.step, tasks=tasks, macro=macro,
                        languages=len({t["language"] for t in tasks.values()}), examples=examples,
                        seconds=time.perf_counter() - start)
    result.output_path = os.path.join(output_dir, "metrics.json")
    with open(result.output_path, "w", encoding="utf-8") as f:
        json.dump(result.to_json(model_dir=run.model_dir, mixture_or_task_name=name, split=split), f,
                  indent=1, ensure_ascii=False)
    if summaries is not None:
        write_summaries(summaries, result)
    return result


def write_summaries(summaries, result: EvalResult) -> None:
    """Per-language metrics, macro averages and example predictions to TensorBoard."""
    for task_name, info in result.tasks.items():
        summaries.scalars(result.step, {f"{info['kind']}/{info['language']}/{k}": v
                                        for k, v in info["metrics"].items()}, writer="eval")
    for kind, metrics in result.macro.items():
        summaries.scalars(result.step, {f"{kind}/macro/{k}": v for k, v in metrics.items()}, writer="eval")
    rows = [(task, r["input"], r["target"], r["prediction"])
            for task, task_rows in result.examples.items() for r in task_rows[:1]]
    summaries.text(result.step, "predictions", rows, ("task", "input", "target", "prediction"))
    summaries.flush()


def format_table(result: EvalResult, *, per_task: bool = True) -> str:
    """Per task (language) primary metrics, then each kind's macro average."""
    lines = []
    if per_task:
        header = ("task", "language", "kind", "n", "metric", "value")
        rows = []
        for task, info in sorted(result.tasks.items(), key=lambda kv: (kv[1]["kind"], kv[1]["language"])):
            metric = primary_metric(info["kind"], info["metrics"])
            value = "" if metric is None else f"{info['metrics'][metric]:.2f}"
            rows.append((task, info["language"], info["kind"], str(info["num_examples"]), metric or "-", value))
        lines += _columns(header, rows)
        lines.append("")
    header = ("kind", "languages", "metric", "macro average")
    rows = []
    for kind, metrics in result.macro.items():
        metric = primary_metric(kind, metrics)
        n = sum(1 for t in result.tasks.values() if t["kind"] == kind)
        rows.append((kind, str(n), metric or "-", "" if metric is None else f"{metrics[metric]:.2f}"))
    lines += _columns(header, rows)
    return "\n".join(lines)


def _columns(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda row: "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
    return [fmt(header), fmt(["-" * w for w in widths]), *[fmt(r) for r in rows]]
