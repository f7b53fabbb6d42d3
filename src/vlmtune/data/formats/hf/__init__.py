"""Hugging Face `datasets` (https://huggingface.co/docs/datasets): a `save_to_disk` directory or parquet file(s).

    vqav2/dataset_dict.json                      {"splits": ["train", "validation"]}    (DatasetDict.save_to_disk)
    vqav2/train/data-00000-of-00001.arrow        + dataset_info.json (the features), state.json
    coco/data/train-00000-of-00001.parquet       the Hub's parquet layout (split from the file or folder name)
    chat.parquet                                 one file: split "train"

    a row (VQAv2 on the Hub):  {"question_id": 458752000, "question": "What is this photo taken looking through?",
                                "answers": [{"answer": "net", "answer_confidence": "yes", "answer_id": 1}, ...],
                                "multiple_choice_answer": "net", "answer_type": "other",
                                "image": {"bytes": b"\\xff\\xd8\\xff...", "path": "COCO_train2014_000000458752.jpg"}}

`src` is a `save_to_disk` directory (Dataset or DatasetDict: one split per key, "validation" -> "val"; memory-mapped)
or a parquet file / a folder of parquet files (read 64 rows at a time; the split from the file name as in
"validation-00000-of-00001.parquet", else from a folder name, else "train"). The image column is the first whose
feature is `datasets.Image` (or a list of them), else a column named image / images. Images are never decoded: embedded
bytes are stored as images/<sha256 prefix>.<format> (the format sniffed from the magic bytes), and a path-only image
(relative to `--images` or to `src`) is read for its bytes and named the same way, so the export (bytes embedded)
re-imports to identical Samples.

Per row, the first of these that is present (not null) says what the Sample is:
  messages / conversations   chat (task "vqa"): role/content lists (content parts {"type": "image"} / {"type": "text",
                             "text"}, or a string with <image> placeholders; ShareGPT from/value also read); with no
                             image part the images open the first user turn
  question                   VQA: target = `answer`, else `multiple_choice_answer`, else the most frequent of `answers`
                             (a list of strings, or VQAv2-style dicts with "answer", their other keys dropped);
                             `answers` kept raw
  caption / captions / text / sentences   caption: all captions are `references` (strings, or Karpathy {"raw": ...}),
                             the first the target, with the prompt "Describe the image."
Answers and captions must be strings (a number or an object there is a bad record, never its str()). Every other
scalar column goes to `meta` (ClassLabel values by name, nulls left out). The id is the `id` column, else
`question_id`, else "<split>-<row>". Export writes a DatasetDict with `save_to_disk`: id, image (or images), question /
answer / answers, captions or messages, and one column per meta key.

The package: `read.py` (a directory or parquet file(s) -> Samples), `write.py` (the export).
"""

from __future__ import annotations

from vlmtune.data.formats.base import Format
from vlmtune.data.formats.hf.read import read, sniff
from vlmtune.data.formats.hf.write import write

FORMAT = Format(
    name="hf",
    description="Hugging Face datasets: a save_to_disk directory or parquet file(s) with an image column",
    layout="save_to_disk directory (dataset_dict.json + <split>/data-*.arrow) or parquet file(s) "
           "(data/<split>-00000-of-00001.parquet)",
    read=read,
    write=write,
)

__all__ = ["FORMAT", "read", "sniff", "write"]
