"""Predictions for (image, prompt) pairs from a trained run.

    run = loading.load_run("palimix_runs/demo")
    predictions = infer.predict(run, [infer.Request(image="cat.jpg", prompt="caption de")])

Images go through the same decoder and resize as the training tasks
(`palimix.preprocessors.image.decode_image`); prompts are tokenized with the run's
task vocabulary exactly as written (PaLI style: `caption de`, `answer fr <question>`,
`ocr`, ...) or built from a kind and a language with `palimix.prompts`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Iterable, Sequence

import numpy as np

from palimix.errors import UsageError

log = logging.getLogger(__name__)

# PaLI-style prompts whose second word is a language code (checked, so that a typo
# like "caption xx" is an error instead of a silent nonsense prediction).
_LANGUAGE_PROMPTS = ("caption", "answer")


@dataclasses.dataclass
class Request:
    prompt: str
    image: str | None = None  # None: a language-only request (blank image, masked out)
    id: str | None = None


@dataclasses.dataclass
class Prediction:
    id: str | None
    image: str | None
    prompt: str
    prediction: str | None
    error: str | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None or k == "prediction"}


def build_prompt(prompt: str | None, kind: str | None, language: str | None, **fields) -> str:
    """The prompt text: as given, or from `palimix.prompts` for a kind and language."""
    from palimix import languages

    if prompt:
        words = prompt.split()
        if len(words) >= 2 and words[0] in _LANGUAGE_PROMPTS:
            languages.normalize(words[1])  # UnknownLanguageError for an unknown code
        return prompt
    if not kind or not language:
        raise UsageError("give --prompt TEXT, or --kind and --language to build the prompt.")
    from palimix import prompts

    return prompts.prompt(kind, languages.normalize(language), **fields)


def load_image(path: str, image_size: int) -> np.ndarray:
    """`[S, S, 3]` float32 in [-1, 1], decoded like the training data; a clear error
    naming the file otherwise."""
    import tensorflow as tf

    from palimix.preprocessors.image import decode_image

    if not os.path.exists(path):
        raise UsageError(f"image {path} does not exist.")
    with open(path, "rb") as f:
        data = f.read()
    dataset = decode_image(tf.data.Dataset.from_tensors({"image/encoded": data, "image/path": path}),
                           image_size=image_size, strict=True, task_name="infer")
    try:
        example = next(iter(dataset.as_numpy_iterator()))
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"cannot read image {path}: {reason}") from None
    return example["image"].astype(np.float32)


def read_jsonl(path: str) -> list[Request]:
    """Requests from a JSON-lines file: {"image": PATH, "prompt": TEXT, "id": ...} per
    line; relative image paths are taken from the file's folder."""
    return read_request_lines(path, _prompt_request)


def _prompt_request(record, base: str, where: str, default_id: str) -> Request:
    if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
        raise UsageError(f"{where}: each line needs a \"prompt\" string "
                         "(and an \"image\" path for image prompts).")
    image = record.get("image")
    if image and not os.path.isabs(image):
        image = os.path.join(base, image)
    return Request(prompt=record["prompt"], image=image, id=str(record["id"]) if "id" in record else default_id)


def read_request_lines(path: str, make_request) -> list:
    """`make_request(record, base, where, default_id)` for each non-blank JSON line of
    `path` (base: the file's folder, where: "path:line", default_id: the line number);
    a line that is not JSON, or an empty file, is a UsageError."""
    if not os.path.exists(path):
        raise UsageError(f"--jsonl {path} does not exist.")
    base = os.path.dirname(os.path.abspath(path))
    requests = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{path}:{number}: not JSON ({e.msg}).") from None
            requests.append(make_request(record, base, f"{path}:{number}", str(number)))
    if not requests:
        raise UsageError(f"{path} holds no requests.")
    return requests


def predict(run, requests: Sequence[Request], *, batch_size: int = 8, method: str = "greedy",
            num_beams: int = 4, strict: bool = True) -> list[Prediction]:
    """Predictions in request order. strict=False: a request whose image cannot be read
    gets `error` set (and is logged and counted) instead of stopping the others."""
    from palimix.runner import data as data_lib
    from palimix.runner.predict import Predictor

    lengths = run.task_feature_lengths
    provider = data_lib.get_mixture_or_task(run.mixture_or_task_name)
    vocabulary = provider.output_features["inputs"].vocabulary
    size = int(lengths["image"])
    features, kept, results = [], [], []
    for request in requests:
        try:
            image = load_image(request.image, size) if request.image else np.zeros((size, size, 3), np.float32)
        except UsageError as e:
            if strict:
                raise
            log.warning("skipping request %s: %s", request.id, e)
            results.append(Prediction(request.id, request.image, request.prompt, None, error=str(e)))
            continue
        ids = prompt_ids(vocabulary, request.prompt, lengths["inputs"], request.id)
        features.append(task_features(ids, image, has_image=bool(request.image)))
        kept.append(request)
        results.append(None)
    if features:
        predictor = Predictor(run, batch_size=min(batch_size, len(features)),
                              max_decode_length=lengths["targets"], method=method, num_beams=num_beams)
        tokens = iter(predictor.predict_all(model_features(run, features)))
        texts = iter([vocabulary.decode([int(t) for t in row]) for row in tokens])
        requests_iter = iter(kept)
        results = [r if r is not None else _made(next(requests_iter), next(texts)) for r in results]
    skipped = sum(1 for r in results if r.error)
    if skipped:
        log.warning("%d of %d requests skipped (unreadable images).", skipped, len(results))
    return results


def prompt_ids(vocabulary, prompt: str, length: int, request_id) -> list[int]:
    """The prompt's ids and EOS, cut to `length` (with a warning) as the tasks cut them."""
    ids = list(vocabulary.encode(prompt))
    if len(ids) + 1 > length:
        log.warning("prompt of request %s is %d tokens; the model reads the first %d.", request_id, len(ids) + 1,
                    length)
    return ids[:length - 1] + [vocabulary.eos_id]


def task_features(prompt_ids: Sequence[int], image: np.ndarray, *, has_image: bool) -> dict:
    """A request as a task's example would be: the prompt, no target yet, the image."""
    return {"inputs": np.asarray(prompt_ids, np.int32), "targets": np.zeros((0,), np.int32),
            "image": image, "has_image": np.asarray([int(has_image)], np.int32)}


def model_features(run, examples: Sequence[dict]) -> list[dict]:
    """Task features -> the run's model features, through the network's own feature
    converter (the one eval and training read), so every backbone gets its layout."""
    import tensorflow as tf

    size = int(run.task_feature_lengths["image"])
    signature = {"inputs": tf.TensorSpec([None], tf.int32), "targets": tf.TensorSpec([None], tf.int32),
                 "image": tf.TensorSpec([size, size, 3], tf.float32), "has_image": tf.TensorSpec([1], tf.int32)}
    dataset = tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=signature)
    return list(run.feature_converter()(dataset, run.task_feature_lengths).as_numpy_iterator())


def _made(request: Request, text: str) -> Prediction:
    return Prediction(request.id, request.image, request.prompt, text)


def write_jsonl(predictions: Iterable[Prediction], path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for p in predictions:
            f.write(json.dumps(p.to_json(), ensure_ascii=False) + "\n")
    os.replace(tmp, path)
