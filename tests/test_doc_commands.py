"""Every `vlmtune` command written on a page (docs/*.md and README.md, in code blocks and inline code) is one the
command line accepts: its verbs and flags exist, its flag values are of the right kind, and a `vlmtune train`'s
`--section.key VALUE` overrides name real config keys with valid values. A renamed or removed flag (such as an
`eval ... --report` after only `--no-report` was left) fails here instead of on a reader's machine.

Synopsis lines (`[--flag N]`, `a|b` alternatives, `...`) and printed output are left out, and inline code that only
names a command (`vlmtune chart ask`) may leave out its required arguments.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest
from helpers import REPO

from vlmtune.cli import _route_retrieve, build_parser
from vlmtune.config import RunCfg

PAGES = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]
FENCE = re.compile(r"^```.*?$(.*?)^```", re.S | re.M)
INLINE = re.compile(r"(?<!`)`(vlmtune [^`]+)`(?!`)")
SIZE = re.compile(r"\$\{([A-Za-z_]\w*):-([^}]*)\}")


def _commands(page: Path) -> list[tuple[str, str, bool]]:
    """(where, command, whole) for every vlmtune command of `page`: `$ ` prompts dropped, `\\` continuations joined;
    `whole`: written to be run (a code block), not named in a sentence (inline code)."""
    text = page.read_text(encoding="utf-8")
    found = []
    for block in FENCE.finditer(text):
        lines = block.group(1).splitlines()
        lineno = text[: block.start(1)].count("\n") + 1
        k = 0
        while k < len(lines):
            start, line = k, lines[k].strip().removeprefix("$ ")
            while line.endswith("\\") and k + 1 < len(lines):
                k += 1
                line = line[:-1] + " " + lines[k].strip()
            k += 1
            if line.startswith("vlmtune "):  # a size variable as the page's default: `--n ${N:-600}` -> `--n 600`
                found.append((f"{page.name}:{lineno + start}", SIZE.sub(r"\2", line), True))
    for m in INLINE.finditer(text):
        found.append((f"{page.name}:{text[: m.start()].count(chr(10)) + 1}", m.group(1), False))
    return found


def _not_a_command(command: str) -> bool:
    """A synopsis, or a line of printed output (`vlmtune train: 2 process(es)`)."""
    return ("[-" in command or "..." in command or "…" in command or re.search(r"\w\|\w", command) is not None
            or re.match(r"vlmtune [\w-]+:", command) is not None)


COMMANDS = [(where, c, whole) for page in PAGES for where, c, whole in _commands(page) if not _not_a_command(c)]


class Refused(Exception):
    """What argparse would print before exiting."""


def _refuse(self, message):
    raise Refused(f"{self.prog}: {message}")


def test_the_pages_have_commands():
    assert len(COMMANDS) > 100 and {w.split(":")[0] for w, _, _ in COMMANDS} >= {"meme-captions-ru.md", "README.md"}


@pytest.mark.parametrize("where,command,whole", COMMANDS, ids=[w for w, _, _ in COMMANDS])
def test_every_command_on_the_pages_parses(where, command, whole, monkeypatch):
    monkeypatch.setattr(argparse.ArgumentParser, "error", _refuse)
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, "#"
    words = list(lexer)
    shell = [k for k, w in enumerate(words) if w in (">", ">>", "|", "&&", ";", "2>", "&")]
    argv = _route_retrieve(words[1 : shell[0] if shell else None])  # the command, not what the shell does with it
    try:
        a, rest = build_parser().parse_known_args(argv)
    except Refused as e:
        if not whole and not re.search(r"unrecognized arguments|argument \w*verb: invalid choice", str(e)):
            return  # a sentence naming the command, or its arguments as placeholders (JOB, --seed S)
        pytest.fail(f"{where}: `{command}` is refused by the command line: {e}")
    if a.verb in ("train", "plan"):  # the verbs that take --section.key overrides
        config = REPO / a.config if a.config else None
        # the overrides' keys and values against the real recipe when the page names one in the repository
        RunCfg.from_file(config if config is not None and config.is_file() else None, rest)
    else:
        assert not rest, f"{where}: `{command}`: unrecognized arguments {rest}"
