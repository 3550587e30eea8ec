"""Images as targets: a VQGAN's code grid (palimix.models.vqgan) written as text in the
joint vocabulary, for the kinds `text_to_image` and `prefix_image` (palimix.kinds).

A target is the image-begin token, then one token per code, row by row:

    "<img><img0012><img0907>..."     (palimix.vocab.TOKENSETS["img"]: each one id)

so tokenizing, the feature converters of both backbones, decoding and T5X treat image
targets as any other text, and captioning, VQA and image generation share a mixture.

Records carry the codes of their image (`codes`: h*w ints, a square grid, row by row),
computed offline by `palimix encode-images` with a trained tokenizer, which keeps JAX out
of tf.data. The kinds' stages (TensorFlow, imported when a task is built):

- `text_to_image_targets`: target = all codes; the prompt's {description} is the
  record's first non-blank caption; the task's image is blank (the kind has no image).
- `prefix_image_targets`: k in 1..h-1 drawn per example from a hash of its id (the same
  on every run and epoch), target = `<img>` + the codes of rows k..h-1, and
  `prefix_image_masked` (after image decoding) keeps the top k/h of the image's pixel rows
  and sets the rest to 0 (the blank image's value): at the tokenizer's own image size
  these are exactly the top k*stride rows; at another model image size the same share.
  A record whose grid has a single row has no prefix to give and makes no example.

Scoring (`image_code_accuracy`): both texts parsed back to codes (`parse_code_text`), then
`palimix.metrics.codes.code_accuracy`. `image_code_perplexity` is a seqio score metric
(`(targets, scores)`: each target's log-likelihood under the model, from T5X's
`score_batch` or the runner's `predict.Scorer`): the perplexity per target token (`<img>`,
the codes, EOS: each one id of the 'img' tokenset).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from palimix.errors import PalimixError
from palimix.metrics.codes import code_accuracy, code_perplexity

CODEBOOK_SIZE = 1024  # Codes the "img" tokenset can spell (DaVinci's VQGAN codebook).
IMAGE_BEGIN = "<img>"
CODE_FIELD = "codes"
_CODE = re.compile(r"<img(\d{4})>")
# Keys the stages add: the prompt's caption, and the share of pixel rows prefix_image keeps.
CAPTION_KEY, PREFIX_SHARE_KEY = "caption", "image_prefix_share"


class CodesError(PalimixError, ValueError):
    """A record's codes are not a square grid of integers in 0..CODEBOOK_SIZE-1."""


def check_codes(value) -> list[int]:
    """`value` as a list of ints if it is a flat square grid of codes, else CodesError."""
    codes = code_values(value)
    side = math.isqrt(len(codes))
    if side * side != len(codes):
        raise CodesError(f"{len(codes)} codes are not a square grid (h*w codes, row by row).")
    return codes


def code_values(value) -> list[int]:
    """`value` as a list of ints if each is a code in 0..CODEBOOK_SIZE-1, else CodesError."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(c, int) and not isinstance(c, bool) for c in value):
        raise CodesError(f"{value!r:.80} is not a list of integer codes.")
    bad = [c for c in value if not 0 <= c < CODEBOOK_SIZE]
    if bad:
        raise CodesError(f"code {bad[0]} is outside 0..{CODEBOOK_SIZE - 1} (the 'img' tokenset's codebook).")
    return list(value)


def code_token(code: int) -> str:
    """The token of one code: `<img0012>`."""
    return f"<img{code:04d}>"


def to_code_text(codes: Sequence[int]) -> str:
    """`<img>` then one `<imgNNNN>` per code (a whole grid, or prefix_image's last rows)."""
    return IMAGE_BEGIN + "".join(code_token(c) for c in code_values([int(c) for c in codes]))


def parse_code_text(text) -> list[int]:
    """The codes of a target or prediction (`<img>` and anything else left out)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return [int(c) for c in _CODE.findall(text)]


def image_code_accuracy(targets, predictions) -> dict[str, float]:
    """{"code_accuracy"} of code texts (palimix.metrics.codes.code_accuracy): a prediction
    that is not code text scores 0 at every position of its target. A target given as a
    list of references (as seqio may pass them) is scored by its first; targets without
    any code (no image kind makes them) score 0, as detection scores targets without boxes."""
    import numpy as np

    from palimix.metrics import _inputs

    targets, predictions = _inputs.check_pairs("code_accuracy", targets, predictions)
    wanted = [np.asarray(parse_code_text((_inputs.as_references(t) or [""])[0]), np.int64) for t in targets]
    if not any(len(w) for w in wanted):
        return {"code_accuracy": 0.0}
    return code_accuracy(wanted, [np.asarray(parse_code_text(p), np.int64) for p in predictions])


TARGET_TOKENS_BEYOND_CODES = 2  # <img> before the codes, EOS after them


def image_code_perplexity(targets, scores) -> dict[str, float]:
    """{"code_perplexity"}: exp(-sum of the targets' log-likelihoods / their tokens), the
    tokens of a code text being `<img>`, its codes and EOS (palimix.metrics.codes)."""
    import numpy as np

    from palimix.metrics import _inputs

    codes = [np.asarray(parse_code_text((_inputs.as_references(t) or [""])[0]), np.int64) for t in targets]
    return code_perplexity(codes, [float(s) for s in scores], extra_tokens=TARGET_TOKENS_BEYOND_CODES)


# --- the kinds' stages (TensorFlow) ------------------------------------------------------


def _codes_tf(example):
    import tensorflow as tf

    codes = example[CODE_FIELD]
    return tf.reshape(codes.to_tensor() if isinstance(codes, tf.RaggedTensor) else codes, [-1])


def code_text_tf(codes):
    """TensorFlow `to_code_text` of int codes [n] (n > 0)."""
    import tensorflow as tf

    tokens = tf.strings.join(["<img", tf.strings.as_string(codes, width=4, fill="0"), ">"])
    return tf.strings.join([IMAGE_BEGIN, tf.strings.reduce_join(tokens)])


def _first_caption_tf(example):
    import tensorflow as tf

    captions = example["captions"]
    captions = tf.reshape(captions.to_tensor() if isinstance(captions, tf.RaggedTensor) else captions, [-1])
    kept = tf.boolean_mask(captions, tf.strings.length(tf.strings.strip(captions)) > 0)
    return tf.strings.strip(tf.concat([kept, [""]], 0)[0])


def _text_to_image_fields(example):
    import tensorflow as tf

    codes = _codes_tf(example)
    target = tf.cond(tf.size(codes) > 0, lambda: code_text_tf(codes), lambda: tf.constant(""))
    return {**example, "targets": target, CAPTION_KEY: _first_caption_tf(example)}


def prefix_rows_tf(example_id, rows):
    """k in 1..rows-1 from a hash of the example id (rows >= 2)."""
    import tensorflow as tf

    key = tf.strings.join(["prefix_image/", example_id])
    return 1 + tf.strings.to_hash_bucket_fast(key, 1 << 30) % tf.cast(rows - 1, tf.int64)


def _prefix_image_fields(example):
    import tensorflow as tf

    codes = _codes_tf(example)
    rows = tf.cast(tf.round(tf.sqrt(tf.cast(tf.size(codes), tf.float32))), tf.int64)
    example_id = example["id"] if example["id"].dtype == tf.string else tf.strings.as_string(example["id"])
    usable = rows >= 2
    k = tf.where(usable, prefix_rows_tf(example_id, tf.maximum(rows, 2)), tf.constant(0, tf.int64))
    target = tf.cond(usable, lambda: code_text_tf(codes[k * rows:]), lambda: tf.constant(""))
    share = tf.cast(k, tf.float32) / tf.cast(tf.maximum(rows, 1), tf.float32)
    return {**example, "targets": target, CAPTION_KEY: _first_caption_tf(example), PREFIX_SHARE_KEY: share}


def _map(dataset, fn):
    import tensorflow as tf

    return dataset.map(tf.autograph.experimental.do_not_convert(fn), num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True)


def text_to_image_targets(dataset):
    """The text_to_image kind's text stage: `targets` (all codes) and `caption`."""
    return _map(dataset, _text_to_image_fields)


def prefix_image_targets(dataset):
    """The prefix_image kind's text stage: `targets` (the codes below row k), `caption`
    and the share k/h of pixel rows the image keeps."""
    return _map(dataset, _prefix_image_fields)


def keep_top_rows(image, share):
    """`image` [H, W, C] (a tensor or array) with the pixel rows below the top `share` of
    its height set to 0 (the blank image's value): prefix_image's mask, also applied by
    `palimix infer --generate --image` (palimix.runner.generate)."""
    import tensorflow as tf

    image = tf.convert_to_tensor(image)
    size = tf.shape(image)[0]
    kept = tf.cast(tf.round(tf.cast(share, tf.float32) * tf.cast(size, tf.float32)), tf.int32)
    rows = tf.cast(tf.range(size) < kept, image.dtype)
    return image * rows[:, None, None]


def _masked(example):
    return {**example, "image": keep_top_rows(example["image"], example[PREFIX_SHARE_KEY])}


def prefix_image_masked(dataset):
    """The prefix_image kind's image stage (after decoding): rows below the prefix set to 0."""
    return _map(dataset, _masked)
