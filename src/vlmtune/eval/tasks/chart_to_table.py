"""Chart-to-table (DePlot): a predicted data table scored against the chart's true table with DePlot's RMS
precision / recall / F1 (primary: rms_f1) and ChartQA's RNSS, as the official ``deplot/metrics.py`` computes them
(`vlmtune.eval.metrics.table`: per table, then averaged over tables, in [0, 1] rather than x100).

Rows: {"id", "prediction": "TITLE | t <0x0A> Year | Sales <0x0A> 2019 | 12", "target": "<the true table>",
"meta": {"chart_type": "bar"}}; the target may also be ChartQA's CSV text, and "answers" may list alternative
tables (the best one counts). `<0x0A>` and real newlines are both row separators.
"""

from __future__ import annotations

from vlmtune.eval.metrics.table import table_metrics_corpus
from vlmtune.eval.tasks.base import Row, Task, gold


def per_sample(prediction: str, row: Row, options: dict) -> dict[str, float]:
    # one table against its alternatives: the corpus function over one row is exactly that (best target wins)
    return table_metrics_corpus([prediction], [gold(row)])


TASK = Task(
    name="chart_to_table",
    description="chart -> data table (DePlot): RMS precision/recall/F1 and RNSS against the true table",
    metrics=("rms_f1", "rms_precision", "rms_recall", "rnss"),
    primary="rms_f1",
    per_sample=per_sample,
    breakdown=("chart_type", "source"),
)
