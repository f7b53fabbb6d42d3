"""Charts the DePlot way: chart image -> data table -> answer (Liu et al. 2023, "DePlot: One-shot visual language
reasoning by plot-to-table translation", https://arxiv.org/abs/2212.10505).

    model.py    a Pix2Struct built from a config, with a tokenizer that keeps `<0x0A>` as one ordinary token
    reason.py   table + question -> answer: a deterministic program (default), or an LM over the table in one of
                DePlot's setups (zero-shot, few-shot chain-of-thought, program-of-thought, self-consistency)
    prompts.py  DePlot-style prompts and exemplars, and reading the answer out of a reply
    sandbox.py  running a generated program (program-of-thought): no imports, no files, time and memory limits
    lm.py       the text LM (greedy and seeded sampling, stop strings) and a random one for offline runs
    ask.py      the pipeline (Predictor writes the table, a Reasoner answers) and its evaluation on a dataset

The charts and their tables are data: `vlmtune.data.chart_table` (`Table` <-> DePlot's linearised text, "TITLE | t
<0x0A> Year | Sales <0x0A> 2019 | 12", with tolerant parsing) and `vlmtune.data.charts` (drawn bar / line / pie
charts with their true tables and questions: the "charts" synthetic world, and DePlot's prompt).

    vlmtune chart ask chart.png "Which country has the highest sales?" --model runs/tiny_chart_to_table
    vlmtune chart eval --model runs/tiny_chart_to_table --data data/charts-qa --split test
    vlmtune chart eval --model runs/tiny_chart_to_table --data data/charts-qa --split test --reasoner all --llm LM
"""
