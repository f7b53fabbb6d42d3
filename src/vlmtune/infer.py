"""Predictor: the one generation path, shared by `vlmtune eval`, `vlmtune predict`, evaluation during training,
serving and the demo.

    p = Predictor.from_path("runs/tiny_fashion_vqa")          # a run (its best checkpoint), checkpoint or HF dir
    p.ask(Image.open("x.png"), "What colour is the top?")     # -> "red"
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlmtune.data.sample import Sample, assistant, user
from vlmtune.models.family import Loaded, ModelFamily


def prompt_length(family, batch) -> int:
    """Leading columns of `generate`'s output that are not new tokens: a decoder-only model repeats its
    (left-padded) prompt; an encoder-decoder model starts with its decoder prompt (the decoder start token)."""
    if family.shift_labels:
        return batch.inputs["input_ids"].shape[1]
    decoder = batch.inputs.get("decoder_input_ids")
    return decoder.shape[1] if decoder is not None else 1


@dataclass
class Predictor:
    loaded: Loaded
    family: ModelFamily
    max_new_tokens: int = 16
    num_beams: int = 1
    batch_size: int = 16
    max_length: int = 2048

    @classmethod
    def from_path(cls, path: str | Path, **kwargs) -> Predictor:
        from vlmtune.models import get_family
        from vlmtune.train.checkpoint import load_for_inference

        loaded = load_for_inference(path)
        return cls(loaded=loaded, family=get_family(loaded.family), **kwargs)

    def generate(self, samples: list[Sample], images: list[list]) -> list[str]:
        """Greedy (or beam) answers for each sample's prompt (its messages up to the last assistant turn)."""
        import torch

        model = self.loaded.model
        was_training = model.training
        model.eval()
        answers: list[str] = []
        try:
            for i in range(0, len(samples), self.batch_size):
                chunk, chunk_images = samples[i : i + self.batch_size], images[i : i + self.batch_size]
                batch = self.family.encode(self.loaded.processor, chunk, chunk_images, "generate", self.max_length)
                batch = batch.to(model.device)
                with torch.inference_mode():
                    out = model.generate(
                        **batch.inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                        num_beams=self.num_beams,
                    )
                new = out[:, prompt_length(self.family, batch) :]
                texts = self.loaded.processor.tokenizer.batch_decode(new, skip_special_tokens=True)
                answers.extend(t.strip() for t in texts)
        finally:
            model.train(was_training)
        return answers

    def loglik(self, samples: list[Sample], images: list[list]) -> list[float]:
        """Mean log-probability per token of each sample's assistant turns (its answer or caption) given the rest:
        how likely the model finds that text for that image (retrieval scores, answer ranking)."""
        import torch

        from vlmtune.models.family import accepts_logits_to_keep, forward_losses, logit_prefix_of

        model = self.loaded.model
        was_training = model.training
        model.eval()
        scores: list[float] = []
        try:
            for i in range(0, len(samples), self.batch_size):
                chunk, chunk_images = samples[i : i + self.batch_size], images[i : i + self.batch_size]
                batch = self.family.encode(self.loaded.processor, chunk, chunk_images, "train", self.max_length)
                inputs = dict(batch.to(model.device).inputs)
                labels = inputs.pop("labels")
                with torch.inference_mode():
                    sums, counts = forward_losses(model, self.family, inputs, labels, accepts_logits_to_keep(model),
                                                  logit_prefix_of(self.family, model))
                scores.extend((-sums / counts.clamp(min=1)).tolist())
        finally:
            model.train(was_training)
        return scores

    def ask(self, image, question: str) -> str:
        """One image (or None) and one question -> the answer."""
        images = [image] if image is not None else []
        sample = Sample(id="ask", messages=[user(question, n_images=len(images)), assistant("?")],
                        images=["image"] * len(images))
        return self.generate([sample], [images])[0]
