"""`vlmtune serve --engine vllm`: the run exported for vLLM (merged adapter, every processor file, chat template),
vLLM's flags from the run (name, dtype, greedy default, image limit, prompt length, LoRA, tensor parallelism), the
server started in its own environment and stopped cleanly, and clear errors. vLLM itself is replaced by
tests/fake_vllm.py (what the flags do inside vLLM is the parity test's business: `make test-vllm`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, tiny_run_cfg
from serving import _free_port

from vlmtune import cli
from vlmtune.config import RunCfg
from vlmtune.export import for_vllm
from vlmtune.remote import RemotePredictor
from vlmtune.serve.vllm import VllmModel, vllm_command

FAKE = Path(__file__).parents[1] / "fake_vllm.py"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, fashion_dir):
    from vlmtune.train.loop import train

    tmp = tmp_path_factory.mktemp("vllm-run")
    cfg = RunCfg.from_dict(tiny_run_cfg(tmp, fashion_dir, lora={"enabled": True, "r": 4},
                                        train={"max_steps": 2, "save_every": 2, "eval_every": 2}))
    return Path(train(cfg)["run_dir"])


def _fake_python(tmp_path: Path, fail: str | None = None) -> Path:
    script = tmp_path / "python"
    env = f"FAKE_VLLM_FAIL={json.dumps(fail)} " if fail else ""
    script.write_text(f"#!/bin/sh\n{env}exec {sys.executable} {FAKE} \"$@\"\n")
    script.chmod(0o755)
    return script


def test_the_run_is_exported_once_for_vllm_with_its_processor_files(lora_run):
    info = for_vllm(lora_run)
    out = Path(info["path"])
    assert out.name == "best.vllm-export" and out.parent == lora_run
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "preprocessor_config.json", "chat_template.jinja"} <= files, files
    assert info["chat_template"] == str(out / "chat_template.jinja")
    assert (info["name"], info["dtype"], info["max_length"], info["adapter"], info["family"]) == (
        "t", "float32", 128, None, "llava")
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert for_vllm(lora_run)["path"] == str(out) and (out / "model.safetensors").stat().st_mtime_ns == stamp
    # the plain HF directory loads without vlmtune's classes (the merged weights, the processor)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    assert AutoModelForImageTextToText.from_pretrained(out).config.model_type == "llava"
    assert AutoProcessor.from_pretrained(out).chat_template == (out / "chat_template.jinja").read_text()


def test_lora_serves_the_adapter_on_its_base_and_refuses_what_vllm_cannot_load(lora_run, tmp_path, fashion_dir):
    info = for_vllm(lora_run, lora=True)
    assert info["adapter"] == str(lora_run / "best") and info["lora_rank"] == 4
    assert info["path"] == str(lora_run / "base.vllm-export")  # the run's base in the hub's layout
    argv = vllm_command(Path("/py"), VllmModel(path=info["path"], name="t", adapter=Path(info["adapter"]),
                                               lora_rank=4), tensor_parallel=2)
    assert argv[argv.index("--lora-modules") + 1] == f"t={lora_run / 'best'}" and "--enable-lora" in argv
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    with pytest.raises(ValueError, match="is a full model"):
        for_vllm(lora_run / "base", lora=True)
    from vlmtune.train.loop import train

    cfg = RunCfg.from_dict(tiny_run_cfg(tmp_path, fashion_dir, lora={"enabled": True, "r": 4},
                                        train={"max_steps": 1, "save_every": 1, "eval_every": 0,
                                               "freeze_projector": False}))
    projector_run = train(cfg)["run_dir"]
    with pytest.raises(ValueError, match="cannot load as LoRA; serve the merged model"):
        for_vllm(f"{projector_run}/checkpoints/step-1", lora=True)


def test_serve_engine_vllm_starts_answers_and_stops_cleanly(lora_run, tmp_path):
    """The CLI in its own process: the fake vLLM gets the run's flags, answers an OpenAI request through
    RemotePredictor, and both stop on SIGTERM with status 0."""
    port, record = _free_port(), tmp_path / "record.json"
    env = {**os.environ, "FAKE_VLLM_RECORD": str(record), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "vlmtune.cli", "serve", "--engine", "vllm", "--model", str(lora_run),
                             "--port", str(port), "--vllm-python", str(_fake_python(tmp_path)), "--max-images", "2",
                             "--vllm-arg=--seed", "--vllm-arg=7"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        said = []
        for line in proc.stderr:  # vlmtune says where it serves once vLLM answers /health
            said.append(line)
            if "serving at" in line:
                break
        assert f"vLLM is serving at http://127.0.0.1:{port}/v1" in said[-1], "".join(said)
        p = RemotePredictor.connect(f"http://127.0.0.1:{port}", engine="vllm")
        from PIL import Image

        from vlmtune.data.sample import Sample, assistant, user

        sample = Sample(id="q", messages=[user("What colour?"), assistant("red")], images=["x.png"])
        assert p.complete([sample], [[Image.new("RGB", (8, 8))]])[0].text == "1 image(s): What colour?"
        argv = json.loads(record.read_text())["argv"]
        flags = dict(zip(argv[::1], argv[1::1], strict=False))
        assert argv[:2] == ["-m", "vllm.entrypoints.openai.api_server"]
        assert flags["--model"] == str(lora_run / "best.vllm-export") and flags["--served-model-name"] == "t"
        assert json.loads(flags["--override-generation-config"]) == {"temperature": 0.0}
        assert json.loads(flags["--limit-mm-per-prompt"]) == {"image": 2}
        assert flags["--max-model-len"] == str(128 + 512) and flags["--dtype"] == "float32"
        assert flags["--chat-template"].endswith("best.vllm-export/chat_template.jinja")
        assert argv[-2:] == ["--seed", "7"]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "vLLM stopped" in err
        fake_pid = json.loads(record.read_text())["pid"]
        time.sleep(0.2)
        with pytest.raises(ProcessLookupError):
            os.kill(fake_pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_clear_errors(lora_run, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VLMTUNE_VLLM_PYTHON", raising=False)
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["serve", "--engine", "vllm", "--model", str(lora_run), "--vllm-python", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert rc == 2 and "run `make vllm`" in err and "Traceback" not in err
    monkeypatch.setenv("FAKE_VLLM_RECORD", str(tmp_path / "r.json"))
    rc = cli.main(["serve", "--engine", "vllm", "--model", str(lora_run), "--port", str(_free_port()),
                   "--vllm-python", str(_fake_python(tmp_path, fail="ValueError: head size 16 is not supported"))])
    err = capsys.readouterr().err
    assert rc == 1 and "vLLM exited with status 1 before it answered" in err
    assert "head size 16 is not supported" in err and "Traceback" not in err
    rc = cli.main(["serve", "--model", str(lora_run), "--tensor-parallel", "2"])
    assert rc == 2 and "options of --engine vllm" in capsys.readouterr().err


def test_a_plain_directory_is_served_in_its_own_dtype(tmp_path):
    """vLLM's "auto" serves a float32 checkpoint in bfloat16: other answers than `vlmtune eval`'s. The checkpoint's
    dtype is passed instead; a directory other tools load as it is (hub layout, no extras) is served in place."""
    from vlmtune.models import get_family

    tiny = get_family("qwen2_vl").tiny()
    tiny.model.save_pretrained(tmp_path / "m")
    tiny.processor.save_pretrained(tmp_path / "m")
    info = for_vllm(tmp_path / "m")
    assert info["dtype"] == "float32" and info["path"] == str(tmp_path / "m") and info["family"] == "qwen2_vl"
    # a `vlmtune export` is served as it is too, not exported again
    from vlmtune.export import export

    out = export(tmp_path / "m", tmp_path / "exported")["out"]
    assert for_vllm(out)["path"] == out and not (tmp_path / "exported.vllm-export").exists()
