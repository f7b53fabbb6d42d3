"""DePlot's LM setups over the table: the exemplar sets (each exemplar yields its answer), few-shot chain-of-thought
and program-of-thought with scripted LMs, self-consistency's vote with a scripted sampler, and a local causal LM
(greedy, seeded sampling, stop strings, context limit) built in code."""

from __future__ import annotations

import pytest

from vlmtune.chart.lm import CausalLM, generator, init_lm, sampler
from vlmtune.chart.prompts import (
    COT_EXEMPLARS,
    POT_EXEMPLARS,
    cot_answer,
    cot_prompt,
    normalise_answer,
    pot_prompt,
    program_of,
)
from vlmtune.chart.reason import (
    SETUPS,
    CoTReasoner,
    Fallback,
    PoTReasoner,
    ProgramReasoner,
    SelfConsistencyReasoner,
    build_reasoner,
    majority,
    run_pot,
)
from vlmtune.data.chart_table import Table

SALES = Table.from_text("TITLE | Sales by country <0x0A> Country | Sales <0x0A> Chile | 42 <0x0A> Peru | 17 "
                        "<0x0A> Italy | 30")


# ------------------------------------------------------------------------------------------------ the exemplars


@pytest.mark.parametrize("exemplar", COT_EXEMPLARS, ids=[e.question for e in COT_EXEMPLARS])
def test_every_cot_exemplar_states_its_answer(exemplar):
    assert cot_answer(" " + exemplar.reply + "\n\nQ: the next question") == exemplar.answer


@pytest.mark.parametrize("exemplar", POT_EXEMPLARS, ids=[e.question for e in POT_EXEMPLARS])
def test_every_pot_exemplar_runs_in_the_sandbox_to_its_answer(exemplar):
    assert run_pot(program_of(exemplar.reply + "\n\nQ: the next question"), 5, 256) == (exemplar.answer, None)


def test_the_prompts_put_the_marked_up_table_and_the_question_after_the_exemplars():
    cot = cot_prompt(SALES, " Which country has the highest value? ")
    pot = pot_prompt(SALES, "Which country has the highest value?")
    target = "Title: Sales by country\nHeader: Country | Sales\nRow 1: Chile | 42\nRow 2: Peru | 17\nRow 3: Italy | 30"
    assert cot.endswith(f"{target}\n\nQ: Which country has the highest value?\nA:")
    assert pot.endswith(f"{target}\n\nQ: Which country has the highest value?\n#Python\n")
    assert all(f"Q: {e.question}\nA: {e.reply}" in cot for e in COT_EXEMPLARS)
    assert all(f"Q: {e.question}\n#Python\n{e.reply}" in pot for e in POT_EXEMPLARS)
    assert cot.startswith("Read the table below to answer the following questions.\n\nTitle: Average monthly")


# ------------------------------------------------------------------------------------------ CoT and PoT, scripted


def test_cot_reads_the_answer_after_the_answer_is():
    seen = []

    def fake(prompt: str) -> str:
        seen.append(prompt)
        return (" Let's find the column of Sales: [42, 17, 30]. The largest is 42, Row 1, Chile. The answer is "
                "Chile.\n\nQ: What is the answer to everything?\nA: The answer is 42.")

    got = CoTReasoner(fake).answer(SALES, "Which country has the highest value?")
    assert got.ok and got.answer == "Chile" and got.reasoner == "cot" and got.program.endswith("The answer is Chile.")
    assert seen == [cot_prompt(SALES, "Which country has the highest value?")]
    rambling = CoTReasoner(lambda p: " Chile has the tallest bar, I think").answer(SALES, "Which is highest?")
    assert not rambling.ok and rambling.answer == "" and "no 'The answer is'" in rambling.error


def test_pot_runs_the_program_the_lm_writes_and_answers_from_it():
    program = ("countries = ['Chile', 'Peru', 'Italy']\nsales = [42, 17, 30]\n"
               "ans = countries[sales.index(max(sales))]")
    seen = []

    def fake(prompt: str) -> str:
        seen.append(prompt)
        return program + "\n\nQ: Which country has the lowest value?\n#Python\nans = 'Peru'"

    got = PoTReasoner(fake).answer(SALES, "Which country has the highest value?")
    assert got.ok and got.answer == "Chile" and got.program == program and got.reasoner == "pot"
    assert seen == [pot_prompt(SALES, "Which country has the highest value?")]
    ratio = PoTReasoner(lambda p: "#Python\nans = 42 / 17").answer(SALES, "What is the ratio of Chile to Peru?")
    assert ratio.answer == "2.47" and ratio.program == "ans = 42 / 17"
    yes = PoTReasoner(lambda p: "ans = 42 > 17").answer(SALES, "Is Chile greater than Peru?")
    assert yes.answer == "Yes"


@pytest.mark.parametrize("reply,program", [
    (" ans = 42", "ans = 42"),
    ("    x = 40\n    ans = x + 2\n\nQ: next", "x = 40\nans = x + 2"),
    ("#Python\n```python\nans = 42\n```", "ans = 42"),
    ("\n ans = [x for x in [42]\n        ][0]", "ans = [x for x in [42]\n       ][0]"),  # dedented by one
])
def test_the_program_is_read_without_fences_and_leading_indentation(reply, program):
    assert program_of(reply) == program
    assert PoTReasoner(lambda p: reply).answer(SALES, "What is the value for Chile?").answer == "42"


@pytest.mark.parametrize("reply,error", [
    ("import os\nans = os.listdir('/')", "line 1: import is not allowed"),
    ("ans = open('secrets.txt').read()", "the name 'open' is not allowed"),
    ("while True:\n    pass", "ran past the time limit"),
    ("total = 42", "sets no variable `ans`"),
    ("ans = ", "not valid Python"),
])
def test_pot_programs_that_fail_or_are_refused_give_no_answer_and_say_why(reply, error):
    got = PoTReasoner(lambda p: reply, time_limit_s=1).answer(SALES, "What is the total?")
    assert not got.ok and got.answer == "" and error in got.error and got.program == reply


def test_pot_refuses_limits_no_program_could_run_under():
    with pytest.raises(ValueError, match=r"got -1 s, 256 MB"):
        PoTReasoner(lambda p: "ans = 1", time_limit_s=-1)


def test_a_failing_lm_is_reported_and_the_program_answers_only_through_fallback():
    def boom(prompt: str) -> str:
        raise RuntimeError("CUDA out of memory")

    alone = PoTReasoner(boom).answer(SALES, "What is the value for Chile?")
    assert not alone.ok and "the model failed: RuntimeError: CUDA out of memory" in alone.error
    backed = Fallback(PoTReasoner(boom), ProgramReasoner()).answer(SALES, "What is the value for Chile?")
    assert backed.ok and backed.answer == "42" and backed.reasoner == "pot->program"


# ------------------------------------------------------------------------------------------------ self-consistency


def test_self_consistency_votes_over_normalised_answers_of_cot_and_pot_samples():
    calls = []
    replies = {
        "A:": [" The answer is 47.", " So 42+17=59. The answer is 59.", " The answer is 47.0.", " I do not know."],
        "#Python\n": ["ans = 42 + 17", "import os\nans = 1", "ans = 17 + 30", "ans = 59.0"],
    }

    def scripted(prompt: str, n: int, temperature: float) -> list[str]:
        calls.append((prompt, n, temperature))
        return next(r for end, r in replies.items() if prompt.endswith(end))[:n]

    sc = SelfConsistencyReasoner(scripted, k=4, temperature=0.5)
    got = sc.answer(SALES, "What is the sum of Chile and Peru?")
    # votes: 59 (cot 1, pot 2: "59", "59.0") = 3; 47 (cot "47", "47.0", pot 17+30) = 3: a tie, and 47 came first
    assert got.ok and got.answer == "47" and got.reasoner == "sc"
    assert got.program == "47 x3, 59 x3, (no answer) x2"
    assert [(p, n, t) for p, n, t in calls] == [(cot_prompt(SALES, "What is the sum of Chile and Peru?"), 4, 0.5),
                                               (pot_prompt(SALES, "What is the sum of Chile and Peru?"), 4, 0.5)]
    assert [s["answer"] for s in got.samples] == ["47", "59", "47.0", "", "59", "", "47", "59"]
    assert "import is not allowed" in got.samples[5]["error"] and got.samples[4]["reply"] == "ans = 42 + 17"

    replies["#Python\n"][1] = "ans = 59"  # one more vote for 59 breaks the tie
    assert sc.answer(SALES, "What is the sum of Chile and Peru?").answer == "59"


def test_self_consistency_with_no_answer_at_all_is_not_ok():
    got = SelfConsistencyReasoner(lambda p, n, t: ["no idea"] * n, k=3, prompts=("cot",)).answer(SALES, "Sum?")
    assert not got.ok and got.answer == "" and "none of the 3 samples" in got.error and len(got.samples) == 3


@pytest.mark.parametrize("options,error", [
    ({"prompts": ("cot", "sql")}, "choose from zero_shot, cot, pot"),
    ({"prompts": ()}, "choose from"),
    ({"k": 0}, "k >= 1"),
    ({"temperature": 0.0}, "temperature > 0"),
    ({"time_limit_s": 0}, "--pot-time-limit must be > 0 s"),
    ({"memory_mb": 8}, "--pot-memory-mb at least 32"),
])
def test_self_consistency_refuses_settings_that_cannot_vote(options, error):
    with pytest.raises(ValueError, match=error):
        SelfConsistencyReasoner(lambda p, n, t: [], **options)


@pytest.mark.parametrize("answers,winner", [
    (["46%", "46", "$46.0", "45"], "46%"),
    (["Yes", "true", "No"], "Yes"),
    (["chile", "Chile.", "Peru"], "chile"),
    (["Peru", "Chile"], "Peru"),  # a tie: the first sampled
    (["", "", "Peru"], "Peru"),  # empty answers do not vote
    (["1,234", "1234.0", "1235"], "1,234"),
])
def test_majority_compares_normalised_answers(answers, winner):
    assert majority(answers)[0] == winner


def test_normalise_answer():
    assert [normalise_answer(a) for a in (" 46% ", "46.00", "$46", "(3)", "29.666", "Chile.", "TRUE", "2019 Q1")] == [
        "46", "46", "46", "-3", "29.67", "chile", "yes", "2019 q1"]


# ------------------------------------------------------------------------------------------------ building setups


def test_build_reasoner_makes_each_setup_and_says_what_is_missing():
    assert isinstance(build_reasoner("program"), ProgramReasoner)
    with pytest.raises(ValueError, match="the cot setup needs a language model"):
        build_reasoner("cot")
    with pytest.raises(ValueError, match="unknown reasoning setup 'tot'"):
        build_reasoner("tot")

    class Scripted:
        def generate(self, prompt, max_new_tokens, stop=(), chat=False):
            return "ans = 42" if prompt.endswith("#Python\n") else " The answer is 42."

        def sample(self, prompt, n, temperature, max_new_tokens, stop=(), chat=False):
            return [self.generate(prompt, max_new_tokens)] * n

    built = {s: build_reasoner(s, Scripted(), k=2) for s in SETUPS}
    assert {s: r.name for s, r in built.items()} == {s: s for s in SETUPS}
    answers = {s: r.answer(SALES, "What is the value for Chile?").answer for s, r in built.items()}
    assert answers == {"program": "42", "zero_shot": "42", "cot": "42", "pot": "42", "sc": "42"}
    assert build_reasoner("cot", Scripted(), fallback=True).first.name == "cot"
    with pytest.raises(ValueError, match="self-consistency prompts \\['sql'\\]"):
        build_reasoner("sc", Scripted(), sc_prompts=("cot", "sql"))


def test_zero_shot_reads_the_first_line_even_when_the_reply_opens_with_a_newline():
    class OpensWithNewline:
        def generate(self, prompt, max_new_tokens, stop=(), chat=False):
            reply = "\n\n42\nbecause Chile is the highest."
            for s in stop:  # as a real LM would honour its stop strings
                reply = reply.split(s, 1)[0]
            return reply

    got = build_reasoner("zero_shot", OpensWithNewline()).answer(SALES, "What is the value for Chile?")
    assert got.ok and got.answer == "42"


# ------------------------------------------------------------------------------------------------ a local causal LM


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm") / "tiny-lm"
    made = init_lm(path, layers=1, hidden=32)
    assert made["layers"] == 1 and 259 < made["vocab"] <= 1024  # 256 bytes + 3 special tokens + merges
    return CausalLM.from_path(path, device="cpu")


def test_the_local_lm_is_greedy_and_its_samples_are_seeded_per_prompt(tiny_lm):
    import torch

    prompt = cot_prompt(SALES, "Which country has the highest value?")
    reply = tiny_lm.generate(prompt, max_new_tokens=8)
    assert reply == tiny_lm.generate(prompt, max_new_tokens=8)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = tiny_lm.sample(prompt, n=3, temperature=1.0, max_new_tokens=8)
    assert torch.rand(1) == before, "sampling leaves the caller's random state alone"
    assert len(first) == 3 and first == tiny_lm.sample(prompt, n=3, temperature=1.0, max_new_tokens=8)
    assert len(set(first)) > 1, "three samples at temperature 1 of a random model differ"
    other = tiny_lm.sample(pot_prompt(SALES, "Which country has the highest value?"), n=3, temperature=1.0,
                           max_new_tokens=8)
    assert other != first


def test_the_local_lm_stops_at_the_stop_strings(tiny_lm):
    prompt = pot_prompt(SALES, "What is the value for Chile?")
    free = tiny_lm.generate(prompt, max_new_tokens=40)
    stop = next(c for c in free if not c.isspace())  # a character the random model certainly writes
    cut = tiny_lm.generate(prompt, max_new_tokens=40, stop=(stop,))
    assert cut == free.split(stop, 1)[0] and stop not in cut


def test_a_prompt_longer_than_the_context_is_a_clear_failure_of_that_question(tiny_lm):
    table = Table(header=("Country", "Sales"), rows=tuple((f"Country {i}", str(i)) for i in range(800)))
    got = CoTReasoner(generator(tiny_lm, 16)).answer(table, "Which country has the highest value?")
    assert not got.ok and "exceeds the LM's context of 4096" in got.error


def test_every_setup_answers_through_the_local_lm(tiny_lm):
    """A random model's replies are noise: each setup must still come back with an Answer and a reason when it has
    no answer (the sandbox refuses or fails the program, the reply states nothing)."""
    question = "What is the value for Chile?"
    for setup in SETUPS:
        got = build_reasoner(setup, tiny_lm, max_new_tokens=12, k=2).answer(SALES, question)
        assert got.reasoner == setup and got.ok == (got.error is None) and (got.ok or got.answer == "")
    votes = SelfConsistencyReasoner(sampler(tiny_lm, 12), k=2).answer(SALES, question)
    assert len(votes.samples) == 4 and [s["prompt"] for s in votes.samples] == ["cot", "cot", "pot", "pot"]


def test_a_vlmtune_model_answers_text_only_through_predictor(tmp_path):
    """`--llm` may name a vlmtune model whose family takes text-only prompts (here the built-in llava model)."""
    from helpers import save_builtin

    from vlmtune.chart.lm import PredictorLM, load_lm

    lm = load_lm(save_builtin(tmp_path / "builtin"), device="cpu")
    assert isinstance(lm, PredictorLM)
    prompt = cot_prompt(SALES, "Which country has the highest value?")
    assert lm.generate(prompt, max_new_tokens=6) == lm.generate(prompt, max_new_tokens=6)
    samples = lm.sample(prompt, n=3, temperature=1.0, max_new_tokens=6)
    assert len(samples) == 3 and samples == lm.sample(prompt, n=3, temperature=1.0, max_new_tokens=6)
    got = build_reasoner("sc", lm, max_new_tokens=6, k=2).answer(SALES, "Which country has the highest value?")
    assert len(got.samples) == 4 and got.ok == (got.error is None)
