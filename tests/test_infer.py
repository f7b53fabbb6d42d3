"""Predictor: generation stops where the model's generation_config says (not only at the tokenizer's eos), and the
answer, its token ids, its count and its finish reason agree, one by one and batched."""

from __future__ import annotations

import pytest
from helpers import TINY_BUILTIN
from PIL import Image

from vlmtune.config import BuiltinCfg
from vlmtune.data.sample import Sample, assistant, user
from vlmtune.infer import Predictor


@pytest.fixture(scope="module")
def predictor():
    from vlmtune.models import get_family
    from vlmtune.models.builtin import build_builtin

    loaded = build_builtin(BuiltinCfg(**TINY_BUILTIN), seed=3)
    return Predictor(loaded=loaded, family=get_family("llava"), max_new_tokens=8)


def _sample(i: int, question: str) -> tuple[Sample, list]:
    sample = Sample(id=f"s{i}", messages=[user(question), assistant("?")], images=["x.png"])
    return sample, [Image.new("RGB", (32, 32), ["red", "blue"][i % 2])]


def test_generation_stops_at_the_models_own_end_token(predictor):
    """Like BLIP-2 ("\\n") or Idefics3 (<end_of_utterance>): generation_config.eos_token_id is not the tokenizer's
    eos. The stop token is not part of the answer, its ids or its count, and the finish reason is "stop"."""
    tok = predictor.loaded.processor.tokenizer
    config = predictor.loaded.model.generation_config
    questions = ["What colour is the top?", "How many shapes?"]
    pairs = [_sample(i, q) for i, q in enumerate(questions)]
    free = [predictor.complete([s], [im])[0] for s, im in pairs]  # stops only at the tokenizer's eos
    # the model's own end token: a token each answer writes after at least one other token
    row = free[0].token_ids
    end = next(t for t in row[1:] if t != row[0] and t not in (tok.eos_token_id, tok.pad_token_id))
    saved = config.eos_token_id
    config.eos_token_id = end
    try:
        one_by_one = [predictor.complete([s], [im])[0] for s, im in pairs]
        batched = predictor.complete([s for s, _ in pairs], [im for _, im in pairs])
    finally:
        config.eos_token_id = saved
    first = one_by_one[0]
    assert first.token_ids == row[: row.index(end)] and end not in first.token_ids
    assert first.completion_tokens == len(first.token_ids)
    assert first.finish_reason == "stop"
    assert first.text == tok.decode(first.token_ids, skip_special_tokens=True).strip()
    for a, b in zip(one_by_one, batched, strict=True):
        assert (a.text, a.token_ids, a.completion_tokens, a.finish_reason) == (
            b.text, b.token_ids, b.completion_tokens, b.finish_reason)
