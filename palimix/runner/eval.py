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


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.dtype.kind in "SO":
        return " | ".join(_text(v) for v in value.tolist())
    return str(value)


def task_language_and_kind(task, examples: Sequence[dict]) -> tuple[str, str]:
    """From the examples' `language`/`kind` features, else the task name's suffix."""
    first = examples[0] if examples else {}
    language = _text(first["language"]) if "language" in first else task.name.rsplit("_", 1)[-1]
    kind = _text(first["kind"]) if "kind" in first else "unknown"
    return language, kind


def macro_averages(tasks: dict) -> dict:
    """kind -> metric -> unweighted mean over languages (palimix.metrics.aggregate:
    tasks of one language are averaged first, each language counts once)."""
    from palimix.metrics.aggregate import summarize

    kinds = sorted({info["kind"] for info in tasks.values()})
    macro = {}
    for kind in kinds:
        of_kind = {name: info for name, info in tasks.items() if info["kind"] == kind}
        report = summarize({name: info["metrics"] for name, info in of_kind.items()},
                           {name: info["language"] for name, info in of_kind.items()})
        macro[kind] = dict(sorted(report.macro.items()))
    return macro


def primary_metric(kind: str, metrics: dict) -> str | None:
    """The kind's headline metric (palimix.kinds), else the first (a task of no
    palimix kind, or one with metrics of its own)."""
    from palimix import kinds

    entry = kinds.KINDS.get(kind)
    if entry is not None and entry.primary_metric in metrics:
        return entry.primary_metric
    return next(iter(sorted(metrics)), None)


class Evaluation:
    """A seqio.Evaluator over one mixture or task, its data cached once, that scores
    any number of predictors (the model, baselines) with the tasks' own metrics."""

    def __init__(self, name: str, task_feature_lengths, *, converter, split: str = "validation",
                 num_examples: int | None = None, log_dir: str | None = None,
                 num_shown: int = EXAMPLES_PER_TASK, prefer_languages: Sequence[str] = ()):
        """converter: the evaluated network's feature converter (`LoadedRun.feature_converter`).
        num_shown example predictions are kept per task: the first example of each
        language (those of `prefer_languages` first), then the task's first examples."""
        import seqio

        from palimix.runner import data as data_lib

        provider = data_lib.get_mixture_or_task(name)
        data_lib.check_split(provider, split)
        self.name, self.split = name, split
        self.num_shown, self.prefer_languages = num_shown, tuple(prefer_languages)
        self._raw: dict[str, list[dict]] = {}
        self.evaluator = seqio.Evaluator(
            mixture_or_task_name=name, feature_converter=converter,
            eval_split=split, sequence_length=dict(task_feature_lengths), num_examples=num_examples,
            logger_cls=[seqio.JSONLogger] if log_dir else (), log_dir=log_dir, use_memory_cache=True,
            async_compute_metrics=False)
        if not self.evaluator.eval_tasks:
            raise data_lib.UsageError(f"{name} has no task with metrics and a {split!r} split to evaluate.")
        # From the examples read whole (reading only the first of a cached dataset makes
        # tf.data discard the partial cache and warn).
        self.task_info = {task.name: task_language_and_kind(task, self.raw_examples(task.name))
                          for task in self.evaluator.eval_tasks}

    def raw_examples(self, task_name: str) -> list[dict]:
        """The task's evaluated examples (read from the evaluator's cache once: every
        predictor's scoring, the baselines and the demo report use them)."""
        if task_name not in self._raw:
            self._raw[task_name] = list(self.evaluator.cached_task_datasets[task_name].as_numpy_iterator())
        return self._raw[task_name]

    def score(self, predict_fn, *, step: int, score_fn=None) -> EvalResult:
        """Scores `predict_fn(task, [(index, model features), ...]) -> [token rows]`
        (fixed-length rows, as t5x returns them; decoding stops at the first EOS) with the
        tasks' prediction metrics, and `score_fn(task, indexed) -> [log-likelihood of each
        target]` (as t5x's `score_batch`) with their score metrics (perplexity; left out
        without a score_fn: baselines have no likelihoods)."""
        start = time.perf_counter()
        tasks, examples = {}, {}
        for task in self.evaluator.eval_tasks:
            indexed = list(self.evaluator.cached_model_datasets[task.name].as_numpy_iterator())
            indexed.sort(key=lambda pair: int(pair[0]))
            tokens = [[int(x) for x in row] for row in predict_fn(task, indexed)]
            scores = score_fn(task, indexed) if score_fn is not None and has_score_metrics(task) else None
            language, kind = self.task_info[task.name]
            vocabulary = task.output_features["targets"].vocabulary
            raw = self.raw_examples(task.name)
            example_languages = [_text(ex["language"]) if "language" in ex else language for ex in raw]
            tasks.update(_task_entries(task.name, language, kind, len(tokens), self._metrics(task, tokens, scores)))
            examples[task.name] = [
                {"index": i, "language": example_languages[i], "input": _text(raw[i].get("inputs_pretokenized", b"")),
                 "target": _text(raw[i].get("targets_pretokenized", b"")), "prediction": vocabulary.decode(tokens[i])}
                for i in shown_indices(example_languages, self.num_shown, self.prefer_languages)]
        return EvalResult(step=step, tasks=tasks, macro=macro_averages(tasks),
                          languages=len({t["language"] for t in tasks.values()}), examples=examples,
                          seconds=time.perf_counter() - start)

    def _metrics(self, task, tokens, scores=None) -> dict:
        """The task's metrics on decoded tokens (and, given `scores`, its score metrics),
        through seqio's own postprocessing (what `seqio.Evaluator.evaluate` computes;
        called directly so that one cached evaluator scores several predictors)."""
        from seqio import metrics as metrics_lib

        dataset = self.evaluator.cached_task_datasets[task.name]
        outputs = {metrics_lib.ModelOutputType.PREDICTION: np.array(tokens)}
        if scores is not None:
            outputs[metrics_lib.ModelOutputType.SCORE] = np.asarray(scores, np.float64)
        values = {}
        for metric_obj in task.metric_objs:
            if metric_obj.model_output_type not in outputs:
                continue
            instance = metric_obj.from_model_output(_as_numpy(dataset), outputs[metric_obj.model_output_type],
                                                    task.output_features, "targets")
            if isinstance(instance, metrics_lib.CollectingMetric):
                value, _ = instance.actual_compute(_as_numpy(dataset), task.output_features, "targets", [])
            else:
                value = instance.compute()
            for k, v in value.items():
                v = getattr(v, "value", v)
                if np.isscalar(v):
                    values[k] = float(v)
        return values


def has_score_metrics(task) -> bool:
    from seqio import metrics as metrics_lib

    return any(m.model_output_type == metrics_lib.ModelOutputType.SCORE for m in task.metric_objs)


def shown_indices(example_languages: Sequence[str], count: int, prefer_languages: Sequence[str] = ()) -> list[int]:
    """`count` example indices to show: the first example of each language (preferred
    languages first, then in order of appearance), then the first examples."""
    first: dict[str, int] = {}
    for i, code in enumerate(example_languages):
        first.setdefault(code, i)
    order = [first[c] for c in prefer_languages if c in first] + sorted(first.values())
    order += range(len(example_languages))
    return list(dict.fromkeys(order))[:count]


def _task_entries(name: str, language: str, kind: str, num_examples: int, metrics: dict) -> dict:
    """The table rows of one task: one row; for a multilingual task, whose metric
    functions score each language on its own (palimix.metrics.per_language: keys
    `cider/de`, ...), a row `<task>:<language>` per language, as if each were its own
    task (the per-language macro keys are left to `macro_averages`)."""
    from palimix.metrics import per_language

    by_language = per_language.split_keys(metrics)
    if not by_language:
        return {name: {"language": language, "kind": kind, "num_examples": num_examples, "metrics": metrics}}
    counts = per_language.example_counts(metrics)
    return {f"{name}:{code}": {"language": code, "kind": kind, "num_examples": counts[code], "metrics": values}
            for code, values in sorted(by_language.items())}


def _as_numpy(dataset):
    import tensorflow_datasets as tfds

    return tfds.as_numpy(dataset)


def evaluate(run, mixture_or_task_name: str | None = None, *, split: str = "validation",
             batch_size: int = 32, num_examples: int | None = None, method: str = "greedy",
             num_beams: int = 4, output_dir: str | None = None, summaries=None,
             evaluation: Evaluation | None = None) -> EvalResult:
    """Evaluates a `loading.LoadedRun`; returns (and writes) the per-language metrics."""
    from palimix.runner.predict import Predictor, Scorer

    name = mixture_or_task_name or run.mixture_or_task_name
    output_dir = output_dir or os.path.join(run.model_dir, "eval", split)
    os.makedirs(output_dir, exist_ok=True)
    evaluation = evaluation or Evaluation(name, run.task_feature_lengths, converter=run.feature_converter(),
                                          split=split, num_examples=num_examples)
    predictor = Predictor(run, batch_size=batch_size, max_decode_length=run.task_feature_lengths["targets"],
                          method=method, num_beams=num_beams)
    scorer = Scorer(run, batch_size=batch_size)
    result = evaluation.score(lambda task, indexed: predictor.predict_all([f for _, f in indexed]),
                              score_fn=lambda task, indexed: scorer.score_all([f for _, f in indexed]),
                              step=run.step)
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
