"""GQA questions and xGQA's translations of them."""

from __future__ import annotations

import re

import tensorflow as tf

from palimix.sources import base

# xGQA file names end in the language: testdev_balanced_questions_de.json.
_XGQA_FILE = re.compile(r"_([A-Za-z]{2,3}(?:[-_][A-Za-z0-9]+)?)\.json$")


def _gqa_records(questions_json: str, image_dir: str, image_pattern: str, language: str) -> list[dict]:
    questions = base.read_json(questions_json, "GQA questions file")
    if not isinstance(questions, dict):
        raise base.UsageError(f"{questions_json!r}: expected GQA's {{question id: {{imageId, question, answer}}}}.")
    records = []
    for question_id in sorted(questions):  # JSON object order is the file's; sort for stability across writers.
        q = questions[question_id]
        records.append(
            {
                "id": str(question_id),
                "image/path": base.join(image_dir, image_pattern.format(image_id=q["imageId"])),
                "language": language,
                "question": q["question"],
                # GQA has one answer per question (test questions have none).
                "answers": base.as_strings(q.get("answer")),
            }
        )
    return records


class Gqa(base.RecordSource):
    """GQA: `questions_json` maps question id -> {imageId, question, answer,
    fullAnswer}; images are `<image_dir>/<imageId>.jpg`. One example per question,
    `answers` = [answer]."""

    def __init__(self, questions_json: str, image_dir: str, *, split: str = "train", image_pattern: str = "{image_id}.jpg", language: str = "en"):
        super().__init__([split], ["question", "answers"])
        self.questions_json = base.require_path(questions_json, "GQA questions file")
        self.image_dir = base.require_path(image_dir, "GQA image folder")
        self.image_pattern = image_pattern
        self.language = base.normalizer(questions_json)(language)

    def __repr__(self):
        return f"Gqa({self.questions_json!r})"

    def _load_split(self, split: str) -> list[dict]:
        return _gqa_records(self.questions_json, self.image_dir, self.image_pattern, self.language)


class Xgqa(base.RecordSource):
    """xGQA: GQA questions translated into 7 languages (answers stay English, as in
    the benchmark). `questions` is {language: GQA-format json} or a folder of
    files named `..._<lang>.json` (the release's `zero_shot/` or a `few_shot/<lang>`
    folder). `language` of an example is the language of its question.
    """

    def __init__(self, questions, image_dir: str, *, split: str = "test", image_pattern: str = "{image_id}.jpg"):
        super().__init__([split], ["question", "answers"])
        if isinstance(questions, str):
            folder = base.require_path(questions, "xGQA questions folder")
            questions = {}
            for name in sorted(tf.io.gfile.listdir(folder)):
                match = _XGQA_FILE.search(name)
                if match:
                    questions[match.group(1)] = base.join(folder, name)
            if not questions:
                raise base.UsageError(f"{folder!r} has no xGQA question files (named ..._<lang>.json).")
        normalize = base.normalizer("xGQA questions")
        self.questions = {normalize(code): base.require_path(path, "xGQA questions file") for code, path in questions.items()}
        self.image_dir = base.require_path(image_dir, "GQA image folder")
        self.image_pattern = image_pattern

    def __repr__(self):
        return f"Xgqa({sorted(self.questions)})"

    def _load_split(self, split: str) -> list[dict]:
        records = []
        for code in sorted(self.questions):
            records += _gqa_records(self.questions[code], self.image_dir, self.image_pattern, code)
        return records
