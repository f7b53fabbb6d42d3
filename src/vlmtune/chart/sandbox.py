"""Running a program a language model wrote, for program-of-thought (DePlot §4, after Chen et al. 2022, "Program of
Thoughts Prompting"): the LM writes Python that computes the answer from the table into a variable `ans`; this module
runs it where it can do nothing else.

DePlot's own code (`deplot/llm_utils.py`, `_exec`) calls `exec` on the model's text inside the evaluating process;
a model that writes `import os` there owns the machine. Here a program passes two fences:

1. `check_program` reads its syntax tree before anything runs and refuses `import` / `from ... import`, names and
   attributes that start with `_` (`__class__`, `__import__`, `__builtins__`...), the frame / code / generator
   attributes that reach the interpreter without underscores (`gi_frame`, `f_globals`, `f_back`, `co_code`, `mro`
   ...), `str.format` (whose `{0.__class__}` fields read attributes), string constants holding `__`, calls of
   `exec`, `eval`, `compile`, `open`, `__import__`, `getattr` and the like, and class definitions. A refusal names
   the line.
2. `run_program` runs what passed in a fresh interpreter (`python -I -S`: no site-packages, no user site, no
   PYTHON* variables) with an empty environment, in a new empty temporary directory, under `resource.setrlimit`
   limits (address space `memory_mb`, CPU seconds, no file writes, no core dumps) and a wall-clock `time_limit_s`
   after which it is killed. The program's globals hold only `SAFE_BUILTINS` (arithmetic, containers, `sorted`,
   `round`...): no `open`, no `__import__`, so it can reach no file, socket or module. The value of `ans` comes
   back as JSON on stdout, at most `MAX_OUTPUT_CHARS` characters.

    run_program("xs = [42, 17, 30]\\nans = max(xs) - min(xs)")        # 25
    run_program("import os")                                           # SandboxError: line 1: import is not allowed

Limits (module constants, each also an argument of `run_program` and of `PoTReasoner`, and a `vlmtune chart` flag):
`TIME_LIMIT_S` 5 s (`--pot-time-limit`), `MEMORY_LIMIT_MB` 256 (`--pot-memory-mb`), `MAX_PROGRAM_CHARS` 20,000,
`MAX_OUTPUT_CHARS` 10,000. POSIX only (`resource`); elsewhere `run_program` refuses to run anything.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tempfile
import warnings

TIME_LIMIT_S = 5.0
"""Wall-clock seconds a program may run (the CPU-time limit is this, rounded up, plus one)."""
MEMORY_LIMIT_MB = 256
"""Address space of the program's interpreter (RLIMIT_AS), interpreter included (~20 MB of it)."""
MAX_PROGRAM_CHARS = 20_000
"""Longer programs are refused before they are parsed (a deeply nested expression can exhaust the parser)."""
MAX_OUTPUT_CHARS = 10_000
"""The JSON of `ans` may be at most this long (an answer is a word or a number)."""

SAFE_BUILTINS = (
    "abs", "all", "any", "bool", "dict", "divmod", "enumerate", "filter", "float", "int", "len", "list", "map",
    "max", "min", "pow", "range", "reversed", "round", "set", "sorted", "str", "sum", "tuple", "zip",
    "ArithmeticError", "Exception", "IndexError", "KeyError", "TypeError", "ValueError", "ZeroDivisionError",
)
"""The only builtins a program sees (plus a `print` that prints nothing: models often end with `print(ans)`)."""

FORBIDDEN_NAMES = frozenset({
    "breakpoint", "compile", "delattr", "eval", "exec", "getattr", "globals", "input", "locals", "open", "setattr",
    "vars",
})
"""Refused as names anywhere (none is in SAFE_BUILTINS either: the check names the mistake before anything runs)."""
FORBIDDEN_ATTRIBUTES = frozenset({"format", "format_map", "mro"})
FORBIDDEN_ATTRIBUTE_PREFIXES = ("_", "gi_", "cr_", "ag_", "f_", "co_", "tb_")
"""Frame, code, generator, coroutine and traceback attributes: `(x for x in y).gi_frame.f_back.f_globals` reaches
the running interpreter's modules without a single underscore."""

# The runner executed by the child interpreter: limits first, then the program with SAFE_BUILTINS as its builtins.
# Only this fixed text is passed with -c; the program itself arrives on stdin.
_RUNNER = """
import builtins, json, resource, sys
memory, cpu, names, max_output = json.loads(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
source = sys.stdin.read()
safe = {name: getattr(builtins, name) for name in names}
safe["print"] = lambda *args, **kwargs: None
scope = {"__builtins__": safe}
out = sys.stdout
try:
    exec(compile(source, "<program>", "exec"), scope)
except BaseException as e:
    out.write(json.dumps({"error": type(e).__name__ + ": " + str(e)[:500]}))
    raise SystemExit(0)
if "ans" not in scope:
    out.write(json.dumps({"error": "the program sets no variable `ans`"}))
    raise SystemExit(0)
try:
    text = json.dumps({"ans": scope["ans"]}, allow_nan=False)
except (TypeError, ValueError) as e:
    text = json.dumps({"error": "`ans` is not a JSON value: " + type(scope["ans"]).__name__})
if len(text) > max_output:
    text = json.dumps({"error": "`ans` is longer than %d characters" % max_output})
out.write(text)
"""


class SandboxError(ValueError):
    """The program was refused, failed, ran out of time or memory, or set no usable `ans`."""


def check_program(source: str) -> ast.Module:
    """The parsed program, or SandboxError naming what is not allowed and its line (see the module docstring)."""
    if len(source) > MAX_PROGRAM_CHARS:
        raise SandboxError(f"the program has {len(source)} characters; at most {MAX_PROGRAM_CHARS} are run")
    try:
        with warnings.catch_warnings():  # "invalid decimal literal" and the like: the model's problem, not the user's
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(source, "<program>")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:  # ValueError: a NUL byte in the source
        raise SandboxError(f"the program is not valid Python: {type(e).__name__}: {e}") from None
    for node in ast.walk(tree):
        line = getattr(node, "lineno", "?")
        refused = None
        if isinstance(node, ast.Import | ast.ImportFrom):
            refused = "import is not allowed"
        elif isinstance(node, ast.ClassDef | ast.AsyncFunctionDef | ast.Await | ast.AsyncFor | ast.AsyncWith):
            refused = f"{type(node).__name__} is not allowed"
        elif isinstance(node, ast.Name) and (node.id.startswith("_") or node.id in FORBIDDEN_NAMES):
            refused = f"the name {node.id!r} is not allowed"
        elif isinstance(node, ast.Attribute) and (node.attr in FORBIDDEN_ATTRIBUTES
                                                  or node.attr.startswith(FORBIDDEN_ATTRIBUTE_PREFIXES)):
            refused = f"the attribute .{node.attr} is not allowed"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str | bytes) and (
                "__" in (node.value if isinstance(node.value, str) else node.value.decode("latin-1"))):
            refused = "a string holding '__' is not allowed"
        elif isinstance(node, ast.FunctionDef | ast.Lambda | ast.arg | ast.keyword):
            names = [getattr(node, "name", None), getattr(node, "arg", None)]
            if any(n and n.startswith("_") for n in names):
                refused = "names starting with '_' are not allowed"
        if refused:
            raise SandboxError(f"line {line}: {refused}")
    return tree


def run_program(source: str, time_limit_s: float = TIME_LIMIT_S, memory_mb: int = MEMORY_LIMIT_MB):
    """Check `source`, run it in a fresh limited interpreter and return the value of its `ans` (a JSON value:
    number, string, bool, list, dict or None); SandboxError when it is refused, fails, sets no `ans` or runs past
    `time_limit_s` seconds or `memory_mb` MB."""
    check_program(source)
    try:
        import resource  # noqa: F401  (the child needs it; absent on Windows)
    except ImportError:
        raise SandboxError("programs are run only on POSIX systems (resource.setrlimit is needed)") from None
    cpu = int(time_limit_s) + 1
    args = json.dumps([memory_mb * 2**20, cpu, list(SAFE_BUILTINS), MAX_OUTPUT_CHARS])
    with tempfile.TemporaryDirectory(prefix="vlmtune-pot-") as cwd:
        try:
            done = subprocess.run([sys.executable, "-I", "-S", "-X", "utf8", "-c", _RUNNER, args], input=source,
                                  encoding="utf-8", errors="replace", capture_output=True, cwd=cwd, env={},
                                  timeout=time_limit_s)
        except subprocess.TimeoutExpired:
            raise SandboxError(f"the program ran past the time limit ({time_limit_s:g} s)") from None
    if done.returncode != 0:
        # killed by RLIMIT_CPU (SIGXCPU) or the interpreter itself could not start within the memory limit
        why = "the CPU time limit" if done.returncode in (-24, 152) else f"exit status {done.returncode}"
        raise SandboxError(f"the program's interpreter stopped ({why}): {done.stderr.strip()[-300:]}")
    try:
        result = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise SandboxError(f"the program's interpreter wrote no result: {done.stdout[:200]!r}") from None
    if "error" in result:
        error = result["error"]
        if error.startswith("MemoryError"):
            error = f"MemoryError: the program needed more than the memory limit ({memory_mb} MB)"
        raise SandboxError(error)
    return result["ans"]


__all__ = ["MAX_OUTPUT_CHARS", "MAX_PROGRAM_CHARS", "MEMORY_LIMIT_MB", "SAFE_BUILTINS", "TIME_LIMIT_S",
           "SandboxError", "check_program", "run_program"]
