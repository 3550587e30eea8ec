"""VQAv2 and TextVQA in their official JSON layouts."""

from __future__ import annotations

from palimix.sources import base


class Vqav2(base.RecordSource):
    """VQAv2: one example per question, with the 10 human `answers`.

    `questions_json` (`v2_OpenEnded_mscoco_train2014_questions.json`) has `questions`
    [{question_id, image_id, question}] and `data_subtype` ("train2014");
    `annotations_json` (`v2_mscoco_train2014_annotations.json`) has `annotations`
    [{question_id, answers: [{answer, answer_id}]}]; pass None for the test split
    (no answers). Images are `<image_dir>/COCO_<data_subtype>_<12-digit id>.jpg`;
    `image_pattern` (fields `data_subtype`, `image_id`) changes that, e.g. to
    "{image_id:012d}.jpg" for COCO 2017 folders.
    """

    def __init__(
        self,
        questions_json: str,
        annotations_json: str | None,
        image_dir: str,
        *,
        split: str = "train",
        image_pattern: str = "COCO_{data_subtype}_{image_id:012d}.jpg",
        language: str = "en",
    ):
        super().__init__([split], ["question", "answers"])
        self.questions_json = base.require_path(questions_json, "VQAv2 questions file")
        self.annotations_json = annotations_json and base.require_path(annotations_json, "VQAv2 annotations file")
        self.image_dir = base.require_path(image_dir, "VQAv2 image folder")
        self.image_pattern = image_pattern
        self.language = base.normalizer(questions_json)(language)

    def __repr__(self):
        return f"Vqav2({self.questions_json!r})"

    def _load_split(self, split: str) -> list[dict]:
        questions = base.read_json(self.questions_json, "VQAv2 questions file")
        answers: dict[int, list[str]] = {}
        if self.annotations_json:
            for annotation in base.read_json(self.annotations_json, "VQAv2 annotations file")["annotations"]:
                ordered = sorted(annotation["answers"], key=lambda a: a.get("answer_id", 0))
                answers[annotation["question_id"]] = [a["answer"] for a in ordered]
        subtype = questions.get("data_subtype", "")
        records = []
        for q in questions["questions"]:
            if self.annotations_json and q["question_id"] not in answers:
                raise base.UsageError(f"{self.annotations_json!r} has no answers for question {q['question_id']}.")
            name = self.image_pattern.format(data_subtype=subtype, image_id=q["image_id"])
            records.append(
                {
                    "id": str(q["question_id"]),
                    "image/path": base.join(self.image_dir, name),
                    "language": self.language,
                    "question": q["question"],
                    "answers": answers.get(q["question_id"], []),
                }
            )
        return records


class TextVqa(base.RecordSource):
    """TextVQA (and ST-VQA converted to its format): one example per question.

    `json` (`TextVQA_0.5.1_train.json`) has `data` [{question_id, image_id,
    question, answers: [10 strings]}] (no answers in the test file). Images are
    `<image_dir>/<image_id>.jpg` (`image_pattern` changes that).
    """

    def __init__(self, json: str, image_dir: str, *, split: str = "train", image_pattern: str = "{image_id}.jpg", language: str = "en"):
        super().__init__([split], ["question", "answers"])
        self.json = base.require_path(json, "TextVQA file")
        self.image_dir = base.require_path(image_dir, "TextVQA image folder")
        self.image_pattern = image_pattern
        self.language = base.normalizer(json)(language)

    def __repr__(self):
        return f"TextVqa({self.json!r})"

    def _load_split(self, split: str) -> list[dict]:
        data = base.read_json(self.json, "TextVQA file")
        if "data" not in data:
            raise base.UsageError(f"{self.json!r} has no 'data' list: not a TextVQA file.")
        return [
            {
                "id": str(item["question_id"]),
                "image/path": base.join(self.image_dir, self.image_pattern.format(image_id=item["image_id"])),
                "language": self.language,
                "question": item["question"],
                "answers": base.as_strings(item.get("answers")),
            }
            for item in data["data"]
        ]
