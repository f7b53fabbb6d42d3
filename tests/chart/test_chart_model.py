"""The `<0x0A>` trap: DePlot writes table rows separated by the literal token `<0x0A>`. Our tokenizer keeps it as ONE
ordinary token, so `Predictor` (which decodes with skip_special_tokens=True) returns tables that keep their rows;
checked through a real tokenizer, a save/load round trip and a model that generates a table."""

from __future__ import annotations

import copy

import pytest
import torch

from vlmtune.chart.ask import generate_tables
from vlmtune.chart.model import TinyDeplotCfg, build_model, build_tokenizer, init_model
from vlmtune.data.chart_table import Table
from vlmtune.data.charts import charts
from vlmtune.infer import Predictor
from vlmtune.models import get_family

TABLE = "TITLE | Sales by year <0x0A> Year | Sales <0x0A> 2019 | 12 <0x0A> 2020 | 15"


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_newline_token_is_one_ordinary_token(tok):
    nl = tok.convert_tokens_to_ids("<0x0A>")
    assert tok("<0x0A>", add_special_tokens=False).input_ids == [nl]
    assert "<0x0A>" not in tok.all_special_tokens
    ids = tok(TABLE, add_special_tokens=False).input_ids
    assert ids.count(nl) == 3 and len(ids) == len(tok(TABLE.replace(" <0x0A> ", "<0x0A>")).input_ids)
    decoded = tok.decode(ids, skip_special_tokens=True)
    assert decoded.count("<0x0A>") == 3 and Table.from_text(decoded) == Table.from_text(TABLE)


def test_as_a_special_token_it_would_be_deleted_by_decoding(tok):
    """The trap itself (so the test above means something): a special `<0x0A>` vanishes, and the rows with it."""
    special = copy.deepcopy(tok)
    special.add_special_tokens({"additional_special_tokens": ["<0x0A>"]})
    decoded = special.decode(special(TABLE, add_special_tokens=False).input_ids, skip_special_tokens=True)
    assert "<0x0A>" not in decoded and len(Table.from_text(decoded).rows) == 0  # one long header row


def test_saved_tokenizer_keeps_it_ordinary(tok, tmp_path):
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    ids = again(TABLE, add_special_tokens=False).input_ids
    assert ids == tok(TABLE, add_special_tokens=False).input_ids
    assert again.decode(ids, skip_special_tokens=True).count("<0x0A>") == 3


def test_a_generated_table_keeps_its_rows_through_predictor():
    """Overfit a tiny model on one chart's table; Predictor's text (skip_special_tokens=True) still has every row."""
    loaded = build_model(TinyDeplotCfg(hidden=32, vision_layers=1, text_layers=1, ff=64, max_patches=16))
    family = get_family("pix2struct")
    sample, image = next(iter(charts(1, seed=0, size=64, questions=["chart_to_table"])))
    batch = family.encode(loaded.processor, [sample], [[image]], "train", 256)
    model = loaded.model
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ops this small only lose time to threads (x8 slower on a busy 2-core machine)
    try:
        for _ in range(150):
            model(**batch.inputs).loss.backward()
            opt.step()
            opt.zero_grad()
    finally:
        torch.set_num_threads(threads)
    text = generate_tables(Predictor(loaded, family, max_new_tokens=48), [image])[0]
    print("generated:", text)
    truth = Table.from_text(sample.target)
    assert text.count("<0x0A>") == len(truth.rows) + 1  # title line, header, rows
    assert Table.from_text(text) == truth


def test_init_model_writes_a_loadable_directory(tmp_path):
    out = tmp_path / "m"
    info = init_model(out, TinyDeplotCfg(hidden=32, vision_layers=1, text_layers=1, ff=64, max_patches=16))
    assert info["family"] == "pix2struct" and (out / "vlmtune.json").is_file()
    predictor = Predictor.from_path(out, max_new_tokens=4)
    assert predictor.family.name == "pix2struct" and predictor.loaded.processor.image_processor.max_patches == 16
    assert not predictor.loaded.processor.image_processor.is_vqa
    with pytest.raises(FileExistsError):
        init_model(out)


def test_the_chart_model_and_the_tiny_family_model_come_from_one_builder():
    """models/pix2struct.build is the one place a Pix2Struct is made from sizes: `chart init-model`'s model is it
    with dropout off (a from-scratch CPU model) and no generation max_length; the family's tiny keeps transformers'
    dropout defaults. The same sizes and seed give the same weights either way."""
    from vlmtune.models.pix2struct import build

    cfg = TinyDeplotCfg(hidden=32, vision_layers=1, text_layers=1, heads=4, ff=64, patch=8, max_patches=16)
    chart = build_model(cfg, seed=3)
    torch.manual_seed(3)
    direct = build(build_tokenizer(cfg.vocab_size), vqa=False, hidden=32, heads=4, ff=64, vision_layers=1,
                   text_layers=1, patch=8, max_patches=16, dropout=0.0)
    for a, b in zip(chart.model.state_dict().values(), direct.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    config = chart.model.config
    assert (config.text_config.dropout_rate, config.vision_config.dropout_rate,
            config.vision_config.attention_dropout) == (0.0, 0.0, 0.0)
    assert chart.model.generation_config.max_length is None
    tiny = get_family("pix2struct").tiny()
    assert tiny.model.config.text_config.dropout_rate == type(tiny.model.config.text_config)().dropout_rate
    assert tiny.model.config.text_config.d_kv == 8 and tiny.processor.image_processor.max_patches == 64
