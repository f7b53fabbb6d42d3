"""docs/fashion-retrieval.md names the runs its commands write: the page trained `runs/fashion-clip` with the recipe,
then indexed `runs/shop-clip` (issue 21). In the page's offline route, every run a command reads is one an earlier
command of the route wrote (by --out, a retrieval recipe's `out`, or a training recipe's out_dir/name)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "fashion-retrieval.md"


def _offline_route() -> list[list[str]]:
    """The commands of the shell block after `<!-- offline route -->`, as argv lists (continuations joined)."""
    text = PAGE.read_text(encoding="utf-8")
    block = re.search(r"<!-- offline route -->\s*```bash\n(.*?)```", text, re.S)
    assert block, "the page marks its offline route"
    lines = block.group(1).replace("\\\n", " ").splitlines()
    return [shlex.split(line, comments=True) for line in lines if line.strip()]


def _option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_every_run_the_offline_route_reads_was_written_before_by_the_route():
    written: set[str] = set()
    commands = _offline_route()
    assert commands and all(c[0] == "vlmtune" for c in commands)
    for argv in commands:
        for flag in ("--model", "--index"):
            read = _option(argv, flag)
            if read and read.startswith(("runs/", "indexes/", "models/")):
                assert read in written, f"{' '.join(argv)}: reads {read}, which no earlier command wrote"
        config = _option(argv, "--config")
        if config:
            written.add(_writes(config))
        out = _option(argv, "--out")
        if out:
            written.add(out)
    serve = re.search(r"vlmtune serve --model (\S+) --index (\S+)", PAGE.read_text(encoding="utf-8"))
    assert serve and set(serve.groups()) <= written  # the chat serves what the route built


def _writes(config: str) -> str:
    recipe = yaml.safe_load((REPO / config).read_text())
    return recipe["out"] if "out" in recipe else f"{recipe.get('out_dir', 'runs')}/{recipe['name']}"


def test_every_run_the_page_reads_is_written_by_one_of_its_commands_or_recipes():
    text = PAGE.read_text(encoding="utf-8")
    written = set(re.findall(r"--out (\S+)", text)) | {_writes(c) for c in re.findall(r"--config (configs/\S+)", text)}
    read = set(re.findall(r"--model (runs/[\w.-]+)", text))
    assert read and read <= written, f"the page reads {sorted(read - written)}, which none of its commands writes"
    for recipe in sorted((REPO / "configs" / "retrieval").glob("*.yaml")):  # and each recipe's header too
        header = recipe.read_text().splitlines()[:6]
        used = {m for line in header for m in re.findall(r"--model (runs/[\w.-]+)", line)}
        assert used <= {_writes(str(recipe.relative_to(REPO)))}, recipe.name
