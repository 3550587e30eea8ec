"""MaXM (github.com/google-research-datasets/maxm): multilingual VQA on XM3600 images."""

from __future__ import annotations

import re

import tensorflow as tf

from palimix.sources import base

# The release's files: maxm_v1_release/maxm_v1_<lang>.json (en fr hi iw ro th zh).
_MAXM_FILE = re.compile(r"^maxm_v1_([A-Za-z]{2,3}(?:[-_][A-Za-z0-9]+)?)\.json$")
ANSWER_KEYS = ("processed_answers", "answers")


class Maxm(base.RecordSource):
    """MaXM v1, a test-only VQA benchmark in 7 languages. Each release file
    (`maxm_v1_<lang>.json`: {dataset, version, split, annotations: [{image_id,
    image_url, qa_pairs: [{question_id, question, answers, processed_answers,
    is_collection}]}]}) holds one language; the images are XM3600's
    `<image_dir>/<image_id>.jpg`. One example per question (id: its question_id),
    `answers` the `processed_answers` (what mBLIP and the MaXM paper score exact
    matches against; `answers="answers"` for the raw ones).

    `questions` is the release folder (`maxm_v1_release/`) or {language: file}.
    """

    def __init__(self, questions, image_dir: str, *, split: str = "test", answers: str = "processed_answers",
                 image_pattern: str = "{image_id}.jpg"):
        if answers not in ANSWER_KEYS:
            raise base.UsageError(f"answers= is one of {ANSWER_KEYS}, not {answers!r}.")
        super().__init__([split], ["question", "answers"])
        if isinstance(questions, str):
            questions = _release_files(base.require_path(questions, "MaXM release folder"))
        normalize = base.normalizer("MaXM files")
        self.questions = {normalize(code): base.require_path(path, "MaXM file") for code, path in questions.items()}
        self.image_dir = base.require_path(image_dir, "XM3600 image folder")
        self.answers, self.image_pattern = answers, image_pattern

    def __repr__(self):
        return f"Maxm({sorted(self.questions)})"

    def _load_split(self, split: str) -> list[dict]:
        return [record for code in sorted(self.questions) for record in self._records_of(code)]

    def _records_of(self, code: str) -> list[dict]:
        path = self.questions[code]
        data = base.read_json(path, "MaXM file")
        if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
            raise base.UsageError(f"{path}: expected MaXM's {{..., annotations: [{{image_id, qa_pairs}}]}}.")
        records = []
        for number, annotation in enumerate(data["annotations"]):
            try:
                image_path = base.join(self.image_dir, self.image_pattern.format(image_id=annotation["image_id"]))
                for pair in annotation["qa_pairs"]:
                    records.append({"id": str(pair["question_id"]), "image/path": image_path, "language": code,
                                    "question": pair["question"], "answers": base.as_strings(pair[self.answers])})
            except (KeyError, TypeError) as e:
                raise base.UsageError(f"{path}: annotation {number} is not in MaXM's layout (missing {e}).") from None
        return records


def _release_files(folder: str) -> dict[str, str]:
    files = {}
    for name in sorted(tf.io.gfile.listdir(folder)):
        match = _MAXM_FILE.match(name)
        if match:
            files[match.group(1)] = base.join(folder, name)
    if not files:
        raise base.UsageError(f"{folder!r} has no MaXM files (maxm_v1_<lang>.json).")
    return files
