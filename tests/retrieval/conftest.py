"""Fixtures for the retrieval tests: tiny random CLIP / SigLIP checkpoints and drawn fashion catalogues, built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmtune.data.synthetic import fashion


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny random dual encoders on 32x32 images: clip, clip_other (another seed), clip_dim32, siglip."""
    from vlmtune.retrieval.tiny import build_tiny

    root = tmp_path_factory.mktemp("dual")
    return {
        "clip": build_tiny("clip", root / "clip", image_size=32),
        "clip_other": build_tiny("clip", root / "clip_other", image_size=32, seed=1),
        "clip_dim32": build_tiny("clip", root / "clip_dim32", image_size=32, dim=32),
        "siglip": build_tiny("siglip", root / "siglip", image_size=32),
    }


@pytest.fixture(scope="session")
def caption_data(tmp_path_factory) -> Path:
    """A fashion dataset of caption samples only: 240 train / 40 val / 40 test images at 32x32."""
    from vlmtune.data.dataset import synthesize

    root = tmp_path_factory.mktemp("fashion_captions")
    synthesize(root, "fashion", 320, seed=0, size=32, caption_fraction=1.0, val=0.125, test=0.125)
    return root


def write_catalogue(root: Path, n: int, seed: int = 5) -> Path:
    """`root/catalogue.tsv` (caption, image, item_url) with `n` drawn garments under `root/img/`."""
    (root / "img").mkdir(parents=True)
    lines = ["caption\timage\titem_url"]
    for i, (sample, image) in enumerate(fashion(n, seed=seed, size=32, caption_fraction=1.0)):
        image.save(root / "img" / f"{i:04d}.png")
        lines.append(f"{sample.target}\timg/{i:04d}.png\thttps://shop.example/item/{i:04d}")
    (root / "catalogue.tsv").write_text("\n".join(lines) + "\n")
    return root / "catalogue.tsv"


@pytest.fixture(scope="session")
def catalogue(tmp_path_factory) -> Path:
    """A 150-item CC3M-style TSV catalogue."""
    return write_catalogue(tmp_path_factory.mktemp("catalogue"), 150)
