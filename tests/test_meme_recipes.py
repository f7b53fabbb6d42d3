"""The Russian meme job's recipes train in two stages, as the original project planned: stage 1 on the translated
Flickr30k (which the page builds), stage 2 on the memes from stage 1's exported model; and captions are generated
with a cap sized from the data (`max_new_tokens: auto`), not the original's 48 tokens that cut them short."""

from pathlib import Path

from vlmtune.config import RunCfg

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_the_real_recipes_train_stage_1_on_the_translated_flickr30k_and_stage_2_on_memes():
    stage1 = RunCfg.from_file(CONFIGS / "llava" / "siglip-rugpt3-stage1_full_memes_ru.yaml")
    stage2 = RunCfg.from_file(CONFIGS / "llava" / "siglip-rugpt3-stage2_lora_memes_ru.yaml")
    assert stage1.data.path == "data/flickr30k-ru" and stage2.data.path == "data/memes-ru"
    assert stage1.model.path == "models/siglip-rugpt3" and stage2.model.path == "models/siglip-rugpt3-aligned"
    for cfg in (stage1, stage2):
        assert cfg.eval.task == "caption" and cfg.eval.max_new_tokens == "auto"
        assert cfg.data.ocr.template == stage1.data.ocr.template  # one prompt


def test_the_offline_recipes_do_both_stages_on_stand_in_data():
    stage1 = RunCfg.from_file(CONFIGS / "builtin" / "meme_captions_ru_stage1.yaml")
    stage2 = RunCfg.from_file(CONFIGS / "builtin" / "meme_captions_ru.yaml")
    assert stage1.data.path == "data/flickr30k-ru" and stage1.model.path == "builtin"
    assert stage2.data.path == "data/memes-ru" and stage2.model.path == f"models/{stage1.name}"
    assert stage2.model.builtin == stage1.model.builtin  # --model.path builtin: the same model, memes alone
    for cfg in (stage1, stage2):
        assert cfg.eval.task == "caption" and cfg.eval.max_new_tokens == "auto"
        assert cfg.data.ocr.template == stage1.data.ocr.template
    page = (CONFIGS.parent / "docs" / "meme-captions-ru.md").read_text(encoding="utf-8")
    for command in ("vlmtune data standin flickr30k-ru", "vlmtune data import flickr30k",
                    "vlmtune train --config configs/builtin/meme_captions_ru_stage1.yaml",
                    f"vlmtune export --model runs/{stage1.name} --out {stage2.model.path}",
                    "vlmtune train --config configs/builtin/meme_captions_ru.yaml"):
        assert command in page, command
