"""`vlmtune export`: a run (or checkpoint) -> a plain Hugging Face model directory that needs nothing else.

    vlmtune export --model runs/my_run --out exported/           # full fine-tune: the best checkpoint's weights
    vlmtune export --model runs/my_lora_run --out exported/ --merge   # LoRA: the adapter merged into its base

The directory holds the weights, config.json, generation_config.json and every processor file (image processor,
tokenizer, chat template), plus what the family's `export_extras` adds for other loaders (SmolVLM's
video_preprocessor_config.json, BLIP-2's chat template), so `AutoModelForImageTextToText.from_pretrained(out)` and
`AutoProcessor.from_pretrained(out)` load it with no vlmtune, no adapter and no base model beside it (SmolVLM's
processor, as for its checkpoints, with torchvision and num2words installed). An adapter
run without `--merge` is refused: its weights mean nothing without the base, and the point of an export is a
directory that stands alone (the adapter itself is already in the run's checkpoint for PEFT users).
It is written to a temporary directory and renamed into place, and never over an existing directory.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from vlmtune.infer import checkpoint_identity
from vlmtune.io import atomic_dir
from vlmtune.models import family_of, get_family
from vlmtune.runs import META, base_path, load_for_inference, resolve_model_dir, run_config_of

REQUIRED_FILES = ("config.json", "generation_config.json")


def export(model: str | Path, out: str | Path, merge: bool = False) -> dict:
    """Write the model at `model` (run, checkpoint or model directory) to `out` as a standalone HF directory."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: already exists; export never overwrites (choose a new --out)")
    source = resolve_model_dir(model)
    meta = json.loads((source / META).read_text()) if (source / META).is_file() else {}
    if meta.get("adapter") and not merge:
        raise ValueError(f"{source}: a LoRA adapter; pass --merge to write a standalone model (adapter merged "
                         "into its base), or use the checkpoint directory itself with PEFT")
    # a QLoRA adapter is merged into the full-precision base: merging into 4/8-bit weights would round them again
    loaded = load_for_inference(source, quantized=False)
    model_obj = loaded.model
    if meta.get("adapter"):
        model_obj = model_obj.merge_and_unload()
    with atomic_dir(out) as tmp:
        tmp.mkdir()
        model_obj.save_pretrained(tmp, safe_serialization=True)
        loaded.processor.save_pretrained(tmp)
        image_processor = getattr(loaded.processor, "image_processor", None)
        if image_processor is not None and not (tmp / "preprocessor_config.json").is_file():
            # transformers 5 nests it in processor_config.json; older loaders (the transformers vLLM pins, other
            # serving stacks, converters) read preprocessor_config.json: the same settings, on their own too
            image_processor.save_pretrained(tmp)
        extras = get_family(loaded.family).export_extras
        if extras is not None:  # files other loaders (vLLM) need beside the processor's own
            extras(loaded.processor, tmp)
        hub_layout(tmp)
        missing = [f for f in REQUIRED_FILES if not (tmp / f).is_file()]
        if missing:
            raise RuntimeError(f"{tmp}: export is missing {missing}")
        info = {"family": loaded.family, "exported_from": str(source), "merged": bool(meta.get("adapter")),
                "step": meta.get("step")}
        if meta.get("quantization"):
            info["trained_on_quantized_base"] = meta["quantization"]
        (tmp / META).write_text(json.dumps(info, indent=2) + "\n")
    return {"out": str(out), **info, "files": sorted(p.name for p in out.iterdir())}


FLAT_TOWERS = ("clip_vision_model", "siglip_vision_model", "siglip2_vision_model")
"""Vision towers (their config's model_type) that transformers 5 builds flat (no `vision_model` submodule) and saves
as `vision_tower.embeddings...` (LFM2-VL: `model.vision_tower.embeddings...`) when the model was not loaded from a
checkpoint in the hub's layout (the built-in model, `vlmtune compose`, a tiny model; LFM2-VL always), where the hub
checkpoints and the loaders of other tools (vLLM 0.32, transformers < 5) have `vision_tower.vision_model.
embeddings...`. transformers 5 reads both (its conversion mapping drops the prefix)."""
TOWER_PREFIXES = ("vision_tower.", "model.vision_tower.")


def hub_layout(model_dir: Path, dry: bool = False) -> int:
    """Rename a saved LLaVA / LLaVA-NeXT / PaliGemma / Gemma 3 / LFM2-VL directory's flat vision-tower keys to the
    hub's layout (`vision_tower.X` -> `vision_tower.vision_model.X`, in every shard and the shard index), so that vLLM
    and older transformers load the export. Returns the number of keys renamed (0: already in the hub's layout, or
    another kind of model). `dry`: count them, change nothing."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    config = json.loads((model_dir / "config.json").read_text())
    tower = (config.get("vision_config") or {}).get("model_type")
    if tower not in FLAT_TOWERS:
        return 0
    def tower(key: str) -> str | None:  # the tower prefix of a flat tower key, else None
        return next((p for p in TOWER_PREFIXES if key.startswith(p) and not key.startswith(p + "vision_model.")), None)

    flat = lambda k: tower(k) is not None  # noqa: E731
    new = lambda k: tower(k) + "vision_model." + k.removeprefix(tower(k)) if flat(k) else k  # noqa: E731
    renamed = 0
    for shard in sorted(model_dir.glob("*.safetensors")):
        with safe_open(shard, "pt") as f:
            keys, metadata = list(f.keys()), f.metadata()
            if not any(flat(k) for k in keys):
                continue
            renamed += sum(flat(k) for k in keys)
            if dry:
                continue
            tensors = {new(k): f.get_tensor(k) for k in keys}
        save_file(tensors, shard, metadata=metadata or {"format": "pt"})
    index = model_dir / "model.safetensors.index.json"
    if renamed and index.is_file() and not dry:
        data = json.loads(index.read_text())
        data["weight_map"] = {new(k): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2) + "\n")
    return renamed


VLLM_EXPORT = "vllm-export"
"""Where `for_vllm` keeps a run checkpoint's export, beside the checkpoint: best/ -> best.vllm-export/."""


def for_vllm(model: str | Path, lora: bool = False) -> dict:
    """What `vlmtune serve --engine vllm` serves for `model` (a run, checkpoint, adapter or model directory):
    {"path", "name", "family", "chat_template", "adapter", "lora_rank", "dtype", "max_length"}.

    A run's checkpoint (an adapter merged, or a full model) is exported once beside it (`<ckpt>.vllm-export/`, made
    again when the checkpoint changed), so vLLM reads a plain HF directory with every processor file; a `vlmtune
    export`, or a directory in the hub's layout that needs no extra file, is served as it is. With `lora`, an
    adapter is served on its base instead (vLLM's --enable-lora): refused for an adapter that also trains whole
    modules (peft's modules_to_save: a projector trained in full), which vLLM cannot load as LoRA."""
    source = resolve_model_dir(model)
    meta = json.loads((source / META).read_text()) if (source / META).is_file() else {}
    cfg = run_config_of(source)
    name = cfg.name if cfg is not None else source.name
    family = meta.get("family") or family_of(source)
    config = json.loads((source / "config.json").read_text()) if (source / "config.json").is_file() else {}
    # the dtype it was trained (and is evaluated) in, or the checkpoint's: never vLLM's "auto", which serves a
    # float32 checkpoint in bfloat16 ("Downcasting torch.float32 to torch.bfloat16"), other answers than eval's
    dtype = meta.get("dtype") or config.get("dtype") or config.get("torch_dtype") or "auto"
    info = {"name": name, "family": family, "adapter": None, "lora_rank": None, "dtype": dtype,
            "max_length": cfg.data.max_length if cfg is not None else None}
    if lora:
        if not meta.get("adapter"):
            raise ValueError(f"{source}: --lora serves a LoRA adapter on its base, and this is a full model")
        adapter = json.loads((source / "adapter_config.json").read_text())
        if adapter.get("modules_to_save"):
            raise ValueError(f"{source}: the adapter also trains {adapter['modules_to_save']} in full, which vLLM "
                             "cannot load as LoRA; serve the merged model (leave out --lora)")
        base = base_path(source, meta["base"])
        if Path(base).is_dir():  # a local base (a run's base/, a composed model): in the hub's layout too
            base = str(_exported(Path(base), merge=False))
        return {**info, "path": base, "adapter": str(source), "lora_rank": adapter.get("r"),
                "chat_template": _chat_template(source)}
    if "exported_from" in meta or (not meta and not hub_layout(source, dry=True)
                                   and get_family(family).export_extras is None):
        # a `vlmtune export`, or another HF directory other tools load as it is
        return {**info, "path": str(source), "chat_template": _chat_template(source)}
    out = _exported(source, merge=bool(meta.get("adapter")))
    return {**info, "path": str(out), "chat_template": _chat_template(out)}


def _exported(source: Path, merge: bool) -> Path:
    """`source` exported beside itself (`<source>.vllm-export/`), made again when `source` changed."""
    out = source.parent / f"{source.name}.{VLLM_EXPORT}"
    identity = checkpoint_identity(source)
    made = out / META
    if not (made.is_file() and json.loads(made.read_text()).get("checkpoint_identity") == identity):
        if out.exists():
            shutil.rmtree(out)  # vlmtune's own cache of an older checkpoint
        print(f"exporting {source} for vLLM into {out}", file=sys.stderr)
        export(source, out, merge=merge)
        written = json.loads(made.read_text())
        made.write_text(json.dumps({**written, "checkpoint_identity": identity}, indent=2) + "\n")
    return out


def _chat_template(model_dir: Path) -> str | None:
    """The chat template file among the processor files (transformers 5 writes chat_template.jinja), passed to vLLM
    explicitly: vLLM's own default for an architecture is not necessarily the template the run trained with. None:
    vLLM takes the processor's (an older export's chat_template.json is read by the processor itself)."""
    path = model_dir / "chat_template.jinja"
    return str(path) if path.is_file() else None
