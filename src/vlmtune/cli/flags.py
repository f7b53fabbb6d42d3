"""The argparse helpers several nouns share: where a command that loads a model runs it (--device, --dtype)."""

from __future__ import annotations


def add_device_args(p, dtype: bool = True) -> None:
    """--device (and --dtype): the inference placement policy of every command that loads a model
    (models/device.py). `retrieve` takes --device only: its --dtype is the index's vector dtype."""
    from vlmtune.models.device import DTYPES

    p.add_argument("--device", default="auto",
                   help="auto (default: the GPU when there is one, else MPS, else CPU), cuda, cuda:N, mps or cpu")
    if dtype:
        p.add_argument("--dtype", default=None, choices=DTYPES,
                       help="default: the dtype the run trained in (model.dtype), else the checkpoint's config.json")
