#!/usr/bin/env bash
# How issue #19's speed figures are taken on the lent H200 (not part of the product). One call carries .whl (the
# wheels of ../shared/device/wheels.sh) and .bench: race_train64.jsonl and race_test_full.jsonl from
# benchmarks/make_race_sample.py, the official Gemma 3 tokenizer as tokenizer.json.xz, and the platformdirs and
# pyyaml wheels the GPU image lacks. It starts this script detached and polls it:
#   (setsid nohup bash benchmarks/device/run_speed.sh "$PWD" > /tmp/speed/out/device.log 2>&1 < /dev/null &)
#   bash benchmarks/device/poll.sh 540 /tmp/speed
# In a copy of the tree, one after the other on the GPU: decode (generation.py: the default engine against HF's
# compiled static cache), the GRPO step (grpo_step.py: the pipeline against TRL's defaults), and the whole-test-set
# baseline stage (real_scale.py: log-likelihood plus two variants, 256 new tokens). Results land in /tmp/speed/out.
# SPEED_PARTS picks and orders the parts (default decode,grpo,baseline); "profile" is decode_variants.py (the
# compiled decode step's kernels by time, and the step compiled with max-autotune); "sdpa" is sdpa_padding.py (SDPA's
# backends on padded training batches: which give NaN); "evalattn" is stage_decode.py with SDPA's cuDNN backend off
# and on, a process each (eval.cudnn_attention: log-likelihood and the eval routine's prefill, cold and warm); "gputests" runs the GPU tests
# of the fast engine and the rollouts (SPEED_TESTS: their -k); "unsloth" is grpo_step.py's unsloth path (the GRPO
# step through model.backend unsloth), in its own process, with unsloth's wheels installed by a call before into
# /tmp/site-unsloth (carrying .whl-unsloth from `bash ../shared/device/wheels.sh unsloth`):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site-unsloth .whl-unsloth/*.whl
# SPEED_ENGINES picks generation.py's engines; SPEED_GRPO_RUNS grpo_step.py's processes and paths (see grpo), SPEED_GRPO_STEPS
# their steps.
set -uo pipefail
SPEED_PARTS=${SPEED_PARTS:-decode,grpo,baseline}
mkdir -p /tmp/speed/out /tmp/site
echo $$ > /tmp/speed/device.pid
repo=/tmp/speed/repo out=/tmp/speed/out
mkdir -p $repo && (cd "$1" && tar cf - --exclude='./.chunk*' --exclude=./.real --exclude=./.whl .) | (cd $repo && tar xf -)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$1"/.whl/*.whl "$1"/.bench/*.whl
tok=/tmp/speed/tokenizer.json
[ -f $tok ] || python3 -c "import lzma,shutil;shutil.copyfileobj(lzma.open('$repo/.bench/tokenizer.json.xz'),open('$tok','wb'))"
export PYTHONPATH=/tmp/site:$repo/src PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30
cd "$repo"
stamp() { echo "== $* ($(date -u +%T))"; }
stamp start; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import trl, torch, transformers; print('trl', trl.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
decode() {
  timeout 420 python3 benchmarks/generation.py --engines "${SPEED_ENGINES:-static_generator,hf_static}" \
    --out $out/generation.json > $out/generation.log 2>&1; echo "rc $?"; tail -3 $out/generation.log
}
profile() {
  timeout 300 python3 benchmarks/decode_variants.py --variants grouped,max_autotune --budget-s 200 \
    --out $out/decode_variants.json > $out/decode_variants.log 2>&1; echo "rc $?"; tail -3 $out/decode_variants.log
}
grpo() {  # one process per ';'-separated run of SPEED_GRPO_RUNS ("paths [more grpo_step.py arguments]"): pipeline
  # variants in one process would share cuDNN's plans and inductor's caches. TORCH_LOGS=recompiles: the log says what
  # recompiled, and why, in which step
  local i=0 run
  IFS=';' read -ra runs <<< "${SPEED_GRPO_RUNS:-pipeline,trl_defaults;pipeline_cudnn}"
  for run in "${runs[@]}"; do
    i=$((i + 1)); stamp "grpo $i: $run"
    # each in an inductor cache folder of its own: compilation costs what it costs on a fresh machine
    # shellcheck disable=SC2086  # the run's extra arguments split on spaces
    TORCHINDUCTOR_CACHE_DIR=/tmp/speed/inductor_$i TORCH_LOGS=recompiles timeout 720 python3 benchmarks/grpo_step.py \
      --race .bench/race_train64.jsonl --tokenizer $tok \
      --steps "${SPEED_GRPO_STEPS:-5}" --profile --paths $run --out $out/grpo_step_$i.json > $out/grpo_step_$i.log 2>&1
    echo "rc $?"; tail -2 $out/grpo_step_$i.log
  done
}
baseline() {
  timeout 420 python3 benchmarks/real_scale.py --race .bench/race_test_full.jsonl --race-train .bench/race_train64.jsonl \
    --n-eval 0 --stages prepare,baseline --tokenizer $tok --set prepare.max_prompt_tokens=2048 \
    --set eval.batch_size=256 --out $out/baseline > $out/baseline.log 2>&1; echo "rc $?"; tail -3 $out/baseline.log
}
evalattn() {
  local c
  for c in off on; do
    timeout 300 python3 benchmarks/stage_decode.py --race .bench/race_test_full.jsonl --tokenizer $tok --no-loaded \
      --batch 256 --new 16 --loglik 1500 --eval-prompts 2048 --cudnn $c --out $out/eval_attention_$c.json \
      > $out/eval_attention_$c.log 2>&1; echo "rc $?"; grep -E "^(loglik|eval generate)" $out/eval_attention_$c.log
  done
}
sdpa() {  # SDPA's backends alone on padded training batches: NaN and seconds (sdpa_padding.py)
  timeout 300 python3 benchmarks/sdpa_padding.py --out $out/sdpa_padding.json > $out/sdpa_padding.log 2>&1
  echo "rc $?"; tail -3 $out/sdpa_padding.log
}
gputests() {  # the GPU tests of the fast engine and the rollouts (CUDA graphs, which the CPU tests cannot cover)
  timeout 300 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_fast_generation.py \
    tests/test_constrained.py tests/test_shared_prompt.py \
    -k "${SPEED_TESTS:-merged or rollouts or matches_hf or flex or engines_write or compiled or repeated or shared}" \
    > $out/gpu_tests.log 2>&1; echo "rc $?"; tail -3 $out/gpu_tests.log
}
unsloth() {  # the first steps compile for minutes (212 s and 116 s on 2026-12-01), so two warm-up steps
  [ -d /tmp/site-unsloth ] || { echo "no /tmp/site-unsloth: install unsloth's wheels there first"; return; }
  PYTHONPATH=/tmp/site-unsloth:$PYTHONPATH timeout 540 python3 benchmarks/grpo_step.py \
    --race .bench/race_train64.jsonl --tokenizer $tok --steps 4 --warmup 2 --paths unsloth \
    --out $out/grpo_step_unsloth.json > $out/grpo_step_unsloth.log 2>&1
  echo "rc $?"; tail -2 $out/grpo_step_unsloth.log
}
for part in ${SPEED_PARTS//,/ }; do
  stamp "$part"; "$part"
done
stamp done
