#!/usr/bin/env bash
# The study's LLM outputs on a lent GPU machine that reaches no package index or model hub:
# `hnlm study --llm-only --profile full` (SNS negatives, the judge's scores, HNLMRec runs, transfer embeddings), with
# the packaged qwen2.5-0.5b (real weights, sent in chunks and sha256-checked through HNLM_QWEN_GGUF).
#
#   bash bench/gpu_study_llm.sh stash   # once per call that carries .whl_a, .whl_b or .xfer/partNN: keeps them
#                                       # in /tmp (each call replaces the carried paths) and installs wheels
#   bash bench/gpu_study_llm.sh run     # joins the GGUF and runs the stages; packs $OUT/results.tgz after each
#
# Profiles are not a stage here: all ml-100k profiles were made on an H200 earlier (bench/gpu_check.sh) and
# travel in artifacts/llm_cache. The bf16 outputs are reused on a CPU with HNLM_LLM_DTYPE=bfloat16.
set -u
OUT=${OUT:-/tmp/gpu_study_out}
mkdir -p "$OUT" /tmp/xfer /tmp/whl
LOG=$OUT/gpu_study_llm.log
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=/tmp/site:$PWD
PY=${PY:-python3}
STAGES=${GPU_STUDY_STAGES:-sns judge hnlmrec transfer}
DEADLINE=${GPU_STUDY_DEADLINE:-480}

if [ "${1:-}" = stash ]; then
  for f in .xfer/part*; do [ -e "$f" ] && mv "$f" /tmp/xfer/; done
  for d in .whl_a .whl_b; do
    if ls $d/*.whl >/dev/null 2>&1; then
      $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $d/*.whl \
        2>&1 | tail -3
    fi
  done
  ls /tmp/xfer; ls /tmp/site | head -50 | tr '\n' ' '; echo
  exit 0
fi

pack() {  # without checkpoints and final/ adapters (17 MB each: too big to come back in one file). Notebook 10
          # elsewhere still loads the text run's final/ (it checks the transfer bank against the adapter):
          # for this study it came back split, `tar cf - <run>/final | gzip | split -b 7000000`
  tar czf "$OUT/results.tgz" -C artifacts --exclude='checkpoints' --exclude='final' \
    $(cd artifacts && ls -d llm_cache ml-100k/sns ml-100k/judge ml-100k/hnlmrec ml-1m-first2000 2>/dev/null) 2>>"$LOG"
}

{
  echo "host: $(hostname)  $(date -u)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
'transformers', transformers.__version__, 'peft', peft.__version__)"
} 2>&1 | tee -a "$LOG"
cat /tmp/xfer/part* > /tmp/qwen.gguf && export HNLM_QWEN_GGUF=/tmp/qwen.gguf
for s in $STAGES; do
  left=$((DEADLINE - SECONDS))
  if [ $left -lt 30 ]; then echo "=== $s skipped: ${left}s left" | tee -a "$LOG"; continue; fi
  echo "=== $s $(date +%T)" | tee -a "$LOG"
  t0=$SECONDS
  timeout $left $PY -m hnlm study --llm-only --profile full --stages "$s" >>"$LOG" 2>&1
  echo "=== $s rc=$? in $((SECONDS - t0)) s" | tee -a "$LOG"
  pack
done
grep -a "llm-only\]\|Error\|error" "$LOG" | tail -20
