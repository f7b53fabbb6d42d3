#!/usr/bin/env bash
# The GPU runbook (issue 23, part 3): real-config random-weight models (Qwen2.5-VL-3B, LLaVA-1.5-7B, SmolVLM2-256M)
# in bf16 through vlmtune's loop on one GPU, offline, in under ~8 minutes: LoRA (sdpa, flash-attention-2), QLoRA,
# full fine-tuning, TRL on the same run, the vision cache over 3 epochs, packing on/off, serving on the builtin
# engine and on vLLM (where .venv-vllm or $VLMTUNE_VLLM_PYTHON has vLLM's CUDA build). Writes a markdown table.
#
#   bench/gpu/run.sh [--dry] [--out FILE] [--work DIR] [--trl-path DIR] [--budget SECONDS]
#
# --dry: the whole path on CPU at tiny sizes, ~8 minutes on 2 busy cores (25 processes, mostly imports);
#   make gpu-runbook RUNBOOK_ARGS=--dry runs it so, and tests/test_gpu_runbook.py.
# --trl-path: a directory holding the trl package (pip install --target DIR trl==1.16.0), put on PYTHONPATH.
# --budget: items not started after this many seconds get a "skipped: time budget" row (default 420; dry 1500).
# Each item is one fresh process under `timeout`, so one failure or hang costs only its own row.
set -u
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DRY="" OUT="" WORK="" TRL="" BUDGET=""
CMD="bench/gpu/run.sh $*"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry) DRY=--dry ;;
    --out) OUT=$2; shift ;;
    --work) WORK=$2; shift ;;
    --trl-path) TRL=$(cd "$2" && pwd); shift ;;
    --budget) BUDGET=$2; shift ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
STAMP=$(date -u +%F)
[ -n "$OUT" ] || OUT=bench/gpu/results-${DRY:+dry-}$STAMP.md
[ -n "$BUDGET" ] || BUDGET=$([ -n "$DRY" ] && echo 1500 || echo 420)
[ -n "$WORK" ] || WORK=$(mktemp -d "${TMPDIR:-/tmp}/vlmtune-gpu-runbook-XXXXXX")
mkdir -p "$WORK/results" "$WORK/logs"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export TRANSFORMERS_VERBOSITY=error DISABLE_TELEMETRY=1
export PYTHONPATH="$PWD/src${TRL:+:$TRL}${PYTHONPATH:+:$PYTHONPATH}"
[ -n "$DRY" ] && export CUDA_VISIBLE_DEVICES=""  # dry: CPU even where a GPU is
echo "work directory: $WORK" >&2
START=$SECONDS
"$PY" bench/gpu/runbook.py items $DRY > "$WORK/items.txt" || exit 1
while read -r ITEM LIMIT; do
  if [ $((SECONDS - START)) -gt "$BUDGET" ]; then
    printf '{"skipped": "time budget: %s s spent before it started"}\n' "$BUDGET" > "$WORK/results/$ITEM.json"
    continue
  fi
  rm -f "$WORK/results/$ITEM.json"
  T=$SECONDS
  timeout -k 10 "$LIMIT" "$PY" bench/gpu/runbook.py run "$ITEM" $DRY --work "$WORK" \
    > "$WORK/logs/$ITEM.log" 2>&1 < /dev/null
  RC=$?
  echo "$RC" > "$WORK/results/$ITEM.rc"
  echo "[$((SECONDS - START))s] $ITEM: exit $RC in $((SECONDS - T)) s" >&2
done < "$WORK/items.txt"
"$PY" bench/gpu/runbook.py table $DRY --work "$WORK" --out "$OUT" --command "$CMD" || exit 1
echo "table: $OUT" >&2
