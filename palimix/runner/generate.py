"""Images from a trained run: a description -> the text_to_image prompt -> sampled VQGAN
codes -> pixels (palimix.image_tokenizer) -> PNG files. `palimix infer --generate`.

    run = loading.load_run("palimix_runs/davinci")
    tokenizer = image_tokenizer.load("palimix_runs/tokenizer")
    images = generate.generate_images(run, tokenizer, [generate.ImageRequest("a red circle", out="circle.png")],
                                      temperature=1.0, top_k=100, guidance_scale=3.0)

What is required of the run and the tokenizer: the run was trained on text_to_image codes
of this tokenizer (same grid and codebook; palimix can only check that the sizes fit): its
vocabulary spells the `<img>` tokens as single ids, and its targets length holds `<img>`,
h*w codes and EOS (h*w + 2). The PNG has the tokenizer's image size; the run's image size
plays no part (text_to_image's image is blank).

Each image is sampled from the model's whole vocabulary, as eval decodes: a sample that
stops early, or spells text or a code beyond the tokenizer's codebook, is still drawn
(missing or undrawable codes as code 0) and counted as incomplete, with a warning.

Classifier-free guidance (`guidance_scale`): the unconditional prompt is the same
template without its description (`prompts.prompt_without_fields`: "generate en" for
"generate en a red circle"), as Parti's and Make-A-Scene's empty text condition. A run
trained only on described prompts has seen that prompt's words but never the prompt
alone; DaVinci itself does not use guidance.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Sequence

import numpy as np

from palimix.errors import UsageError

log = logging.getLogger(__name__)

KIND = "text_to_image"


@dataclasses.dataclass
class ImageRequest:
    description: str
    out: str  # PNG path
    language: str = "en"
    id: str | None = None


@dataclasses.dataclass
class GeneratedImage:
    id: str | None
    prompt: str
    out: str
    codes: int  # codes the sample spelled (h*w when complete)
    complete: bool
    text: str  # the decoded sample

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def check_run_for(run, tokenizer) -> int:
    """UsageError unless the run can spell this tokenizer's grid; returns the decode
    length (`<img>`, h*w codes, EOS)."""
    from palimix import kinds
    from palimix.runner import data as data_lib

    vocabulary = data_lib.get_mixture_or_task(run.mixture_or_task_name).output_features["targets"].vocabulary
    kinds.check_vocabulary(kinds.get(KIND), vocabulary, run.mixture_or_task_name)
    grid = tokenizer.grid_size
    needed = grid * grid + 2
    targets = int(run.task_feature_lengths["targets"])
    if targets < needed:
        raise UsageError(f"the run's targets length is {targets}; the tokenizer's {grid}x{grid} grid needs "
                         f"{needed} (<img>, {grid * grid} codes, EOS): train with targets >= {needed} on codes of "
                         "this tokenizer, or use the tokenizer the run's codes came from.")
    return needed


def prompts_for(request: ImageRequest, style: str) -> tuple[str, str]:
    """(the text_to_image prompt, its unconditional twin)."""
    from palimix import languages, prompts

    language = languages.normalize(request.language)
    return (prompts.prompt(KIND, language, style=style, description=request.description),
            prompts.prompt_without_fields(KIND, language, style=style))


def sample_code_texts(run, prompt_pairs: Sequence[tuple[str, str]], *, decode_length: int, temperature: float,
                      top_k: int, seed: int, guidance_scale: float | None, batch_size: int) -> list[str]:
    """The decoded text of one sample per (prompt, unconditional prompt); temperature 0
    decodes greedily."""
    from palimix.runner import data as data_lib
    from palimix.runner import infer
    from palimix.runner.predict import Predictor

    vocabulary = data_lib.get_mixture_or_task(run.mixture_or_task_name).output_features["inputs"].vocabulary
    size = int(run.task_feature_lengths["image"])
    blank = np.zeros((size, size, 3), np.float32)

    def features(prompts):
        return infer.model_features(run, [
            infer.task_features(infer.prompt_ids(vocabulary, p, run.task_feature_lengths["inputs"], str(i)), blank,
                                 has_image=False) for i, p in enumerate(prompts)])

    conditional = features([p for p, _ in prompt_pairs])
    unconditional = features([u for _, u in prompt_pairs]) if guidance_scale is not None else None
    predictor = Predictor(run, batch_size=min(batch_size, len(conditional)), max_decode_length=decode_length,
                          method="sample" if temperature > 0 else "greedy", temperature=temperature, top_k=top_k,
                          seed=seed, guidance_scale=guidance_scale)
    rows = predictor.predict_all(conditional, unconditional)
    return [vocabulary.decode([int(t) for t in row]) for row in rows]


def generate_images(run, tokenizer, requests: Sequence[ImageRequest], *, temperature: float = 1.0, top_k: int = 0,
                    seed: int = 0, guidance_scale: float | None = None, num_samples: int = 1, batch_size: int = 8,
                    prompt_style: str = "pali") -> list[GeneratedImage]:
    """Samples `num_samples` images per request and writes them as PNG files (with
    num_samples > 1: `out` gets `-1`, `-2`, ... before its extension)."""
    if num_samples < 1:
        raise UsageError(f"num_samples must be >= 1, got {num_samples}.")
    if temperature < 0:
        raise UsageError(f"temperature must be >= 0 (0: greedy), got {temperature}.")
    decode_length = check_run_for(run, tokenizer)
    jobs = [(request, _numbered(request.out, k, num_samples)) for request in requests for k in range(num_samples)]
    pairs = [prompts_for(request, prompt_style) for request, _ in jobs]
    texts = sample_code_texts(run, pairs, decode_length=decode_length, temperature=temperature, top_k=top_k,
                              seed=seed, guidance_scale=guidance_scale, batch_size=batch_size)
    decoded = tokenizer.decode_texts(texts)
    results = []
    for (request, out), (prompt, _), text, pixels, complete in zip(jobs, pairs, texts, decoded.pixels,
                                                                   decoded.complete):
        write_png(pixels, out)
        results.append(GeneratedImage(request.id, prompt, out, _code_count(text, tokenizer), bool(complete), text))
    _warn_incomplete(results, tokenizer.grid_size ** 2)
    return results


def _numbered(path: str, k: int, count: int) -> str:
    if count == 1:
        return path
    stem, extension = os.path.splitext(path)
    return f"{stem}-{k + 1}{extension or '.png'}"


def _code_count(text: str, tokenizer) -> int:
    from palimix import image_codes

    return min(len(image_codes.parse_code_text(text)), tokenizer.grid_size ** 2)


def _warn_incomplete(results: Sequence[GeneratedImage], grid_codes: int) -> None:
    incomplete = [r for r in results if not r.complete]
    if incomplete:
        log.warning("%d of %d generated images are incomplete (fewer than %d drawable codes: missing and "
                    "out-of-codebook codes drawn as code 0): %s", len(incomplete), len(results), grid_codes,
                    ", ".join(f"{r.out} ({r.codes} codes)" for r in incomplete[:5]))


def write_png(pixels: np.ndarray, path: str) -> None:
    """uint8 pixels [H, W, 3] -> a PNG file (written whole or not at all)."""
    from PIL import Image

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    Image.fromarray(np.asarray(pixels, np.uint8)).save(tmp, format="PNG")
    os.replace(tmp, path)


def read_requests(path: str) -> list[ImageRequest]:
    """Generation requests from JSON Lines: {"generate": DESCRIPTION, "out": PNG PATH,
    "language": CODE (default en), "id": ...} per line; relative `out` paths are taken
    from the file's folder."""
    from palimix.runner.infer import read_request_lines

    return read_request_lines(path, _request)


def _request(record, base: str, where: str, default_id: str) -> ImageRequest:
    if not isinstance(record, dict) or not isinstance(record.get("generate"), str) or \
            not isinstance(record.get("out"), str):
        raise UsageError(f"{where}: each line needs a \"generate\" description and an \"out\" PNG path.")
    out = record["out"] if os.path.isabs(record["out"]) else os.path.join(base, record["out"])
    return ImageRequest(record["generate"], out, language=str(record.get("language", "en")),
                        id=str(record.get("id", default_id)))
