"""`vlmtune serve --model RUN --index DIR`: the shop assistant of the fashion retrieval job (issue 21). Chat answers
carry the catalogue's top-k items (in "vlmtune": {"items"} and as markdown links in the text), `POST /v1/retrieve`
searches the catalogue under the server's security checks, and the web page shows product cards with links, example
images and a Describe button, end to end on the stand-in catalogue in headless Chromium.

The catalogue is `vlmtune data standin fashion-retrieval`, indexed with a tiny random CLIP; the chat model is a tiny
built-in run trained for two steps on drawn caption samples. Its answers are scripted (tests/serving.py `Script`): a
multi-word answer with leading spaces, so a page or stream that cuts answers would show."""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from serving import Script, Server

from vlmtune.cli import main
from vlmtune.config import RunCfg, ServeCfg

CHROMIUM = "/usr/bin/chromium"
ANSWER = " a person wearing a red striped t-shirt and blue trousers"
QUERY = "show me a red striped t-shirt"


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> dict:
    """raw/cc3m.tsv (40 stand-in items), its index built with a tiny CLIP, and a tiny chat run trained on caption
    samples whose prompts vary (so the Describe prompt must come from the run's data)."""
    from helpers import tiny_run_cfg

    from vlmtune.data.dataset import synthesize
    from vlmtune.retrieval.tiny import build_tiny
    from vlmtune.train.loop import train

    root = tmp_path_factory.mktemp("shop")
    assert main(["data", "standin", "fashion-retrieval", "--out", str(root / "raw"), "--n", "40", "--size", "32"]) == 0
    clip = build_tiny("clip", root / "tiny-clip", image_size=32)
    assert main(["retrieve", "index", "--model", str(clip), "--catalogue", str(root / "raw" / "cc3m.tsv"),
                 "--out", str(root / "index")]) == 0
    synthesize(root / "captions", "fashion", 24, seed=0, size=32, caption_fraction=1.0, val=0.25, test=0.0)
    cfg = RunCfg.from_dict(tiny_run_cfg(root, root / "captions", name="shop-chat",
                                        train={"max_steps": 2, "eval_every": 0, "save_every": 2}))
    train(cfg)
    with open(root / "raw" / "cc3m.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return {"root": root, "index": root / "index", "run": cfg.run_dir, "captions": root / "captions",
            "catalogue": rows, "urls": {r["item_url"] for r in rows}}


def _scripted(app) -> Script:
    predictor = app.state.vlmtune.predictor
    tok = predictor.loaded.processor.tokenizer
    return Script(predictor.loaded.model, tok.encode(ANSWER, add_special_tokens=False), tok.eos_token_id)


@pytest.fixture(scope="module")
def server(shop):
    from vlmtune.serve import build_app

    app = build_app(shop["run"], ServeCfg(model_name="tiny", max_tokens=64), background=False, index=shop["index"])
    script = _scripted(app)
    s = Server(app)
    yield s
    s.stop()
    script.remove()


def _client(shop, **limits):
    from starlette.testclient import TestClient

    from vlmtune.serve import build_app

    app = build_app(shop["run"], ServeCfg(model_name="tiny", **limits), background=False, index=shop["index"])
    return TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)


def _uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _expected(shop, text=None, image=None, k=4) -> list[dict]:
    """What `vlmtune retrieve --index` finds for the same query (the CLI's own search), as the API shows items."""
    from vlmtune.retrieval.index import Retriever

    found = Retriever.load(shop["index"]).search(text, image, k)
    return [{"rank": r["rank"], "score": r["score"], "id": r["id"], "caption": r["caption"],
             "item_url": r["item_url"], "image": f"/v1/items/{r['row']}/image"} for r in found]


def _links(items: list[dict]) -> str:
    return "\n\nCatalogue items:\n" + "\n".join(f"{i['rank']}. [{i['caption']}]({i['item_url']}) (score "
                                                f"{i['score']:.3f})" for i in items)


def _item_image(shop, row: int) -> Path:
    return shop["index"].parent / "raw" / shop["catalogue"][row]["image"]


def test_a_chat_answer_carries_the_items_in_its_extra_field_and_as_links_streamed_or_not(server, shop):
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    messages = [{"role": "user", "content": QUERY}]
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=64)
    items = r.model_extra["vlmtune"]["items"]
    assert items == _expected(shop, QUERY)  # the same items, in the same order, as `vlmtune retrieve`
    assert len(items) == 4 and {i["item_url"] for i in items} <= shop["urls"]
    assert r.choices[0].message.content == ANSWER.strip() + _links(items)  # the whole answer, then the links

    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=64, stream=True))
    assert chunks[0].model_extra["vlmtune"] == {"items": items}  # before the first word
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= len(ANSWER.split())

    two = client.chat.completions.create(model="tiny", messages=messages, extra_body={"vlmtune": {"k": 2}})
    assert two.model_extra["vlmtune"]["items"] == items[:2]
    none = client.chat.completions.create(model="tiny", messages=messages, extra_body={"vlmtune": {"k": 0}})
    assert none.choices[0].message.content == ANSWER.strip() and "vlmtune" not in (none.model_extra or {})


def test_the_query_is_the_last_messages_text_its_image_or_both(server, shop):
    photo = _item_image(shop, 7)
    content = [{"type": "image_url", "image_url": {"url": _uri(photo)}}, {"type": "text", "text": "in blue?"}]
    history = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
               {"role": "user", "content": content}]
    image = Image.open(photo).convert("RGB")
    for query, expected in (("auto", _expected(shop, "in blue?", image)), ("text", _expected(shop, "in blue?")),
                            ("image", _expected(shop, None, image))):
        r = httpx.post(server.url + "/v1/chat/completions", json={"messages": history, "vlmtune": {"query": query}},
                       timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["vlmtune"]["items"] == expected, query
    assert _expected(shop, None, image)[0]["item_url"] == shop["catalogue"][7]["item_url"]  # a photo finds its item
    # both: the normalised sum of the two unit embeddings, ranked over every row of the index
    from vlmtune.retrieval.index import CatalogueIndex, Retriever

    retriever = Retriever.load(shop["index"])
    t, i = retriever.encoder.embed_texts(["in blue?"]), retriever.encoder.embed_images([image])
    q = (t + i) / np.linalg.norm(t + i)
    order = np.argsort(-(np.asarray(CatalogueIndex(shop["index"]).vectors) @ q[0]), kind="stable")[:4]
    assert [x["image"] for x in _expected(shop, "in blue?", image)] == [f"/v1/items/{r}/image" for r in order]


def test_retrieve_answers_text_image_and_both(server, shop):
    photo = _item_image(shop, 3)
    image = Image.open(photo).convert("RGB")
    for body, expected in (({"text": QUERY, "k": 5}, _expected(shop, QUERY, k=5)),
                           ({"image": _uri(photo)}, _expected(shop, None, image)),
                           ({"text": QUERY, "image": {"url": _uri(photo)}, "k": 3}, _expected(shop, QUERY, image, 3))):
        r = httpx.post(server.url + "/v1/retrieve", json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json() == {"object": "vlmtune.retrieval", "index": "index", "model": "tiny-clip",
                            "k": len(expected), "items": expected}
    assert httpx.post(server.url + "/v1/retrieve", json={"image": _uri(photo), "k": 1},
                      timeout=60).json()["items"][0]["item_url"] == shop["catalogue"][3]["item_url"]


def test_item_photos_are_served_by_row_and_nothing_else(server, shop):
    r = httpx.get(server.url + "/v1/items/5/image")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == _item_image(shop, 5).read_bytes()
    for row in ("40", "-1", "1e3", "..%2F..%2Fetc%2Fpasswd", "0x1"):
        assert httpx.get(server.url + f"/v1/items/{row}/image").status_code == 404, row
    models = httpx.get(server.url + "/v1/models").json()["data"][0]["vlmtune"]
    assert models["catalogue"] == {"index": "index", "items": 40, "k": 4, "max_k": 50}
    assert models["examples"] == [f"/v1/examples/{i}" for i in range(6)]
    spread = [0, 6, 13, 20, 26, 33]  # six rows spread over the 40 items
    for i, row in enumerate(spread):
        assert httpx.get(server.url + f"/v1/examples/{i}").content == _item_image(shop, row).read_bytes()
    assert httpx.get(server.url + "/v1/examples/6").status_code == 404


def _refused(r, status: int, text: str) -> None:
    assert r.status_code == status, (text, r.status_code, r.text[:300])
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and text in error["message"], error


def test_retrieve_keeps_the_servers_security_checks_and_limits(shop):
    good = {"text": QUERY}
    with _client(shop, max_body_bytes=10_000, max_retrieve_k=8) as client:
        _refused(client.post("/v1/retrieve", content=json.dumps(good).encode(), headers={"content-type": "text/plain"}),
                 415, "Content-Type: application/json")
        _refused(client.post("/v1/retrieve", json=good, headers={"host": "evil.example"}), 400, "is not a name of this")
        _refused(client.post("/v1/retrieve", json=good, headers={"origin": "http://evil.example"}), 403,
                 "requests from pages of 'http://evil.example' are refused")
        _refused(client.post("/v1/retrieve", json={"text": "x" * 20_000}), 413, "exceeds the limit of 10000")
        _refused(client.post("/v1/retrieve", content=b"{", headers={"content-type": "application/json"}), 400,
                 "malformed JSON")
        _refused(client.post("/v1/retrieve", json={}), 400, "give a 'text', an 'image' or both")
        _refused(client.post("/v1/retrieve", json={"text": "  "}), 400, "must not be empty")
        _refused(client.post("/v1/retrieve", json={"text": QUERY, "k": True}), 400, "k: Input should be a valid int")
        _refused(client.post("/v1/retrieve", json={"text": QUERY, "k": 9}), 400, "k 9 exceeds the limit of 8")
        _refused(client.post("/v1/retrieve", json={"text": QUERY, "k": 0}), 400, "greater than or equal to 1")
        _refused(client.post("/v1/retrieve", json={"image": "data:image/png;base64,AAAA"}), 400, "image")
        _refused(client.post("/v1/retrieve", json={"image": "http://127.0.0.1/x.png"}), 400,
                 "remote image URLs are refused")
        thin = io.BytesIO()
        Image.new("RGB", (1, 400), "red").save(thin, format="PNG")
        _refused(client.post("/v1/retrieve", json={"image": "data:image/png;base64," +
                                                   base64.b64encode(thin.getvalue()).decode()}), 400, "aspect ratio")
        chat = {"messages": [{"role": "user", "content": QUERY}]}
        _refused(client.post("/v1/chat/completions", json={**chat, "vlmtune": {"k": 9}}), 400,
                 "vlmtune.k 9 exceeds the limit of 8")
        _refused(client.post("/v1/chat/completions", json={**chat, "vlmtune": {"query": "image"}}), 400,
                 "vlmtune.query is 'image' but messages[0] has no image")
        assert client.post("/v1/retrieve", json=good).status_code == 200  # still serving
    with _client(shop, api_key="s3cret") as client:
        for method, path in (("post", "/v1/retrieve"), ("get", "/v1/items/0/image"), ("get", "/v1/examples/0")):
            _refused(client.request(method, path, json=good if method == "post" else None), 401,
                     "missing or wrong API key")
        key = {"authorization": "Bearer s3cret"}
        assert client.post("/v1/retrieve", json=good, headers=key).status_code == 200
        assert client.get("/v1/items/0/image", headers=key).status_code == 200


def test_a_server_without_an_index_says_so(shop):
    from starlette.testclient import TestClient

    from vlmtune.serve import build_app

    app = build_app(shop["run"], ServeCfg(model_name="tiny"), background=False)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        _refused(client.post("/v1/retrieve", json={"text": QUERY}), 404, "no catalogue index (start it with --index")
        _refused(client.get("/v1/items/0/image"), 404, "no catalogue index")
        _refused(client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": QUERY}],
                                                           "vlmtune": {"k": 3}}), 400, "no catalogue index")
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": QUERY}],
                                                      "max_tokens": 2})
        assert r.status_code == 200 and "vlmtune" not in r.json()  # a plain chat answer
        extra = client.get("/v1/models").json()["data"][0]["vlmtune"]
        assert extra["catalogue"] is None and len(extra["examples"]) == 6  # examples from the run's data


def test_serve_names_a_missing_index(shop, capsys):
    assert main(["serve", "--model", str(shop["run"]), "--index", str(shop["root"] / "nope")]) == 2
    err = capsys.readouterr().err
    assert f"vlmtune serve: error: no such index directory: {shop['root'] / 'nope'}" in err and "Traceback" not in err


def test_the_describe_prompt_and_examples_come_from_the_run(shop, tmp_path, fashion_dir):
    from helpers import tiny_run_cfg

    from vlmtune.data.store import read_samples
    from vlmtune.serve import page_for
    from vlmtune.serve.app import DEFAULT_CAPTION_PROMPT

    samples = read_samples(shop["captions"])[0]
    page = page_for(shop["run"])
    assert page.caption_prompt == samples[0].question and page.caption_prompt_from.endswith(f"(sample "
                                                                                          f"{samples[0].id})")
    val = [(shop["captions"] / s.images[0]).resolve() for s in samples if s.split == "val"]
    assert page.examples == val[:6] and len(page.examples) == 6
    assert {s.question for s in samples} > {page.caption_prompt}  # several prompts: the run's first, not a guess

    vqa_run = tmp_path / "runs" / "vqa"  # a run whose data has no caption sample: vlmtune's default prompt
    vqa_run.mkdir(parents=True)
    RunCfg.from_dict(tiny_run_cfg(tmp_path, fashion_dir)).save(vqa_run / "run_config.yaml")
    page = page_for(vqa_run)
    assert (page.caption_prompt, page.caption_prompt_from) == (DEFAULT_CAPTION_PROMPT, "default")
    fashion = read_samples(fashion_dir)[0]
    val_then_test = [(fashion_dir / s.images[0]).resolve() for split in ("val", "test") for s in fashion
                     if s.split == split]
    assert page.examples == val_then_test[:6]  # its 5 val images, then the first test image
    plain = page_for(tmp_path)  # not a run: nothing to show but the default
    assert (plain.caption_prompt, plain.examples) == (DEFAULT_CAPTION_PROMPT, [])


def test_links_cannot_break_out_of_their_markdown():
    from vlmtune.serve.catalogue import links_markdown

    items = [{"rank": 1, "score": 0.5, "caption": "a [red] top\nnew \\ line", "item_url": "https://s.example/a b(1)"},
             {"rank": 2, "score": 0.25, "caption": "no link", "item_url": "javascript:alert(1)"},
             {"rank": 3, "score": 0.125, "caption": "no url", "item_url": None}]
    assert links_markdown(items, "") == (
        "Catalogue items:\n1. [a \\[red\\] top new \\\\ line](https://s.example/a%20b%281%29) (score 0.500)\n"
        "2. no link (score 0.250)\n3. no url (score 0.125)")
    assert links_markdown([], "answer") == ""


# ---------------------------------------------------------------- the web page in headless Chromium


def _browser(p):
    assert Path(CHROMIUM).is_file() or shutil.which("chromium"), "make test installs Debian's chromium"
    return p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])


def test_the_page_answers_with_product_cards_linking_to_the_catalogue(server, shop):
    from playwright.sync_api import sync_playwright

    api = httpx.post(server.url + "/v1/chat/completions",
                     json={"messages": [{"role": "user", "content": QUERY}]}, timeout=60).json()
    errors = []
    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url + "/")
        page.wait_for_function("document.getElementById('model').textContent.includes('catalogue: 40 items')")
        page.fill("#question", QUERY)
        page.click("#send")
        page.wait_for_selector("#chat .turn.assistant[data-done='1']", timeout=60_000)
        page.wait_for_function("[...document.querySelectorAll('.card img')].length === 4 && "
                               "[...document.querySelectorAll('.card img')].every(i => i.naturalWidth > 0)")
        answer = page.text_content("#chat .turn.assistant")
        links = page.eval_on_selector_all(".cards a.card", "cs => cs.map(c => [c.href, c.target, c.rel])")
        captions = page.eval_on_selector_all(".card .caption", "cs => cs.map(c => c.textContent)")
        browser.close()
    items = api["vlmtune"]["items"]
    assert errors == []
    assert answer == ANSWER.strip()  # the whole streamed answer, every word, and no markdown list under it
    assert [u for u, _, _ in links] == [i["item_url"] for i in items] and {u for u, _, _ in links} <= shop["urls"]
    assert all(t == "_blank" and r == "noopener noreferrer" for _, t, r in links)
    assert captions == [i["caption"] for i in items]


def test_the_page_describes_an_example_image_with_the_runs_caption_prompt(server, shop):
    from playwright.sync_api import sync_playwright

    from vlmtune.serve import page_for

    prompt = page_for(shop["run"]).caption_prompt
    seen = []
    batcher = server.batcher
    submit = batcher.submit
    batcher.submit = lambda job: seen.append((job.sample.question, len(job.images))) or submit(job)
    errors = []
    try:
        with sync_playwright() as p:
            browser = _browser(p)
            page = browser.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url + "/")
            page.wait_for_function("[...document.querySelectorAll('#examples img')].length === 6 && "
                                   "[...document.querySelectorAll('#examples img')].every(i => i.naturalWidth > 0)")
            page.click("#describe")  # no image yet: said so, nothing sent
            no_image = page.text_content("#chat .turn.error")
            page.click("#examples .example >> nth=0")
            page.wait_for_function("document.getElementById('preview').naturalWidth > 0")
            page.click("#describe")
            page.wait_for_selector("#chat .turn.assistant[data-done='1']", timeout=60_000)
            asked = page.text_content("#chat .turn.user")
            answer = page.text_content("#chat .turn.assistant")
            page.wait_for_selector(".cards a.card")
            first = page.get_attribute(".cards a.card >> nth=0", "href")
            browser.close()
    finally:
        batcher.submit = submit
    assert errors == [] and "choose an image first" in no_image
    assert asked == prompt and seen == [(prompt, 1)]  # the run's caption prompt, with the image, reached the model
    assert answer == ANSWER.strip()
    assert first == shop["catalogue"][0]["item_url"]  # searched by the example photo alone: its own item first
