"""models/labels.py's batch helpers, on hand-built ids: the labels of a right-padded batch (`expanded_labels`) and the
one "sample too long" error every family raises (`check_length`)."""

import pytest
import torch

from vlmtune.models import SampleTooLong
from vlmtune.models.labels import IGNORE_INDEX, check_length, expanded_labels

IMG = 9
X = IGNORE_INDEX


def test_expanded_labels_train_the_answer_spans_only_never_images_prompt_or_padding():
    # a: <s> <image> "q" "a1" "a2" with 3 feature tokens per image, answer = unexpanded[3:5]; b: text only, 3 tokens
    input_ids = torch.tensor([[1, IMG, IMG, IMG, 2, 3, 4], [5, 6, 7, 0, 0, 0, 0]])
    attention_mask = torch.tensor([[1] * 7, [1, 1, 1, 0, 0, 0, 0]])
    rows = [([1, IMG, 2, 3, 4], [(3, 5)], [3]), ([5, 6, 7], [(1, 3)], [])]
    labels = expanded_labels(input_ids, attention_mask, IMG, ["a", "b"], rows)
    assert labels.tolist() == [[X, X, X, X, X, 3, 4], [X, 6, 7, X, X, X, X]]
    assert labels.dtype == input_ids.dtype


def test_expanded_labels_name_the_sample_whose_processor_ids_disagree():
    input_ids = torch.tensor([[1, 2, 3], [5, 8, 7]])
    attention_mask = torch.ones_like(input_ids)
    rows = [([1, 2, 3], [(1, 3)], []), ([5, 6, 7], [(1, 3)], [])]
    with pytest.raises(ValueError, match="sample 'b': processor output differs from the chat template at token 1"):
        expanded_labels(input_ids, attention_mask, IMG, ["a", "b"], rows)


def test_check_length_passes_a_sample_that_fits_and_names_one_that_does_not():
    check_length("q7", 16, 24, 40)  # exactly max_length: fits
    with pytest.raises(SampleTooLong) as e:
        check_length("q7", 16, 25, 40)
    assert str(e.value) == ("sample 'q7': 41 tokens (16 image tokens + 25 text tokens) exceed max_length=40; vlmtune "
                            "never truncates: raise max_length, shorten the text or drop the sample")
    with pytest.raises(SampleTooLong) as e:
        check_length("q8", 30, 11, 40, resize=True)
    assert str(e.value) == ("sample 'q8': 41 tokens (30 image tokens + 11 text tokens) exceed max_length=40; vlmtune "
                            "never truncates: raise max_length, shorten the text, resize the images or drop the sample")


VID = 8


def test_expanded_labels_take_image_and_video_placeholders_in_text_order():
    # <s> <video> <image> "q" "a": the video is 3 tokens, the image 2 (tokens per placeholder in text order)
    input_ids = torch.tensor([[1, VID, VID, VID, IMG, IMG, 2, 3]])
    rows = [([1, VID, IMG, 2, 3], [(4, 5)], [3, 2])]
    labels = expanded_labels(input_ids, torch.ones_like(input_ids), (IMG, VID), ["v"], rows)
    assert labels.tolist() == [[X, X, X, X, X, X, X, 3]]
    swapped = [([1, VID, IMG, 2, 3], [(4, 5)], [2, 3])]  # a count in the wrong order does not line up
    with pytest.raises(ValueError, match=r"sample 'v': placeholder 1 \(token 9\) is not 3 such tokens"):
        expanded_labels(input_ids, torch.ones_like(input_ids), (IMG, VID), ["v"], swapped)
    with pytest.raises(ValueError, match=r"sample 'v': placeholder 0 \(token 9\)"):  # a video id is not an image id
        expanded_labels(input_ids, torch.ones_like(input_ids), IMG, ["v"], [([1, VID, IMG, 2, 3], [(4, 5)], [2])])


def test_check_length_names_the_video_tokens_and_fewer_frames():
    check_length("v1", 10, 20, 60, n_video=30)
    with pytest.raises(SampleTooLong) as e:
        check_length("v1", 10, 21, 60, n_video=30)
    assert str(e.value) == ("sample 'v1': 61 tokens (10 image tokens + 30 video tokens + 21 text tokens) exceed "
                            "max_length=60; vlmtune never truncates: raise max_length, shorten the text, sample fewer "
                            "or smaller video frames or drop the sample")
