"""The argparse helpers several nouns share: a config section's flags generated from its dataclass
(`add_config_flags`: `vlmtune serve` from ServeCfg, `data ocr` from OcrCfg, `retrieve train` from RetrievalTrainCfg),
and where a command that loads a model runs it (--device, --dtype)."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import itertools
import textwrap
import types
import typing

from vlmtune.models.device import DTYPES


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field of dataclass `cls` -> its docstring (the string literal under it, as config.py documents every
    field), on one line; fields with none are left out. Read from the source of the class (and of the dataclasses it
    derives from) with `ast`, once per class."""
    docs = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        docs |= {stmt.target.id: " ".join(doc.value.value.split()) for stmt, doc in itertools.pairwise(body)
                 if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                 and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
                 and isinstance(doc.value.value, str)}
    return docs


def _type_args(tp, default) -> dict:
    """add_argument keywords for a field's type: X | None is X; a Literal gives its choices; list[X] one or more X; a
    bool is a switch (--no-NAME too when it defaults to True)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        kinds = [t for t in typing.get_args(tp) if t is not type(None)]
        if len(kinds) != 1:
            raise TypeError(f"{tp}: a flag takes one type; write this one by hand")
        tp = kinds[0]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return {"choices": list(args)} | ({} if isinstance(args[0], str) else {"type": type(args[0])})
    if origin is list and len(args) == 1 and args[0] in (str, int, float):
        return {"nargs": "+"} | ({} if args[0] is str else {"type": args[0]})
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction if default is True else "store_true"}
    if tp in (int, float):
        return {"type": tp}
    if tp is str:
        return {}
    raise TypeError(f"{tp}: no flag type for it; write this flag by hand")


def _shown(value) -> str:
    """A default as the help prints it: text as is unless it has spaces or line breaks (then quoted)."""
    if isinstance(value, str):
        return value if value and not any(c.isspace() for c in value) else repr(value)
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def add_config_flags(p, cls, names: list[str] | None = None, *, skip: tuple[str, ...] = (), unset: bool = False,
                     flags: dict[str, str] | None = None, extra: dict[str, dict] | None = None) -> None:
    """A `--field-name` flag on parser `p` for each field of dataclass `cls` (or each of `names`, in that order; none
    of `skip`), its value in the namespace under the field's name: the field's type (`_type_args`), default and help
    (the field's docstring, then "(default X)"), so a new option of a config section is one dataclass field.

    unset: every flag defaults to None, "not given": the command passes only the flags given, over a YAML recipe or
    the dataclass's own defaults (the help still names those). flags: field -> its flag where it is not --field-name
    (`--k` for retrieve_k). extra: field -> more add_argument keywords (metavar=...), and `note`, a sentence the help
    adds after the docstring (what the flag means on the command line)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    for name in names if names is not None else list(fields):
        if name in skip:
            continue
        f, more = fields[name], dict((extra or {}).get(name, {}))
        default = (f.default if f.default is not dataclasses.MISSING
                   else f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        text = " ".join(t for t in (docs.get(name), more.pop("note", None)) if t)
        if default is not None and hints[name] is not bool:
            text += f" (default {_shown(default)})"
        required = not unset and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        p.add_argument((flags or {}).get(name, "--" + name.replace("_", "-")), dest=name,
                       default=None if unset else default, required=required, help=text.strip().replace("%", "%%"),
                       **_type_args(hints[name], default) | more)


def add_device_args(p, dtype: bool = True) -> None:
    """--device (and --dtype): the inference placement policy of every command that loads a model
    (models/device.py). `retrieve` takes --device only: its --dtype is the index's vector dtype."""
    p.add_argument("--device", default="auto",
                   help="auto (default: the GPU when there is one, else MPS, else CPU), cuda, cuda:N, mps or cpu")
    if dtype:
        p.add_argument("--dtype", default=None, choices=DTYPES,
                       help="default: the dtype the run trained in (model.dtype), else the checkpoint's config.json")
