"""Evaluation metrics with seqio's `fn(targets, predictions, **options) -> dict` shape.

Every score is on a 0-100 scale. Caption metrics take a list of reference captions per
example, VQA the human answers of each question, ANLS the accepted answers; a plain
string target counts as a one-element list. Tokenization for caption metrics follows
the language (`palimix.metrics.tokenize.tokenize(text, language, tokenizer)`).

| function | keys | agrees with |
|---|---|---|
| `cider` | cider | pycocoevalcap CIDEr-D (x100) |
| `bleu` | bleu1..bleu4 | pycocoevalcap BLEU |
| `rouge_l` | rouge_l | pycocoevalcap ROUGE-L |
| `vqa_accuracy` | vqa_accuracy | the official VQA evaluation |
| `anls` | anls | ST-VQA / DocVQA ANLS |
| `exact_match`, `accuracy`, `relaxed_accuracy` | one key each | their definitions |
| `sacrebleu_bleu`, `chrf` | bleu, chrf | sacrebleu (chrF++) |
| `detection_f1` | detection_f1, _precision, _recall | boxes at IoU >= 0.5 per label, one to one |
| `detection_map` | detection_map50 | pycocotools COCOeval AP at IoU 0.5 (boxes ranked by output position) |
| `referring_accuracy` | referring_accuracy, mean_iou | RefCOCO accuracy at IoU >= 0.5 |
| `fid` (images, any feature network; not 0-100) | fid | pytorch-fid's formula (scipy sqrtm), closed forms |
| `code_accuracy`, `code_perplexity` (image-code targets) | one key each | their definitions |
| `scene.faithfulness` (demo images; `scene.faithfulness_metric` on code texts) | faithfulness, faithfulness_color/_shape/_position | a rule-based reading of the demo's scene table |

Which functions a task of each kind reports, and the key to show first, are in the
table of kinds (`palimix.kinds.get(kind).metric_fns(language)`, `.primary_metric`).
`per_language.by_language` scores one multilingual task per language (keys
`cider/de`, `cider/macro`); `summarize` gives the per-language table and macro
average of a mixture's evaluation.
"""

from palimix.metrics.aggregate import LanguageReport, summarize
from palimix.metrics.anls import anls
from palimix.metrics.bleu import bleu
from palimix.metrics.codes import code_accuracy, code_perplexity
from palimix.metrics.cider import cider
from palimix.metrics.detection import detection_f1, detection_map, referring_accuracy
from palimix.metrics.fid import fid
from palimix.metrics.rouge import rouge_l
from palimix.metrics.text import accuracy, chrf, exact_match, relaxed_accuracy, sacrebleu_bleu
from palimix.metrics.vqa import normalize_answer, vqa_accuracy

__all__ = [
    "LanguageReport",
    "accuracy",
    "anls",
    "bleu",
    "chrf",
    "cider",
    "code_accuracy",
    "code_perplexity",
    "detection_f1",
    "detection_map",
    "exact_match",
    "fid",
    "normalize_answer",
    "referring_accuracy",
    "relaxed_accuracy",
    "rouge_l",
    "sacrebleu_bleu",
    "summarize",
    "vqa_accuracy",
]
