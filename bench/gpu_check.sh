#!/usr/bin/env bash
# The CUDA and 4-bit paths of today's code on one real GPU, with the packaged qwen2.5-0.5b (real weights), in one
# script of at most ten minutes (GPU_CHECK_DEADLINE). It ends with one line per check: `check NAME: ok|FAILED
# (rc, seconds)`.
#
# Checks, in order of value (each packs its results into $OUT/results.tgz as it finishes, so a run cut off
# by a time limit still returns what it did):
#   1. SNS: bf16 generation through the structured (JSON-schema) decoder, K = 4 sampled hard negatives per user
#      sharing one prefill, copies of training items drawn again (`hnlm sns --budget per-user:1 --context history`)
#   2. HNLMRec: the InfoNCE fine-tune for a few steps, then the embedding pass that emits the bank, text signal
#   3. the same with 4-bit QLoRA (bitsandbytes nf4)
#   4. the same with the soft-prompt CF signal
#   5. a CF run on CUDA (`hnlm train --device cuda`, LightGCN + DNS(M,N), a few epochs)
#   6. all ml-100k item and user profiles (`hnlm profiles`), batched
#   7. the LLM judge: yes/no scores (float32) of a converged teacher's top unseen items (`hnlm judge`, 64 users)
# GPU_CHECK_STAGES="1 2 5" runs some; GPU_CHECK_SMOKE=1 GPU_CHECK_DEVICE=cpu GPU_CHECK_STAGES=5 is a local dry run.
# The MiniLM text encoder is not installed there: its cache (artifacts/encoders) travels instead, and SNS
# negatives are embedded afterwards on the CPU with `hnlm sns ... --no-generate`.
#
# Needs, beside the working tree: .whl_a/ and .whl_b/ (wheels missing from the GPU image: xgrammar, bitsandbytes, gguf,
# jsonschema, json-repair, recbole for the data, ...), .xfer/part* (the joined GGUF split in chunks) and
# artifacts/encoders. GPU_CHECK_LLM / GPU_CHECK_SMOKE=1 give a quick local dry run of the same steps.
set -u
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
LLM=${GPU_CHECK_LLM:-qwen2.5-0.5b}
STAGES=${GPU_CHECK_STAGES:-1 2 3 4 5 6 7}
SMOKE=${GPU_CHECK_SMOKE:-0}
DEVICE=${GPU_CHECK_DEVICE:-cuda}   # cpu for a local dry run of the CF check
DEADLINE=${GPU_CHECK_DEADLINE:-540}  # seconds: a stage still running then is stopped, and packed (device calls: 600 s)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

PY=${PY:-python3}
export PYTHONPATH=/tmp/site:$PWD
if ! $PY -c "import xgrammar, bitsandbytes, gguf, jsonschema" 2>/dev/null && ls .whl_a/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl_a/*.whl .whl_b/*.whl >>"$LOG" 2>&1 || { echo "wheel install failed" | tee -a "$LOG"; exit 1; }
fi
export PYTHONPATH=/tmp/site:$PWD
if ls .xfer/part* >/dev/null 2>&1; then
  cat .xfer/part* > /tmp/qwen.gguf && export HNLM_QWEN_GGUF=/tmp/qwen.gguf
fi

pack() {  # everything small the stages wrote, relative to the artefacts root (no checkpoints or adapters)
  local root=${HNLM_ARTIFACTS:-artifacts}
  tar czf "$OUT/results.tgz" -C "$root" --exclude='checkpoints' --exclude='final' \
    $(cd "$root" && ls -d ml-100k/sns ml-100k/hnlmrec ml-100k/profiles llm_cache 2>/dev/null) 2>>"$LOG"
}

SUMMARY=()
stage() {  # stage <name> <command...>: time it, log it, pack after it, add its line to the summary
  local name=$1; shift
  echo "=== $name  $(date +%T)  $*" | tee -a "$LOG"
  local t0=$SECONDS left=$((DEADLINE - SECONDS))
  if [ $left -lt 60 ]; then echo "=== $name skipped: ${left}s left" | tee -a "$LOG"; SUMMARY+=("check $name: SKIPPED (${left}s left)"); return; fi
  timeout $left "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "=== $name rc=$rc in $((SECONDS - t0)) s" | tee -a "$LOG"
  SUMMARY+=("check $name: $([ $rc = 0 ] && echo ok || echo FAILED) (rc $rc, $((SECONDS - t0)) s)")
  pack
}

{
  echo "host: $(hostname)  $(date -u)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  $PY -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
'transformers', transformers.__version__, 'peft', peft.__version__)" 2>&1
  $PY -c "import bitsandbytes, xgrammar; from importlib.metadata import version as v; print('bitsandbytes', v('bitsandbytes'), 'xgrammar', v('xgrammar'))" 2>&1
} | tee -a "$LOG"

LIMIT_USERS=(); LIMIT=(); STEPS=(--max-steps 10); EPOCHS=(--epochs 5)
if [ "$SMOKE" = 1 ]; then LIMIT_USERS=(--limit-users 8); LIMIT=(--limit 4); STEPS=(--max-steps 2); EPOCHS=(--epochs 1); fi

for s in $STAGES; do case $s in
  1) stage sns $PY -m hnlm sns --dataset ml-100k --llm "$LLM" --budget per-user:1 --context history \
       --chunk 512 "${LIMIT_USERS[@]}" ;;
  2) stage hnlmrec-text $PY -m hnlm finetune --dataset ml-100k --llm "$LLM" --cf-signal text "${STEPS[@]}" ;;
  3) stage hnlmrec-text-4bit $PY -m hnlm finetune --dataset ml-100k --llm "$LLM" --cf-signal text --4bit \
       "${STEPS[@]}" ;;
  4) stage hnlmrec-soft $PY -m hnlm finetune --dataset ml-100k --llm "$LLM" --cf-signal soft "${STEPS[@]}" ;;
  5) stage cf-cuda $PY -m hnlm train --dataset ml-100k --sampler dns-mn --device "$DEVICE" --batch-size 2048 \
       "${EPOCHS[@]}" --json "$OUT/cf_cuda.json" ;;
  6) stage profiles $PY -m hnlm profiles --dataset ml-100k --llm "$LLM" --batch-size 128 "${LIMIT[@]}" ;;
  7) stage judge $PY -m hnlm judge --dataset ml-100k --llm "$LLM" --limit-users "${JUDGE_USERS:-64}" \
       --json "$OUT/judge.json" ;;
esac; done
echo "done $(date +%T)" | tee -a "$LOG"
printf '%s\n' "${SUMMARY[@]}" | tee -a "$LOG"
