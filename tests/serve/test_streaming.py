"""Streaming: the text streamed token by token equals the non-streamed answer, for every family's real tokenizer
(byte-level BPE with Ġ, SentencePiece with ▁, characters split over byte tokens, a tokenizer that cleans up spaces),
and through the server for a multi-word answer with leading spaces and multi-byte characters."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image
from serving import Script, Server, tiny_predictor

from tests.real.conftest import FOLDERS, real_path
from vlmtune.config import ServeCfg
from vlmtune.infer import answer_text
from vlmtune.serve.batcher import Request, _RowStreamer

ANSWERS = [
    "a person wearing a plain red top",
    "uma regata laranja e calças azuis, não é?",  # Portuguese: accents over two bytes
    "мужчина в красной футболке",  # Cyrillic
    "Yes 🙂👍🏽 it's 3.5 km, 🦩 𓀀 ok",  # emoji (one over several code points), a hieroglyph: byte tokens
    "红色的上衣。",  # no spaces at all
    "line one\nline two",
    "do n't stop , ok . I 'm here",  # what a tokenizer that cleans up spaces rewrites
]


def _random_text(rng: random.Random) -> str:
    """Words of letters drawn from ASCII, Latin-1, Cyrillic, CJK, emoji and hieroglyphs: splits a tokenizer's
    byte fallback and byte-level merges in places no fixed text does."""
    ranges = [(0x61, 0x7A), (0xC0, 0xFF), (0x410, 0x44F), (0x4E00, 0x4E80), (0x1F300, 0x1F64F), (0x13000, 0x13040)]
    words = []
    for _ in range(rng.randint(2, 6)):
        words.append("".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(rng.randint(1, 4))))
    return " ".join(words)


def _stream(tok, ids: list[int], eos: int, max_new_tokens: int = 1000) -> tuple[list[str], list[str]]:
    """Feed `ids` then the end token to the batcher's streamer as `generate` does (the prompt first, then one
    (batch,) tensor per step): the pieces sent, and after each step the text sent so far."""
    pieces: list[str] = []
    request = Request(sample=None, images=[], max_new_tokens=max_new_tokens, on_delta=pieces.append)
    streamer = _RowStreamer(tok, [request], {eos})
    streamer.put(torch.tensor([[eos, eos]]))  # the prompt: not part of the answer
    so_far = []
    for token in [*ids, eos, eos]:  # a finished row is padded until the batch ends
        streamer.put(torch.tensor([token]))
        so_far.append("".join(pieces))
    streamer.end()
    return pieces, so_far


CASES = [(family, {}) for family in FOLDERS] + [("pix2struct", {"clean_up_tokenization_spaces": True})]


@pytest.mark.parametrize(("family", "options"), CASES, ids=[f + ("-cleanup" if o else "") for f, o in CASES])
def test_streamed_text_equals_the_full_decode_token_by_token(family, options):
    """Every answer as a model writes it (with and without a leading space), seeded random texts and random token
    ids: after each token, what was sent is a prefix of the answer; at the end it is the answer; and a multi-word
    answer arrives in pieces, not at the end."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(real_path(family), **options)
    eos = tok.eos_token_id if tok.eos_token_id is not None else tok.pad_token_id
    rng = random.Random(0)
    texts = [lead + a for a in ANSWERS for lead in ("", " ")] + [_random_text(rng) for _ in range(20)]
    sequences = [tok.encode(t, add_special_tokens=False) for t in texts]
    sequences += [[rng.randrange(len(tok)) for _ in range(24)] for _ in range(20)]  # whatever a model may write
    split = 0
    for ids in sequences:
        ids = [i for i in ids if i != eos]
        answer = answer_text(tok, ids)
        pieces, so_far = _stream(tok, ids, eos)
        assert "".join(pieces) == answer, (tok.convert_ids_to_tokens(ids), pieces)
        assert all(answer.startswith(s) for s in so_far), (tok.convert_ids_to_tokens(ids), so_far)
        if ids in sequences[: len(ANSWERS) * 2]:
            assert len(pieces) >= len(answer.split()) - 1, (answer, pieces)  # word by word at least
        split += any("\ufffd" in tok.decode([i]) for i in ids)
    if family != "pix2struct":  # T5's unigram has no byte tokens (an unknown character is <unk>)
        assert split >= 5  # the cases did split characters over tokens


def test_a_row_stops_streaming_at_its_own_max_tokens():
    """A batch-mate asked for more tokens: the row's text ends at its own limit, as the returned answer does."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(real_path("qwen2_vl"))
    ids = tok.encode(" a person wearing a plain red top", add_special_tokens=False)
    pieces, _ = _stream(tok, ids, tok.eos_token_id, max_new_tokens=3)
    assert "".join(pieces) == answer_text(tok, ids[:3]) == "a person wearing"


@pytest.fixture(scope="module")
def predictor():
    return tiny_predictor()


def test_streaming_through_the_server_equals_the_answer(predictor):
    """A multi-word answer with leading spaces, accents, an emoji and Cyrillic over the built-in model's byte-level
    BPE, streamed with the official client: the deltas joined equal the non-streamed answer."""
    from openai import OpenAI

    from vlmtune.serve.app import create_app

    tok = predictor.loaded.processor.tokenizer
    answer = " a person wearing an orange regata, não é? 🙂 да"
    script = Script(predictor.loaded.model, tok.encode(answer, add_special_tokens=False), tok.eos_token_id)
    server = Server(create_app(lambda: predictor, ServeCfg(max_tokens=64), "tiny", background=False))
    try:
        client = OpenAI(base_url=server.url + "/v1", api_key="unused")
        image = _data_uri(Image.new("RGB", (32, 32), "orange"))
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                                 {"type": "text", "text": "Describe the image."}]}]
        full = client.chat.completions.create(model="tiny", messages=messages, max_tokens=64)
        assert full.choices[0].message.content == answer.strip()  # the model wrote the scripted answer
        deltas, finish = [], None
        for chunk in client.chat.completions.create(model="tiny", messages=messages, max_tokens=64, stream=True):
            for c in chunk.choices:
                deltas.append(c.delta.content or "")
                finish = c.finish_reason or finish
        assert "".join(deltas) == full.choices[0].message.content
        assert len([d for d in deltas if d]) >= len(answer.split())  # streamed as written, not at the end
        assert finish == full.choices[0].finish_reason == "stop"
    finally:
        server.stop()
        script.remove()


def _data_uri(img: Image.Image) -> str:
    import base64
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
