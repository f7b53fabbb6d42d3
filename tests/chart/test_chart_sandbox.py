"""The program-of-thought sandbox: what a generated program may not do is refused before it runs (imports, files,
dunder and frame escapes, exec/eval), what it cannot reach is absent when it runs (builtins whitelist, a separate
`python -I -S` in a temporary directory), and a program that loops or eats memory is stopped."""

from __future__ import annotations

import pytest

from vlmtune.chart import sandbox
from vlmtune.chart.sandbox import SandboxError, check_program, run_program


@pytest.mark.parametrize("program,ans", [
    ("xs = [42, 17, 30]\nans = max(xs) - min(xs)", 25),
    ("labels = ['Chile', 'Peru']\nvalues = [42, 17]\nans = labels[values.index(max(values))]", "Chile"),
    ("ans = 42 > 17", True),
    ("ans = round(sum([1.5, 2.25]) / 2, 3)", 1.875),
    ("def mean(xs):\n    return sum(xs) / len(xs)\nans = [mean([1, 3]), 'x']", [2.0, "x"]),
    ("print('working')\nans = None", None),
])
def test_a_program_runs_and_its_ans_comes_back_as_json(program, ans):
    assert run_program(program) == ans


@pytest.mark.parametrize("program,refusal", [
    ("import os\nans = os.getcwd()", "line 1: import is not allowed"),
    ("x = 1\nfrom pathlib import Path\nans = x", "line 2: import is not allowed"),
    ("ans = __import__('os').listdir('/')", "line 1: the name '__import__' is not allowed"),
    ("ans = open('/etc/passwd').read()", "line 1: the name 'open' is not allowed"),
    ("ans = eval('1 + 1')", "the name 'eval' is not allowed"),
    ("exec('ans = 1')", "the name 'exec' is not allowed"),
    ("ans = compile('1', 'f', 'eval')", "the name 'compile' is not allowed"),
    ("ans = getattr(1, 'real')", "the name 'getattr' is not allowed"),
    ("ans = globals()", "the name 'globals' is not allowed"),
    ("ans = ().__class__.__bases__[0].__subclasses__()", "the attribute .__subclasses__ is not allowed"),
    ("f = lambda: 0\nans = f.__globals__", "the attribute .__globals__ is not allowed"),
    ("ans = __builtins__", "the name '__builtins__' is not allowed"),
    ("g = (x for x in [1])\nans = g.gi_frame.f_back.f_globals", "line 2: the attribute .f_globals is not allowed"),
    ("ans = int.mro()", "the attribute .mro is not allowed"),
    ("ans = '{0.real}'.format(1)", "the attribute .format is not allowed"),
    ("key = '__class__'\nans = key", "line 1: a string holding '__' is not allowed"),
    ("class A:\n    pass\nans = A", "ClassDef is not allowed"),
    ("def f(_x):\n    return _x\nans = f(1)", "names starting with '_' are not allowed"),
    ("ans = (", "the program is not valid Python"),
    ("ans = 'a\x00b'", "the program is not valid Python"),
    ("x = 1\n" * 5000, "at most 20000 are run"),
])
def test_forbidden_programs_are_refused_before_they_run(program, refusal, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("a refused program must not start an interpreter")

    monkeypatch.setattr(sandbox.subprocess, "run", never)
    with pytest.raises(SandboxError) as e:
        run_program(program)
    assert refusal in str(e.value)


@pytest.mark.parametrize("program,missing", [
    ("ans = open('/etc/passwd').read()", "NameError: name 'open' is not defined"),
    ("ans = __import__('os').getcwd()", "NameError: name '__import__' is not defined"),
    ("ans = exec('x = 1')", "NameError: name 'exec' is not defined"),
    ("ans = getattr(1, 'real')", "NameError: name 'getattr' is not defined"),
])
def test_without_the_syntax_check_the_program_still_reaches_no_file_or_module(program, missing, monkeypatch):
    """The second fence: the program's builtins are the whitelist only, in an isolated interpreter."""
    monkeypatch.setattr(sandbox, "check_program", lambda source: None)
    with pytest.raises(SandboxError, match=missing):
        run_program(program)


def test_the_program_runs_in_an_isolated_interpreter_in_an_empty_temporary_directory(monkeypatch):
    seen = {}
    real_run = sandbox.subprocess.run

    def spy(argv, **kwargs):
        seen.update(argv=argv, **kwargs)
        import os

        seen["files"] = os.listdir(kwargs["cwd"])
        return real_run(argv, **kwargs)

    monkeypatch.setattr(sandbox.subprocess, "run", spy)
    assert run_program("ans = 1") == 1
    assert seen["argv"][1:5] == ["-I", "-S", "-X", "utf8"] and seen["env"] == {} and seen["files"] == []
    assert "vlmtune-pot-" in seen["cwd"] and seen["timeout"] == sandbox.TIME_LIMIT_S


def test_an_infinite_loop_is_stopped_at_the_time_limit():
    with pytest.raises(SandboxError, match=r"ran past the time limit \(1 s\)"):
        run_program("n = 0\nwhile True:\n    n += 1", time_limit_s=1)


def test_a_program_that_wants_too_much_memory_fails_with_a_memory_error():
    with pytest.raises(SandboxError, match=r"MemoryError: the program needed more than the memory limit \(128 MB\)"):
        run_program("block = 'x' * (512 * 2**20)\nans = len(block)", memory_mb=128)


@pytest.mark.parametrize("program,error", [
    ("x = 1", "the program sets no variable `ans`"),
    ("ans = 1 / 0", "ZeroDivisionError: division by zero"),
    ("ans = {1, 2}", "`ans` is not a JSON value: set"),
    ("ans = float('nan')", "`ans` is not a JSON value: float"),
    ("ans = 'x' * 20000", "`ans` is longer than 10000 characters"),
])
def test_a_program_without_a_usable_ans_says_why(program, error):
    with pytest.raises(SandboxError, match=error):
        run_program(program)


def test_a_program_python_warns_about_is_checked_without_printing_the_warning(capsys):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would fail the check here
        assert run_program("x = [1, 2]\nans = x[0]if 1else 0") == 1
    assert capsys.readouterr().err == ""


def test_check_program_returns_the_tree_of_an_allowed_program():
    tree = check_program("# a comment\nrows = [('Chile', 42)]\nans = max(rows, key=lambda r: r[1])[0]")
    assert [type(n).__name__ for n in tree.body] == ["Assign", "Assign"]
