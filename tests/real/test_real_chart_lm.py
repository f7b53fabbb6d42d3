"""The chart reasoning LM with a real tokenizer: ai-forever/rugpt3small_based_on_gpt2's config and byte-level GPT-2
BPE (random weights, depth cut to 1) through `vlmtune chart init-lm --from`: stop strings end the replies, sampling
is seeded per prompt, and every setup answers (or says why not) through it."""

from __future__ import annotations

import os

import pytest

from tests.real.conftest import REAL
from vlmtune.chart.lm import CausalLM, init_lm
from vlmtune.chart.prompts import STOP, cot_prompt
from vlmtune.chart.reason import SETUPS, build_reasoner
from vlmtune.data.chart_table import Table

FOLDER = REAL / "ai-forever__rugpt3small_based_on_gpt2"
SALES = Table.from_text("TITLE | Sales by country <0x0A> Country | Sales <0x0A> Chile | 42 <0x0A> Peru | 17")


@pytest.fixture(scope="module")
def rugpt(tmp_path_factory):
    if not FOLDER.is_dir():
        if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("CI"):
            pytest.skip(f"{FOLDER} is absent (../shared/real-models) and the hub is offline")
    path = tmp_path_factory.mktemp("rugpt") / "lm"
    made = init_lm(path, FOLDER if FOLDER.is_dir() else "ai-forever/rugpt3small_based_on_gpt2", layers=1)
    assert made["layers"] == 1 and made["vocab"] == 50257
    return CausalLM.from_path(path, device="cpu")


def test_a_real_bpe_lm_stops_at_blank_lines_and_samples_reproducibly(rugpt):
    prompt = cot_prompt(SALES, "Which country has the highest value?")
    free = rugpt.generate(prompt, max_new_tokens=24)
    cut = rugpt.generate(prompt, max_new_tokens=24, stop=STOP)
    assert cut == free.split("\n\n")[0].split("\nQ:")[0] and "\n\n" not in cut
    first = rugpt.sample(prompt, n=2, temperature=1.0, max_new_tokens=6)
    assert first == rugpt.sample(prompt, n=2, temperature=1.0, max_new_tokens=6) and len(first) == 2


def test_every_setup_runs_on_the_real_tokenizer(rugpt):
    for setup in SETUPS:
        got = build_reasoner(setup, rugpt, max_new_tokens=6, k=1).answer(SALES, "What is the value for Chile?")
        assert got.reasoner == setup and got.ok == (got.error is None)
