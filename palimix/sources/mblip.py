"""mBLIP's task files (github.com/gregor-ge/mBLIP, `data/`), as its scripts write them.

A task file is a JSON list of records (`json.dump(list)`: `task_mix_v2_mt.json`,
`mscoco/coco_train_mt.json`, `vqa/vqav2_vqa_mt.json`, ...), or JSON Lines with one
record per line (what `palimix.translate.translate_task_file` writes). mBLIP's keys:

| key | meaning |
|---|---|
| `image_id` | the image file, relative to the image folder ("COCO_train2014_000000000009.jpg") |
| `context` | the prompt: in training files the whole instruction ("Caption the image in German.", "Wie viele Hunde? Short English answer:"); in evaluation files a question or a language name that mBLIP's configs put into a template (`context_template`) |
| `label` | the target; "" in evaluation files, whose references are `text_label` (a string or a list) |

Keys palimix adds (translate_task_file writes them; mBLIP's own files have none):
`language` (a code; else `language=` names the language of every record: mBLIP's
mixed files do not say which record is in which language), `id` (else the record's
position in the file), `english_label` (a translated record's English original: the
`english` field, for `add_task(english_answer_share=...)`). Other keys (`pair_id`,
`task`, ...) are ignored.

    src = MblipTaskFile("task_mix_v2_mt.json", "images", language="en")
    add_task("mblip_mix", kind="vqa", source=src, languages=["en"], prompt_style="verbatim")

trains on mBLIP's data as it is: `kind="vqa"` puts `context` in `question` and
`label` in `answers`, and the verbatim prompt style makes the question the whole
prompt. `kind="caption"` reads only the labels (`captions`), for files whose contexts
are templates that palimix's own prompt styles replace. A malformed record (not an
object, no image, a context or label that is not text, two images: MaRVL's
`left_image`/`right_image`, see `palimix.sources.Marvl`) is a UsageError naming the
file and the record.
"""

from __future__ import annotations

from palimix.sources import base, lines

# palimix kind -> the record fields it reads from a task file.
KIND_FIELDS = {"vqa": ("question", "answers"), "caption": ("captions",)}
ENGLISH_KEY = "english_label"


class MblipTaskFile(base.RecordSource):
    """Records of one mBLIP task file (see module doc)."""

    def __init__(self, path: str, image_dir: str, *, kind: str = "vqa", split: str = "train",
                 language: str | None = None, context_template: str = "{}", image_extension: str = ""):
        if kind not in KIND_FIELDS:
            raise base.UsageError(f"MblipTaskFile reads kind 'vqa' (context -> question, label -> answers) or "
                                  f"'caption' (label -> captions), not {kind!r}.")
        if "{}" not in context_template:
            raise base.UsageError(f"context_template {context_template!r} has no {{}} for the record's context.")
        self.path = base.require_path(path, "mBLIP task file")
        self.image_dir = base.require_path(image_dir, "image folder")
        self.kind, self.context_template, self.image_extension = kind, context_template, image_extension
        self.language = language and base.normalizer(path)(language)
        # Parsed once: to see whether records keep English originals, then for the records.
        self._parsed: list | None = self.entries()
        english = any(isinstance(e, dict) and ENGLISH_KEY in e for e in self._parsed)
        super().__init__([split], KIND_FIELDS[kind] + (("english",) if english else ()))

    def __repr__(self):
        return f"MblipTaskFile({self.path!r})"

    def entries(self) -> list:
        """The file's records as parsed JSON (`read_task_file`)."""
        return read_task_file(self.path)

    def _load_split(self, split: str) -> list[dict]:
        normalize = base.normalizer(self.path)
        entries, self._parsed = (self._parsed if self._parsed is not None else self.entries()), None
        return [self._record(entry, index, normalize) for index, entry in enumerate(entries)]

    def _record(self, entry, index: int, normalize) -> dict:
        where = f"{self.path} record {index}"
        if not isinstance(entry, dict):
            raise base.UsageError(f"{where}: expected an object with image_id, context and label, got {entry!r:.80}.")
        if "left_image" in entry or "right_image" in entry:
            raise base.UsageError(f"{where}: a two-image record (MaRVL/NLVR2); read those with palimix.sources.Marvl.")
        image = entry.get("image_id", entry.get("image"))
        if not isinstance(image, str) or not image:
            raise base.UsageError(f"{where}: no image_id (the image file, relative to {self.image_dir!r}).")
        record = {
            "id": base.as_string(entry.get("id", index)),
            "image/path": base.join(self.image_dir, image + self.image_extension),
            "language": self._language(entry, where, normalize),
        }
        references = _references(entry, where)
        if self.kind == "vqa":
            context = _text(entry, "context", where)
            record.update(question=self.context_template.format(context), answers=references)
        else:
            record["captions"] = references
        if "english" in self.fields:
            record["english"] = _strings(entry.get(ENGLISH_KEY), ENGLISH_KEY, where)
        return record

    def _language(self, entry: dict, where: str, normalize) -> str:
        if entry.get("language"):
            return normalize(str(entry["language"]))
        if self.language:
            return self.language
        raise base.UsageError(f"{where}: no 'language' key (mBLIP's own files name none); pass language= "
                              f"to give every record of the file one language.")


def read_task_file(path: str) -> list:
    """The records of a task file as parsed JSON: a `.jsonl` file line by line, any
    other file as one JSON list (mBLIP's releases). UsageError for anything else."""
    if path.endswith(".jsonl"):
        return [entry for _, entry in lines.json_lines(path)]
    entries = base.read_json(path, "mBLIP task file")
    if not isinstance(entries, list):
        raise base.UsageError(f"{path}: an mBLIP task file is a JSON list of records, not a JSON {type(entries).__name__}.")
    return entries


def _text(entry: dict, key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str):
        raise base.UsageError(f"{where}: {key!r} must be text, got {value!r:.80}.")
    return value


def _strings(value, key: str, where: str) -> list[str]:
    """A string or a list of strings -> the list (None -> [])."""
    values = [] if value is None else [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise base.UsageError(f"{where}: {key!r} must be text or a list of texts, got {value!r:.80}.")
    return [v for v in values if v.strip()]


def _references(entry: dict, where: str) -> list[str]:
    """The target: `label`, or in an evaluation file (label "") its `text_label`s. None
    at all: [] (build_example leaves such a record out; `palimix stats` counts it)."""
    label = _text(entry, "label", where)
    if label.strip():
        return [label]
    return _strings(entry.get("text_label"), "text_label", where)
