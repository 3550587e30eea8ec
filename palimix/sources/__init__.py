"""Readers for the data layouts users download, as `seqio.DataSource`s.

Every source yields raw records with these keys (the contract with `palimix.tasks`):

| key | type | meaning |
|---|---|---|
| `id` | string | the example's id in its dataset (image key, question id, ...) |
| `image/encoded` | string | the image file's bytes ("" when the example has no image) |
| `image/path` | string | the file (or "shard.tar[member]"), for error messages; "" when no image |
| `language` | string | BCP-47 code, normalized by `palimix.languages.normalize` |
| `captions` | string [n] | caption sources (CocoCaptions, Xm3600) |
| `question`, `answers` | string, string [n] | VQA sources (Vqav2, TextVqa, Gqa, Xgqa) |
| `label` | string | classification (ImageFolder) |
| `text` | string | OCR text (JsonLines, WebDataset, Tfds mappings) |
| `boxes`, `labels` | float32 [n, 4], string [n] | detection: boxes [y_min, x_min, y_max, x_max] in 0..1 and their class names (CocoDetection, JsonLines) |
| `box`, `expression` | float32 [4], string | referring expressions: one box and the sentence naming it (RefCoco, JsonLines) |
| `codes` | int32 [h*w] | the image's VQGAN code grid, row by row (JsonLines; written by `palimix encode-images`): text_to_image, prefix_image |
| `english` | string [n] | optional: a translated record's English references (MblipTaskFile of palimix.translate output, JsonLines); `add_task(english_answer_share=...)` answers some examples with them |

Each source knows its `splits` and `num_input_examples(split)` (mixture rates), reads
in a deterministic order (`shuffle=False`; a seed makes shuffling reproducible),
reads files through `tf.io.gfile` (local or `gs://`), and offers
`for_language(code)`: the examples of one language as a source of their own, cheap
(the annotation files are parsed once), so a task per language over a multilingual
source costs nothing extra. Unknown codes raise `UnknownLanguageError`.

Annotation files and image folders that do not exist raise `MissingFileError` when the
source is created. A single missing or broken image is not the source's business:
`image/encoded` is then "" with the path set, and
`palimix.preprocessors.image.decode_image` drops, counts and logs it.

Single-split readers name their split with `split=`; `Splits` combines them:

    from palimix import sources
    coco = sources.Splits({
        "train": sources.CocoCaptions("captions_train2017.json", "train2017"),
        "validation": sources.CocoCaptions("captions_val2017.json", "val2017", split="validation"),
    })
    xm3600_de = sources.Xm3600("captions.jsonl", "images").for_language("de")
"""

from palimix.sources.base import BOX_FIELDS, KIND_FIELDS, LIST_FIELDS, MissingFileError, RecordSource, Splits
from palimix.sources.coco import CocoCaptions, CocoDetection
from palimix.sources.folder import ImageFolder, read_label_table
from palimix.sources.gqa import Gqa, Xgqa
from palimix.sources.iglue import Marvl, XFlickrCo, Xvnli, side_by_side
from palimix.sources.jsonl import JsonLines
from palimix.sources.maxm import Maxm
from palimix.sources.mblip import MblipTaskFile
from palimix.sources.refcoco import RefCoco
from palimix.sources.tfds import Tfds
from palimix.sources.vqa import TextVqa, Vqav2
from palimix.sources.webdataset import WebDataset, expand_shards
from palimix.sources.xm3600 import Xm3600

__all__ = [
    "BOX_FIELDS",
    "KIND_FIELDS",
    "LIST_FIELDS",
    "CocoCaptions",
    "CocoDetection",
    "Gqa",
    "ImageFolder",
    "JsonLines",
    "Marvl",
    "Maxm",
    "MblipTaskFile",
    "MissingFileError",
    "RecordSource",
    "RefCoco",
    "Splits",
    "Tfds",
    "TextVqa",
    "Vqav2",
    "WebDataset",
    "XFlickrCo",
    "Xgqa",
    "Xm3600",
    "Xvnli",
    "expand_shards",
    "read_label_table",
    "side_by_side",
]
