"""Images from a trained run: a description -> the text_to_image prompt -> sampled VQGAN
codes -> pixels (palimix.image_tokenizer) -> PNG files. `palimix infer --generate`.

    run = loading.load_run("palimix_runs/davinci")
    tokenizer = image_tokenizer.load("palimix_runs/tokenizer")
    images = generate.generate_images(run, tokenizer, [generate.ImageRequest("a red circle", out="circle.png")],
                                      temperature=1.0, top_k=100, guidance_scale=3.0)
    # Prefix completion (the prefix_image kind): keep the top 2 code rows of a picture.
    generate.generate_images(run, tokenizer, [generate.ImageRequest("a red circle", out="done.png",
                                                                    image="half.png", keep_rows=2)])

What is required of the run and the tokenizer: the run was trained on text_to_image codes
of this tokenizer (same grid and codebook; palimix can only check that the sizes fit): its
vocabulary spells the `<img>` tokens as single ids, and its targets length holds `<img>`,
h*w codes and EOS (h*w + 2). The PNG has the tokenizer's image size; the run's image size
plays no part (text_to_image's image is blank).

Sampling is restricted to image codes (palimix.models.decoding.ImageCodeMask): `<img>`,
then only the ids of the tokenizer's codebook (`<img0000>`..) until the grid's codes are
out, then EOS; so every sample is a whole, drawable image (eval's predictions, decoded
from the whole vocabulary, are what code_accuracy scores). An incomplete image could
only come from a targets length too short for the grid, which `check_run_for` refuses;
it would still be drawn (missing codes as code 0) and reported with a warning.

Prefix completion (`image` and `keep_rows` K): the prefix_image prompt, the image at the
run's size with its pixel rows below the top K/h set to 0 (`image_codes.keep_top_rows`,
the prefix_image task's own mask), and the codes of rows K..h-1 sampled; the PNG is the
tokenizer's drawing of the image's own codes for rows 0..K-1 (`tokenizer.encode`) above
the sampled rows.

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

KIND, PREFIX_KIND = "text_to_image", "prefix_image"


@dataclasses.dataclass
class ImageRequest:
    description: str
    out: str  # PNG path
    language: str = "en"
    id: str | None = None
    image: str | None = None  # prefix completion: the image whose top rows are kept ...
    keep_rows: int = 0  # ... this many code rows of it (1..h-1)

    @property
    def kind(self) -> str:
        return PREFIX_KIND if self.image else KIND


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


def check_run_for(run, tokenizer, keep_rows: int = 0) -> int:
    """UsageError unless the run can spell this tokenizer's grid below `keep_rows` code
    rows; returns the decode length (`<img>`, the codes, EOS)."""
    from palimix import kinds

    vocabulary = _vocabulary(run, "targets")
    kinds.check_vocabulary(kinds.get(PREFIX_KIND if keep_rows else KIND), vocabulary, run.mixture_or_task_name)
    grid = tokenizer.grid_size
    needed = (grid - keep_rows) * grid + 2
    targets = int(run.task_feature_lengths["targets"])
    if targets < needed:
        raise UsageError(f"the run's targets length is {targets}; the tokenizer's {grid}x{grid} grid needs "
                         f"{needed} (<img>, {needed - 2} codes, EOS): train with targets >= {needed} on codes of "
                         "this tokenizer, or use the tokenizer the run's codes came from.")
    return needed


def code_mask(run, tokenizer, keep_rows: int = 0):
    """The decoding restriction to whole images: `<img>`, then the tokenizer's codebook
    ids for the grid's rows below `keep_rows`, then EOS (decoding.ImageCodeMask)."""
    from palimix import image_codes
    from palimix.models import decoding

    vocabulary = _vocabulary(run, "targets")

    def single_id(token):
        (token_id,) = vocabulary.encode(token)  # check_run_for: each <img> token is one id
        return token_id

    codes = tuple(single_id(image_codes.code_token(c)) for c in range(tokenizer.config.codebook_size))
    grid = tokenizer.grid_size
    return decoding.ImageCodeMask(int(run.trainer.definition.config.vocab_size), single_id(image_codes.IMAGE_BEGIN),
                                  codes, num_codes=(grid - keep_rows) * grid, eos_id=vocabulary.eos_id)


def _vocabulary(run, feature: str):
    from palimix.runner import data as data_lib

    return data_lib.get_mixture_or_task(run.mixture_or_task_name).output_features[feature].vocabulary


def prompts_for(request: ImageRequest, style: str) -> tuple[str, str]:
    """(the request's prompt, its unconditional twin: the one string that training's
    unconditional_share examples are prompted with, palimix.preprocessors.prompts)."""
    from palimix import languages, prompts

    language = languages.normalize(request.language)
    return (prompts.prompt(request.kind, language, style=style, description=request.description),
            prompts.prompt_without_fields(request.kind, language, style=style))


def prompt_batch(run, prompt_texts: Sequence[str], images: Sequence[np.ndarray | None]) -> list[dict]:
    """Model features of prompts, each with its image (None: the blank one of text_to_image)."""
    from palimix.runner import infer

    vocabulary = _vocabulary(run, "inputs")
    size = int(run.task_feature_lengths["image"])
    blank = np.zeros((size, size, 3), np.float32)
    return infer.model_features(run, [
        infer.task_features(infer.prompt_ids(vocabulary, p, run.task_feature_lengths["inputs"], str(i)),
                            blank if image is None else image, has_image=image is not None)
        for i, (p, image) in enumerate(zip(prompt_texts, images))])


def sample_code_texts(run, prompt_pairs: Sequence[tuple[str, str]], *, decode_length: int, temperature: float,
                      top_k: int, seed: int, guidance_scale: float | None, batch_size: int, token_mask=None,
                      images: Sequence[np.ndarray | None] | None = None) -> list[str]:
    """The decoded text of one sample per (prompt, unconditional prompt) (with its image,
    shared by both); temperature 0 decodes greedily."""
    from palimix.runner.predict import Predictor

    images = images if images is not None else [None] * len(prompt_pairs)
    conditional = prompt_batch(run, [p for p, _ in prompt_pairs], images)
    unconditional = prompt_batch(run, [u for _, u in prompt_pairs], images) if guidance_scale is not None else None
    predictor = Predictor(run, batch_size=min(batch_size, len(conditional)), max_decode_length=decode_length,
                          method="sample" if temperature > 0 else "greedy", temperature=temperature, top_k=top_k,
                          seed=seed, guidance_scale=guidance_scale, token_mask=token_mask)
    rows = predictor.predict_all(conditional, unconditional)
    vocabulary = _vocabulary(run, "targets")
    return [vocabulary.decode([int(t) for t in row]) for row in rows]


@dataclasses.dataclass
class _Prefix:
    """What a prefix completion starts from: the model's masked image and the code
    text of the rows kept."""

    image: np.ndarray  # [S, S, 3] at the run's image size, rows below the prefix 0
    code_text: str  # <img> and the codes of the top keep_rows rows


def _prefix_of(request: ImageRequest, run, tokenizer) -> _Prefix | None:
    from palimix import image_codes
    from palimix.commands.encode_images import tokenizer_pixels
    from palimix.runner import infer

    if not request.image:
        return None
    grid = tokenizer.grid_size
    # The kept rows' codes as `palimix encode-images` computed the training records' codes.
    pixels = tokenizer_pixels(request.image, f"request {request.id}", tokenizer.config.image_size)
    kept = tokenizer.encode(pixels[None])[0, :request.keep_rows].reshape(-1)
    model_image = infer.load_image(request.image, int(run.task_feature_lengths["image"]))
    masked = np.asarray(image_codes.keep_top_rows(model_image, request.keep_rows / grid))
    return _Prefix(masked, image_codes.to_code_text(kept))


def check_requests(requests: Sequence[ImageRequest], tokenizer) -> None:
    grid = tokenizer.grid_size
    for request in requests:
        if request.image and not 1 <= request.keep_rows < grid:
            raise UsageError(f"keep_rows must be 1..{grid - 1} (code rows of the tokenizer's {grid}x{grid} grid "
                             f"kept from {request.image}), got {request.keep_rows}.")
        if not request.image and request.keep_rows:
            raise UsageError("keep_rows needs the image whose rows are kept (--image PATH).")


def generate_images(run, tokenizer, requests: Sequence[ImageRequest], *, temperature: float = 1.0, top_k: int = 0,
                    seed: int = 0, guidance_scale: float | None = None, num_samples: int = 1, batch_size: int = 8,
                    prompt_style: str = "pali") -> list[GeneratedImage]:
    """Samples `num_samples` images per request and writes them as PNG files (with
    num_samples > 1: `out` gets `-1`, `-2`, ... before its extension). Requests keeping
    the same number of rows are decoded together (one compiled program each)."""
    if num_samples < 1:
        raise UsageError(f"num_samples must be >= 1, got {num_samples}.")
    if temperature < 0:
        raise UsageError(f"temperature must be >= 0 (0: greedy), got {temperature}.")
    check_requests(requests, tokenizer)
    jobs = [(request, _numbered(request.out, k, num_samples)) for request in requests for k in range(num_samples)]
    prefixes = {id(request): _prefix_of(request, run, tokenizer) for request in requests}
    texts: list[str | None] = [None] * len(jobs)
    for keep_rows in sorted({request.keep_rows for request in requests}):
        chosen = [i for i, (request, _) in enumerate(jobs) if request.keep_rows == keep_rows]
        sampled = sample_code_texts(
            run, [prompts_for(jobs[i][0], prompt_style) for i in chosen],
            decode_length=check_run_for(run, tokenizer, keep_rows), temperature=temperature, top_k=top_k, seed=seed,
            guidance_scale=guidance_scale, batch_size=batch_size, token_mask=code_mask(run, tokenizer, keep_rows),
            images=[_image_of(prefixes[id(jobs[i][0])]) for i in chosen])
        for i, text in zip(chosen, sampled):
            texts[i] = text
    return _write_images(jobs, texts, prefixes, tokenizer, prompt_style)


def _image_of(prefix: _Prefix | None):
    return None if prefix is None else prefix.image


def _write_images(jobs, texts, prefixes, tokenizer, prompt_style) -> list[GeneratedImage]:
    """The PNG of each sample (a prefix's kept codes above its sampled rows)."""
    whole = [(prefixes[id(request)].code_text if prefixes[id(request)] else "") + text
             for (request, _), text in zip(jobs, texts)]
    decoded = tokenizer.decode_texts(whole)
    results = []
    for (request, out), text, full, pixels, complete in zip(jobs, texts, whole, decoded.pixels, decoded.complete):
        write_png(pixels, out)
        results.append(GeneratedImage(request.id, prompts_for(request, prompt_style)[0], out,
                                      _code_count(full, tokenizer), bool(complete), text))
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
    "language": CODE (default en), "id": ..., and for prefix completion "image": PATH,
    "keep_rows": K} per line; relative paths are taken from the file's folder."""
    from palimix.runner.infer import read_request_lines

    return read_request_lines(path, _request)


def _request(record, base: str, where: str, default_id: str) -> ImageRequest:
    if not isinstance(record, dict) or not isinstance(record.get("generate"), str) or \
            not isinstance(record.get("out"), str):
        raise UsageError(f"{where}: each line needs a \"generate\" description and an \"out\" PNG path.")
    out = record["out"] if os.path.isabs(record["out"]) else os.path.join(base, record["out"])
    image, keep_rows = record.get("image"), record.get("keep_rows", 0)
    if (image is not None and not isinstance(image, str)) or isinstance(keep_rows, bool) or \
            not isinstance(keep_rows, int):
        raise UsageError(f"{where}: \"image\" is an image path and \"keep_rows\" a number of code rows.")
    if image is not None and not os.path.isabs(image):
        image = os.path.join(base, image)
    return ImageRequest(record["generate"], out, language=str(record.get("language", "en")),
                        id=str(record.get("id", default_id)), image=image, keep_rows=keep_rows)
