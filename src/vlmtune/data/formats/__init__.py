"""Outside dataset formats, one file each; `FORMATS` names them (a module is imported only when its format is used).

    vlmtune data import vizwiz val.json --images val/ --out data/vizwiz-val
    vlmtune data export llava data/vizwiz-val --out exported/vizwiz-llava

Every format file exposes `FORMAT = Format(...)` (see `base.py`): `read` turns the source into Samples, `write` turns
Samples back into the source layout, and import -> export -> import gives identical Samples (tested per format).
"""

from __future__ import annotations

import importlib

from vlmtune.data.formats.base import Format, export_dataset, import_dataset

FORMATS: dict[str, str] = {
    "vizwiz": "VizWiz VQA JSON (10 answers with confidence, answer_type, answerable)",
    "vqav2": "VQAv2 questions + annotations JSON files (COCO images)",
    "coco": "COCO captions annotations JSON, or Karpathy-split dataset_coco.json",
    "flickr30k": "Flickr30k results_20130124.token file or results.csv",
    "llava": "LLaVA conversation JSON (conversations with <image> placeholders)",
    "llava_video": "LLaVA-Video-178K / ShareGPT-video JSON (conversations with a <video> placeholder, one video each)",
    "sharegpt": "ShareGPT JSONL (conversations from/value or messages role/content, images as paths or base64; "
                "LLaMA-Factory / ms-swift preference pairs)",
    "openai": "OpenAI chat messages JSONL (image_url parts: paths, file:// or base64 data URIs)",
    "chartqa": "ChartQA split directory (<split>_human.json / <split>_augmented.json, png/, tables/)",
    "cc3m": "CC3M-style TSV (caption, image, item_url)",
    "deepfashion_mm": "DeepFashion-MultiModal captions.json ({image: caption}) + images/",
    "imagefolder": "image folder with metadata.jsonl or metadata.csv (Hugging Face imagefolder layout)",
    "rlhf_v": "RLHF-V / RLAIF-V preference pairs (image, question, chosen, rejected): parquet, JSONL or JSON",
    "vlfeedback": "VLFeedback JSONL (rated completions per prompt -> preference pairs; --option pairs=, score=)",
    "hf": "Hugging Face datasets: a save_to_disk directory or parquet file(s) with an image column",
}
"""Format name -> one-line description; the module `vlmtune.data.formats.<name>` holds its `FORMAT`."""


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise ValueError(f"unknown data format {name!r}; known: {sorted(FORMATS)}")
    return importlib.import_module(f"vlmtune.data.formats.{name}").FORMAT


__all__ = ["FORMATS", "Format", "export_dataset", "get_format", "import_dataset"]
