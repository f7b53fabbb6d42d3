"""Label masking: the loss is computed on the assistant's answer tokens and the end token, nothing else.

Shared by every family's `encode`. The method works on any chat template that renders a conversation as a
prefix-stable string (rendering the first k turns gives a prefix of rendering k+1 turns):

1. tokenize the conversation with one placeholder token per image (what the chat template writes);
2. each assistant turn spans from the end of "turns before it + generation prompt" to the end of the turn,
   which includes the end-of-turn token the template writes (e.g. `</s>`), so generation learns to stop;
3. map those positions into the processor's output, where each image placeholder was expanded into the
   image's feature tokens — checking, token by token, that the two sequences agree outside the images.

Anything that does not line up raises an error naming the sample instead of training on the wrong tokens.
`expanded_labels` does step 3 for a whole batch; `check_length` is the one "sample too long" error of every family.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from vlmtune.models.family import SampleTooLong

IGNORE_INDEX = -100

Render = Callable[[list[dict], bool], str]
"""render(messages, add_generation_prompt) -> the chat template's text."""


def assistant_spans(tokenize: Callable[[list[str]], list[list[int]]], render: Render, messages: list[dict],
                    sample_id: str):
    """Token ids of the whole conversation and the [start, end) token span of each assistant turn.

    `tokenize` takes a list of texts (one batched tokenizer call for the conversation and all its prefixes)."""
    turns = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    texts = [render(messages, False)]
    for k in turns:
        texts.append(render(messages[:k], True))
        texts.append(texts[0] if k + 1 == len(messages) else render(messages[: k + 1], False))
    full, *prefixes = tokenize(texts)
    spans = []
    for k, before, through in zip(turns, prefixes[0::2], prefixes[1::2], strict=True):
        if full[: len(before)] != before or full[: len(through)] != through:
            raise ValueError(
                f"sample {sample_id!r}: the chat template does not render turn {k} as a prefix of the conversation; "
                "cannot tell answer tokens from prompt tokens"
            )
        if len(through) <= len(before):
            raise ValueError(f"sample {sample_id!r}: assistant turn {k} renders to no tokens (empty answer?)")
        spans.append((len(before), len(through)))
    return full, spans


def answer_spans(tokenize: Callable[[list[str]], list[list[int]]], render: Render, messages: list[dict],
                 sample_id: str, end_id: int, end_token: str) -> tuple[list[int], list[tuple[int, int]]]:
    """`assistant_spans`, each span cut after its turn's end token (`through_end_token`): the trained tokens."""
    ids, spans = assistant_spans(tokenize, render, messages, sample_id)
    return ids, [(start, through_end_token(ids, start, end, end_id, sample_id, end_token)) for start, end in spans]


def through_end_token(ids: list[int], start: int, end: int, end_id: int, sample_id: str, end_token: str) -> int:
    """The end of an assistant span `ids[start:end]` cut after its first `end_id` (the turn's end token, which
    generation stops at: trained); what the template writes after it (ChatML's "\\n") is not trained. Raises
    ValueError naming the sample when the turn has no `end_token`."""
    if end_id not in ids[start:end]:
        raise ValueError(f"sample {sample_id!r}: an assistant turn does not end with {end_token}")
    return ids.index(end_id, start, end) + 1


def labels_for_expanded(
    unexpanded: Sequence[int],
    spans: list[tuple[int, int]],
    expanded: Sequence[int],
    image_token_id: int | Collection[int],
    tokens_per_image: Sequence[int],
    sample_id: str,
) -> list[int]:
    """Labels over `expanded` (the processor's ids, no padding): the `spans` of `unexpanded` keep their ids, the rest
    is IGNORE_INDEX. The k-th placeholder in `unexpanded` (a token of `image_token_id`, or of any of its ids: several
    for a family with image and video placeholders, e.g. Qwen2-VL's `<|image_pad|>` and `<|video_pad|>`) must be a run
    of `tokens_per_image[k]` of the same id in `expanded`; `tokens_per_image` lists the placeholders in text order."""
    placeholders = {image_token_id} if isinstance(image_token_id, int) else set(image_token_id)
    position = [0] * len(unexpanded)  # unexpanded index -> expanded index
    j = 0
    k = 0
    for i, tok in enumerate(unexpanded):
        position[i] = j
        if tok in placeholders:
            if k >= len(tokens_per_image):
                raise ValueError(f"sample {sample_id!r}: more image/video placeholders than images and videos")
            n = tokens_per_image[k]
            if list(expanded[j : j + n]) != [tok] * n:
                raise ValueError(f"sample {sample_id!r}: placeholder {k} (token {tok}) is not {n} such tokens in the "
                                 "processor's output")
            j += n
            k += 1
        else:
            if j >= len(expanded) or expanded[j] != tok:
                raise ValueError(f"sample {sample_id!r}: processor output differs from the chat template at token {i}")
            j += 1
    if j != len(expanded):
        raise ValueError(f"sample {sample_id!r}: processor output has {len(expanded) - j} unexpected trailing tokens")
    labels = [IGNORE_INDEX] * len(expanded)
    for start, end in spans:
        for i in range(start, end):
            labels[position[i]] = unexpanded[i]
    return labels


def expanded_labels(input_ids, attention_mask, image_token_id: int | Collection[int], sample_ids: Sequence[str],
                    rows: Sequence[tuple[Sequence[int], list[tuple[int, int]], Sequence[int]]]):
    """(batch, seq) labels of a right-padded batch of processor ids: row b is `labels_for_expanded` of `rows[b]`
    = (ids with one placeholder per image or video, assistant spans, tokens per placeholder in text order) against
    row b's unpadded ids; padding and everything outside the spans is IGNORE_INDEX. `image_token_id`: the placeholder
    id, or the ids (image and video) of a family with several."""
    import torch

    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for b, (sample_id, (unexpanded, spans, tokens_per_image)) in enumerate(zip(sample_ids, rows, strict=True)):
        expanded = input_ids[b][attention_mask[b].bool()].tolist()
        lab = labels_for_expanded(unexpanded, spans, expanded, image_token_id, tokens_per_image, sample_id)
        labels[b, : len(lab)] = torch.tensor(lab)
    return labels


def check_length(sample_id: str, n_image: int, n_text: int, max_length: int, resize: bool = False,
                 n_video: int = 0) -> None:
    """Raise `SampleTooLong`, naming the sample and its image, video and text tokens, when they exceed `max_length`:
    vlmtune never truncates (cut image tokens break the model's input; a cut answer loses its end token). `resize`
    names resizing the images among the fixes (families whose image tokens grow with the image); `n_video`: the
    tokens of the sample's videos (families that take video natively), named with fewer frames as a fix."""
    n = n_image + n_video + n_text
    if n > max_length:
        fixes = "shorten the text, resize the images" if resize else "shorten the text"
        videos = ""
        if n_video:
            fixes += ", sample fewer or smaller video frames"
            videos = f" + {n_video} video tokens"
        raise SampleTooLong(
            f"sample {sample_id!r}: {n} tokens ({n_image} image tokens{videos} + {n_text} text tokens) exceed "
            f"max_length={max_length}; vlmtune never truncates: raise max_length, {fixes} or drop the sample"
        )


def trained_tokens(tokenizer, input_ids: Sequence[int], labels: Sequence[int]) -> list[str]:
    """The tokens the loss is computed on, as strings: what the label-mask tests print and assert."""
    pairs = zip(input_ids, labels, strict=True)
    return [tokenizer.convert_ids_to_tokens(int(t)) for t, lab in pairs if lab != IGNORE_INDEX]
