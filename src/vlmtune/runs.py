"""Reading a run back for inference: which directory a `--model` names, the config its run trained with, and the
model loaded from it on the device and in the dtype of the inference policy (models/device.py), or only its family
and processor (`load_processor`, a hub id too, for `vlmtune data check` and `show-mask`). Writing and resuming
checkpoints is train/checkpoint.py; everything that only reads a run (eval, predict, serve, export, the chart
pipeline, the data commands) reads it through here and never imports train.

    runs/<name>/
      run_config.yaml                      the resolved config: `run_config_of`
      checkpoints/step-N/                  model files + META; trainer/state.json once the checkpoint is complete
      best/                                the checkpoint with the best validation metric (model files only)
      base/                                the base weights an adapter needs when the base was built, not downloaded
    a checkpoint's model files:
      config.json + model.safetensors      (full fine-tune)   or   adapter_config.json + adapter_model.safetensors
      tokenizer / processor files          (everything AutoProcessor needs)
      vlmtune.json (META)                  family, whether it is an adapter, its base model, step, metrics

    loaded = load_for_inference("runs/tiny_fashion_vqa", device="cpu")   # its best checkpoint, in the run's dtype
    run_config_of("runs/tiny_fashion_vqa/best").eval.max_new_tokens      # the settings it trained with

`run_config_of` checks what the config's own dataclasses tell. The checks that need the task registry (eval, a
layer above) are `train.checks.check_run`, which the commands that read a run back call on it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from vlmtune.config import ModelCfg, OcrCfg, QuantCfg, RunCfg, VideoCfg, check_model_path
from vlmtune.models import FAMILIES, family_of, get_family
from vlmtune.models import device as policy
from vlmtune.models.family import Loaded

META = "vlmtune.json"
TRAINER = "trainer"
"""A checkpoint's trainer state (train/checkpoint.py); a step-N directory without trainer/state.json is incomplete."""
RUN_BASE = "@run/base"
"""meta["base"] of an adapter whose base model was built (not downloaded) and saved in the run's base/ directory."""


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete step-N checkpoints, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := re.fullmatch(r"step-(\d+)", p.name))]
    return [p for _, p in sorted(found) if (p / TRAINER / "state.json").is_file()]


def resolve_model_dir(path: str | Path) -> Path:
    """A run directory -> its best checkpoint (else its latest); a checkpoint or HF model directory -> itself."""
    check_model_path(path)  # a missing local run is named as such
    path = Path(path)
    if (path / "run_config.yaml").is_file() and not (path / "config.json").exists():
        if (path / "best" / META).is_file():
            return path / "best"
        done = checkpoints(path)
        if done:
            return done[-1]
        raise FileNotFoundError(f"{path}: a run directory with no checkpoint yet")
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such model directory (expected a run, checkpoint or HF model directory)")
    return path


def run_config_of(model: str | Path | None) -> RunCfg | None:
    """The RunCfg of the run a model belongs to (a run directory, its best/ or checkpoints/step-N/), read from its
    run_config.yaml; None for a model trained outside vlmtune or exported. Checked by its dataclasses only: a command
    that uses it also calls `train.checks.check_run` (the task registry's checks, which `vlmtune train` made)."""
    if model is None:  # `vlmtune eval --url` without --model: a served model, no run to read
        return None
    path = Path(model)
    for d in (path, path.parent, path.parent.parent):
        if (d / "run_config.yaml").is_file():
            return RunCfg.from_file(d / "run_config.yaml")
    return None


def model_video_options(model: str | Path | None) -> VideoCfg:
    """How a model's run sampled videos into frames (`data.video`), so evaluation, prediction and serving take the
    same frames; the defaults (VideoCfg()) for a model without a run."""
    cfg = run_config_of(model)
    return cfg.data.video if cfg is not None else VideoCfg()


def model_ocr_options(model: str | Path | None) -> OcrCfg | None:
    """The OCR settings a model was trained with (`data.ocr`, see data/ocr.py), from the run_config.yaml of the run
    it belongs to; None when it was trained without OCR or outside vlmtune."""
    cfg = run_config_of(model)
    return cfg.data.ocr if cfg is not None else None


def base_fingerprint(model_dir: str | Path) -> str | None:
    """A cheap identity of a local model directory's weights: its config.json (less its path) and, per safetensors
    file, the name, size and sha256 of the first MiB after the header. None for a hub id or a directory without
    safetensors. Two checkpoints of one architecture differ in it; a copy of the same one does not."""
    d = Path(model_dir)
    files = sorted(d.glob("*.safetensors"))
    if not (d / "config.json").is_file() or not files:
        return None
    h = hashlib.sha256()
    config = json.loads((d / "config.json").read_text())
    config.pop("_name_or_path", None)
    h.update(json.dumps(config, sort_keys=True).encode())
    for f in files:
        with f.open("rb") as fh:
            header = int.from_bytes(fh.read(8), "little")
            fh.seek(8 + header)
            h.update(f"{f.name}:{f.stat().st_size}:".encode() + hashlib.sha256(fh.read(1 << 20)).digest())
    return h.hexdigest()


def base_path(model_dir: Path, base: str) -> str:
    if base != RUN_BASE:
        return base
    for parent in (model_dir.parent, model_dir.parent.parent):
        if (parent / "base" / "config.json").is_file():
            return str(parent / "base")
    raise FileNotFoundError(f"{model_dir}: adapter needs the run's base/ directory, which is missing")


def check_base(model_dir: Path, meta: dict, base: str) -> None:
    """Refuse to apply an adapter to a base other than the one it was trained on (a changed local directory)."""
    want = meta.get("base_fingerprint")
    if want and Path(base).is_dir():
        have = base_fingerprint(base)
        if have != want:
            raise ValueError(f"{model_dir}: this adapter was trained on the base at {base}, which now holds other "
                             f"weights (fingerprint {have and have[:12]} != {want[:12]}): restore that base, or pass "
                             "the right one as model.path and train again")


def load_for_inference(path: str | Path, quantized: bool = True, device=None, dtype: str | None = None) -> Loaded:
    """Model + processor from a run, checkpoint, adapter or plain HF model directory, in eval mode, in the dtype the
    run trained in (or `dtype`), on `device` (a torch.device or an `--device` string; None leaves it on the CPU).

    An adapter trained on a quantised base (QLoRA) is loaded on the same quantised base, as it was trained; with
    `quantized=False` on the full-precision base instead (what `export --merge` merges into)."""
    model_dir = resolve_model_dir(path)
    meta = json.loads((model_dir / META).read_text()) if (model_dir / META).is_file() else {}
    dtype = policy.checkpoint_dtype(model_dir, meta, dtype)
    device = policy.resolve_device(device) if isinstance(device, str) else device
    if meta.get("adapter"):
        from peft import PeftModel

        quant = QuantCfg(**meta["quantization"]) if quantized and meta.get("quantization") else None
        base = base_path(model_dir, meta["base"])
        check_base(model_dir, meta, base)
        base_cfg = ModelCfg(family=meta["family"], path=base, quantization=quant, dtype=dtype,
                            revision=meta.get("base_revision"), attn_implementation=meta.get("attn_implementation"),
                            trust_remote_code=bool(meta.get("trust_remote_code", False)))
        base = get_family(meta["family"]).load(base_cfg)
        model = PeftModel.from_pretrained(base.model, model_dir)
        processor = get_family(meta["family"]).load_processor(model_dir)
        loaded = Loaded(model=model, processor=processor, family=meta["family"])
    else:
        family = family_of(model_dir)
        loaded = get_family(family).load(ModelCfg(family=family, path=str(model_dir), dtype=dtype))
    policy.place(loaded.model, device)
    loaded.model.eval()
    return loaded


# ---------------------------------------------------------------- the processor alone (vlmtune data check)


def load_processor(model: str | Path):
    """(family, processor) of a run, checkpoint or model directory, or of a hub id (`llava-hf/llava-1.5-7b-hf`:
    its config.json and processor files are downloaded, or read from the local hub cache; never its weights),
    without loading any weights."""
    if _hub_id(model):
        try:
            family = get_family(family_of(_hub_config_dir(str(model))))
        except ValueError as e:  # a model type no family serves: say so of the id, not of its cache folder
            raise ValueError(f"{model}: {str(e).split(': ', 1)[-1]}") from None
        try:
            return family, family.load_processor(str(model))
        except OSError as e:  # no processor files on the hub, or (offline) not in the cache
            raise FileNotFoundError(f"{model}: the hub model's processor cannot be loaded: {e}") from None
    model_dir = resolve_model_dir(model)
    family = get_family(family_of(model_dir))
    return family, family.load_processor(model_dir)  # the family's way: Qwen's processor needs no torchvision


def _hub_id(model: str | Path) -> bool:
    """A `--model` that names no local path and has the form of a hub id (`org/name` or `name`)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if Path(model).exists() or Path(model).is_absolute():
        return False
    try:
        validate_repo_id(str(model))
    except HFValidationError:
        return False
    return True


def _hub_config_dir(repo_id: str) -> Path:
    """The folder holding `repo_id`'s config.json, fetched from the hub (or found in the local cache), with an error
    that says what to do when it cannot be: the id is also a missing local path, so both are named."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    where = f"{repo_id}: no such local directory; as a Hugging Face hub id"
    try:
        return Path(hf_hub_download(repo_id, "config.json")).parent
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise FileNotFoundError(f"{where}, its files are not in the local cache and HF_HUB_OFFLINE=1 forbids "
                                    "downloading them: unset HF_HUB_OFFLINE (only config and processor files are "
                                    "fetched, no weights), or give a local model directory") from None
        raise FileNotFoundError(f"{where}, it cannot be fetched (no connection to the hub?) and is not in the "
                                "local cache") from None
    except GatedRepoError:
        raise FileNotFoundError(f"{where}, it is gated: accept its licence on huggingface.co and log in "
                                "(`hf auth login`)") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{where}, no such model (or a private one: log in with `hf auth login`)") from None
    except EntryNotFoundError:
        raise FileNotFoundError(f"{where}, it has no config.json (not a transformers model)") from None
    except HfHubHTTPError as e:
        raise FileNotFoundError(f"{where}, the hub answered: {e}") from None


def resolve_model(model: str | Path | None):
    """`--model` of `vlmtune data check|show-mask` -> (family, processor): a family name -> (its family, None), for
    what the family can take; a run, checkpoint or model directory or a hub id -> its family and processor (also
    token lengths); None -> (None, None)."""
    if model is None:
        return None, None
    if str(model) in FAMILIES and not Path(model).exists():
        return FAMILIES[str(model)], None
    return load_processor(model)


def image_token_report(model: str | Path, sizes: list[tuple[int, int]]) -> dict:
    """Image tokens per image of each size for `model`'s family and processor settings."""
    family, processor = load_processor(model)
    return {"model": str(model), "family": family.name,
            "image_tokens": {f"{w}x{h}": family.image_tokens(processor, w, h) for w, h in sizes}}
