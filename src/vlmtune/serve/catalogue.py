"""The catalogue side of a chat answer (`vlmtune serve --index DIR`): what to search for (`catalogue_query`: the
last user message's text and image), the items found as the API returns them, and as markdown links.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from vlmtune.config import ServeCfg
from vlmtune.data.images import ImageError, check_image_shape
from vlmtune.serve.request import ApiError, ChatOptions, ChatRequest


@dataclass
class Query:
    """What searches the catalogue for one chat request."""

    text: str | None
    image: object | None
    """A PIL image."""
    k: int


def catalogue_query(r: ChatRequest, images: list, cfg: ServeCfg, retriever=None) -> Query | None:
    """The last user message's text and its last image (or one of them, as `vlmtune.query` says), or None when
    nothing is to be searched (no index and no `vlmtune.k`, or k 0)."""
    options = r.vlmtune or ChatOptions()
    if options.k == 0 or (options.k is None and (retriever is None or cfg.retrieve_k == 0)):
        return None
    if retriever is None:
        raise ApiError(400, "vlmtune.k: this server has no catalogue index (start it with --index DIR)", "vlmtune.k")
    k = options.k if options.k is not None else cfg.retrieve_k
    if k > cfg.max_retrieve_k:
        raise ApiError(400, f"vlmtune.k {k} exceeds the limit of {cfg.max_retrieve_k}", "vlmtune.k")
    last, where = r.messages[-1], f"messages[{len(r.messages) - 1}]"
    text = " ".join(p.text for p in last.content if p.type == "text").strip() or None
    image = images[-1] if any(p.type == "image_url" for p in last.content) else None
    if options.query != "auto":
        if (text if options.query == "text" else image) is None:
            raise ApiError(400, f"vlmtune.query is {options.query!r} but {where} has no {options.query}",
                           "vlmtune.query")
        text, image = (text, None) if options.query == "text" else (None, image)
    if text is None and image is None:
        return None
    if image is not None:  # the dual encoder's processor resizes it too
        try:
            check_image_shape(*image.size, where, retriever.encoder.image_processor, cfg.max_aspect_ratio,
                              cfg.max_resized_pixels)
        except ImageError as e:
            raise ApiError(400, str(e), where) from None
    return Query(text, image, k)


def catalogue_items(retriever, text: str | None, image, k: int) -> list[dict]:
    """The top-k items as the API returns them: rank, score, id, caption, item_url and `image`, the item's photo
    on this server (GET, under the API key). The server's file paths are not shown."""
    try:
        found = retriever.search(text, image, k)
    except Exception as e:  # noqa: BLE001 - answered as a server error, the server keeps serving
        raise ApiError(500, f"catalogue search failed: {type(e).__name__}: {e}", None, "server_error") from None
    return [{"rank": it["rank"], "score": it["score"], "id": it["id"], "caption": it["caption"],
             "item_url": it["item_url"], "image": f"/v1/items/{it['row']}/image"} for it in found]


MARKDOWN_TEXT = str.maketrans({"\\": "\\\\", "[": "\\[", "]": "\\]"})
MARKDOWN_URL = str.maketrans({" ": "%20", "(": "%28", ")": "%29", "<": "%3C", ">": "%3E"})


def _web_url(url: str | None) -> bool:
    return bool(url) and urlsplit(url).scheme in ("http", "https") and bool(urlsplit(url).netloc)


def links_markdown(items: list[dict], after: str) -> str:
    """The items as a numbered markdown list of links, to append to the answer `after` (for clients that show only
    the text). Only http(s) URLs become links; brackets in captions are escaped, spaces and parentheses in URLs
    percent-encoded, so a caption or URL cannot break out of its link."""
    if not items:
        return ""
    lines = []
    for it in items:
        caption = " ".join(it["caption"].split()).translate(MARKDOWN_TEXT)
        url = it["item_url"]
        if _web_url(url):
            url = url.translate(MARKDOWN_URL)
            caption = f"[{caption}]({url})"
        lines.append(f"{it['rank']}. {caption} (score {it['score']:.3f})")
    return ("\n\n" if after else "") + "Catalogue items:\n" + "\n".join(lines)
