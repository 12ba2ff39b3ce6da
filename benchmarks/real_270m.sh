#!/usr/bin/env bash
# The real run, as a user runs it: Gemma 3 270M (pretrained) on RACE through this repository's dvc.yaml.
#
#   bash benchmarks/real_270m.sh MODEL_DIR RACE_TARBALL OUT
#
# MODEL_DIR: a folder `mcgrpo from-gguf` wrote (an absolute path: queued experiments run in temp copies).
# RACE_TARBALL: RACE.tar.gz from CMU (non-commercial research use only); copied to data/raw/.
# 1. dev: a queue of experiments, one per setting in REAL_RUN_DEV (settings separated by ";", each a list of
#    section.key=value), REAL_RUN_JOBS (1) at a time: GRPO on RACE train, evaluated on 1,000 RACE dev questions.
#    One at a time is the fastest on one GPU: a 270M run is launch-bound, and two beside a baseline each took
#    4x longer per step (benchmarks/README.md);
# 2. the dev experiment with the best fine-tuned accuracy on the trained variant is applied, and `dvc exp run`
#    moves it to the test set: prepare writes the same training sample (it does not depend on the eval split),
#    so dvc keeps that experiment's adapter (train and reward_model are unchanged) and reruns baseline
#    evaluate, plots, report and publish on the test set;
# 3. the plain-TRL peers named in REAL_RUN_PEERS ("defaults lora"; also "base_choice", "constrained";
#    benchmarks/trl_peer.py, fp32 unless
#    REAL_RUN_PEER_DTYPE), one after the other, trained and evaluated on the test run's prepared data, with the
#    setting's rule rewards (the peer "base_choice" keeps the base_choice reward too);
# 4. the reading check (benchmarks/reading_ablation.py) of the base and the fine-tuned model on the test questions:
#    option log-likelihood with and without the article (REAL_RUN_READING=0 skips it);
# 5. OUT/: logs, dvc exp show tables, the peers' metrics, and a tarball of metrics/, plots/, reports/, predictions.
# REAL_RUN_VARIANT (completion_pick): the prompt form GRPO trains on (train.variant).
# REAL_RUN_DEV_VARIANTS / REAL_RUN_TEST_VARIANTS (both the trained variant): the dev and test runs' generate variants
# (comma-separated), besides log-likelihood on test.
# REAL_RUN_SETTING (a setting like one of REAL_RUN_DEV's): no dev queue; the test run trains with it.
# REAL_RUN_ONLY_DEV=1: stop after the dev choice, writing it to OUT/chosen_setting.txt. A session too short for the
# whole run does dev in one hold and REAL_RUN_SETTING="$(cat chosen_setting.txt)" (test and peers) in the next.
# REAL_RUN_DEV_DEADLINE (seconds after the start): dev experiments still running then are killed and the best
# finished one is taken; with none finished the test run trains with REAL_RUN_FALLBACK (a setting; by default the
# first dev setting), and says so.
# The model trains in fp32 (REAL_RUN_DTYPE) with TF32 matmuls (REAL_RUN_TF32=false: plain fp32): in bf16 its GRPO
# gradients turned NaN (benchmarks/README.md).
# The repository must be a git repository with its changes committed (dvc exp needs a commit).
set -euo pipefail
model=$1 race=$2 out=$3
here=$(cd "$(dirname "$0")" && pwd)  # the helper scripts beside this one
start=$(date +%s)
mkdir -p "$out" data/raw
cp "$race" data/raw/RACE.tar.gz
if [ -n "$(git status --porcelain)" ]; then git add -A && git commit -qm "real run: RACE under data/raw"; fi
stamp() { echo "== $* ($(date -u +%T), $(( $(date +%s) - start )) s)"; }

# What every run shares: the pretrained model, RACE, completion prompts, GRPO on a one-line form. The default is
# completion_open: no options shown, the model's own words read as the one option they name. Letters
# (completion_direct) are what the first runs trained on: the 270M's letters are at chance and GRPO collapsed them
# onto one letter. Listed options (completion_option) collapsed onto the first one at lr 1e-4, with and without a
# shuffle, and their written answer reads the passage little: scored after that prompt, averaged over rotations, the
# most likely option is right 0.27 of the time on 200 dev questions, against 0.335 for the plain log-likelihood
# (results/2026-12-02_cpu_reading_listed_real270m_dev200.json). completion_open has no list position to collapse
# onto. Its first run (results/2026-12-02_h200_real270m_open) read answers by word-overlap F1 and GRPO learnt lines
# that name several candidates; it now reads the one option a line names (rewards.named_option), under which the
# base's answers that name one are right 0.41 of the time on RACE test.
# completion_pick (the default since the twelfth session) has completion_open's prompt, and its answer is decoded
# under a constraint that lets it be one option, whole (mcgrpo.constrained): the model chooses by its own
# probabilities over the option texts, where its log-likelihood reads the passage, and every answer is in format.
# Its rollouts need the project's fast engine (the one that applies the constraint); the other forms' one-line
# rollouts (cut at 32 tokens) use TRL's own generate (no compile to amortise). A 270M model needs no gradient
# checkpointing. Every RACE test option is at most 27 tokens with its line end, so 32 tokens cut none.
# Evaluation reads the same 32 tokens the rewards read in training: with 128, the
# tuned completion_open model's lines ran on past what training ever judged (68 % unfinished at 128 tokens, against
# 15 % for the base; results/2026-12-02_h200_real270m_open).
variant=${REAL_RUN_VARIANT:-completion_pick}
rollouts=hf; [ "$variant" = completion_pick ] && rollouts=fast
common=(-S "model.name=$model" -S model.backend=transformers -S "model.dtype=${REAL_RUN_DTYPE:-float32}"
        -S "model.tf32=${REAL_RUN_TF32:-true}"
        -S prepare.source=race -S prepare.path=data/raw/RACE.tar.gz -S prepare.config=all
        -S prepare.n_train=2000 -S prepare.max_prompt_tokens=2048
        -S eval.batch_size=128 -S eval.max_new_tokens=32
        -S train.variant=$variant -S train.max_completion_length=32 -S train.max_steps=150
        -S train.num_generations=8 -S train.per_device_train_batch_size=16 -S train.gradient_accumulation_steps=4
        -S train.beta=0.0 -S train.save_steps=50 -S train.rollout_engine=$rollouts -S train.gradient_checkpointing=false
        -S reward_model.variant=completion_cot -S reward_model.max_new_tokens=128 -S reward_model.batch_size=128
        -S reward_model.n_questions=40)
extra=(${REAL_RUN_EXTRA:-})  # more -S flags, applied last (a CPU smoke run shrinks the sizes with these)
# Dev and test evaluate the trained variant unless told more; the chat variants are left out (under a chat template
# the pretrained model answers nothing: 0.000 on the whole test set), and so is completion_cot (0.058 base, 0.030
# tuned, benchmarks/README.md), whose 128-token answers cost the most eval time.
dev=(-S prepare.eval_split=dev -S prepare.n_eval=1000 -S eval.mode=generate
     -S "eval.variants=[${REAL_RUN_DEV_VARIANTS:-$variant}]" -S eval.engine=hf)
test=(-S prepare.eval_split=test -S prepare.n_eval=null -S eval.mode=both -S eval.engine=auto
      -S "eval.variants=[${REAL_RUN_TEST_VARIANTS:-$variant}]")

# The default dev setting, for completion_open: lr 5e-5 with a KL anchor, the correctness reward and params.yaml's
# format reward (0.2: the line names one option). At lr 1e-4 every listed-option run collapsed onto one position
# within ~25-50 steps (entropy ~0.02), with the base_choice reward too (results/2026-12-02_h200_real270m_base_choice);
# at lr 3e-5 the entropy held (0.3-0.7, results/2026-12-01_h200_real270m_dev_format). On completion_open, lr 5e-5
# kept the entropy at 2.4 and the KL under 0.23 for 150 steps (results/2026-12-02_h200_real270m_open, under the
# earlier F1 reading), so a larger rate has room; under the one-option reading lr 1e-4 held too (entropy 2.5,
# KL <= 0.21) but moved the rewards little (results/2026-12-02b_h200_real270m_open_strict). Matmuls run on TF32 tensor
# cores (REAL_RUN_TF32, model.tf32).
# On an H200 with TF32 a one-line step takes ~1.9 s: one dev setting took 515-609 s with two dev variants, the test
# run 204-221 s, the peer 324-365 s and the two reading checks 356 s, 26 min in all with the model build, so one
# setting fits a 30-minute session; with two, run REAL_RUN_ONLY_DEV=1 in one session and REAL_RUN_SETTING in the next.
# Other settings tried on completion_option: "train.option_order=per_completion" (a choice by position earns nothing
# within a group), "train.reward_weights.base_choice=1" (1.0 for restating the option the base model's
# log-likelihood ranks first). Other forms: REAL_RUN_VARIANT=completion_option, or letters, REAL_RUN_VARIANT=
# completion_direct with "train.max_completion_length=4"; 3-shot prompts, "prepare.n_shots=3
# prepare.max_prompt_tokens=3072"; full fine-tuning, "train.finetune=full train.learning_rate=0.000001".
default_dev="train.learning_rate=0.00005 train.beta=0.04"
as_flags() { local kv; for kv in $1; do printf -- '-S\n%s\n' "$kv"; done; }  # "a=1 b=2" -> -S a=1 -S b=2
IFS=';' read -r -a settings <<< "${REAL_RUN_DEV:-$default_dev}"
names=()
if [ -z "${REAL_RUN_SETTING:-}" ]; then
  jobs=${REAL_RUN_JOBS:-1}
  for i in "${!settings[@]}"; do
    names+=("dev-$((i + 1))")
    mapfile -t flags < <(as_flags "${settings[$i]}")
    stamp "dev-$((i + 1)): ${settings[$i]}"
    dvc exp run --queue "${common[@]}" "${dev[@]}" "${flags[@]}" "${extra[@]}" -n "dev-$((i + 1))"
  done
  dvc queue start --jobs "$jobs"
fi

if [ -n "${REAL_RUN_SETTING:-}" ]; then
  chosen=$REAL_RUN_SETTING
  stamp "no dev queue: the test run trains with REAL_RUN_SETTING ($chosen)"
else
  deadline=${REAL_RUN_DEV_DEADLINE:-}
  # (grep without -q: with pipefail, -q exiting early would fail the pipeline and end the wait)
  while dvc queue status 2>/dev/null | grep -E "Queued|Running" > /dev/null; do
    if [ -n "$deadline" ] && [ $(( $(date +%s) - start )) -ge "$deadline" ]; then
      stamp "dev deadline ${deadline} s: killing the dev experiments still running"
      dvc queue status | tee "$out/dev_queue_at_deadline.txt"
      dvc queue kill "${names[@]}" 2>/dev/null || true
      dvc queue remove --queued 2>/dev/null || true
      sleep 5
      break
    fi
    sleep 10
  done
  dvc queue status | tee "$out/dev_queue_status.txt"
  for name in "${names[@]}"; do dvc queue logs "$name" > "$out/$name.log" 2>&1 || true; done
  dvc exp show --json > "$out/dev_exps.json"
  dvc exp show --csv --only-changed > "$out/dev_exps.csv" || true
  best_exp=$(python "$here/best_dev_run.py" "$out/dev_exps.json")
  if [ "$best_exp" = None ]; then
    chosen=${REAL_RUN_FALLBACK:-${settings[0]}}
    stamp "no dev experiment finished: the test run trains with the fallback setting $chosen (NOT chosen on dev)"
  else
    for i in "${!names[@]}"; do [ "${names[$i]}" = "$best_exp" ] && chosen=${settings[$i]}; done
    stamp "best dev experiment: $best_exp ($chosen); applying it"
    dvc exp apply "$best_exp"
  fi
fi
if [ -n "${REAL_RUN_ONLY_DEV:-}" ]; then
  echo "$chosen" > "$out/chosen_setting.txt"
  stamp "REAL_RUN_ONLY_DEV: stopping after dev; run the test set later with REAL_RUN_SETTING=\"$chosen\""
  exit 0
fi
mapfile -t chosen_flags < <(as_flags "$chosen")

stamp "test: the chosen setting on the whole RACE test set (train reused when the dev adapter applies)"
dvc exp run "${common[@]}" "${test[@]}" "${chosen_flags[@]}" "${extra[@]}" -n test-run > "$out/test_run.log" 2>&1 \
  || { tail -50 "$out/test_run.log"; exit 1; }
grep -E "Stage 'train' didn't change|Running stage 'train'|Restored stage" "$out/test_run.log" || true
grep -A8 "| variant | base acc" "$out/test_run.log" || true
dvc exp show --csv --only-changed > "$out/exps.csv" || true
dvc metrics show --md > "$out/metrics_show.md"
tar czf "$out/results.tgz" metrics plots reports results/train data/prepared/stats.json data/prepared/shots.jsonl \
  data/predictions/baseline.jsonl data/predictions/finetuned.jsonl dvc.lock params.yaml
# The peers, one after the other, on the test run's prepared data and baseline predictions.
# Plain TRL in bf16 died with a device-side assert in its sampling on this model (benchmarks/README.md), so the
# peers train in fp32 unless REAL_RUN_PEER_DTYPE says otherwise.
peer_dtype=${REAL_RUN_PEER_DTYPE:-float32}
for peer in ${REAL_RUN_PEERS:-defaults lora}; do
  case $peer in
    defaults) peer_args=() ;;
    lora) peer_args=(--lora-r 16 --lr 5e-5) ;;
    base_choice) peer_args=(--base-choice) ;;  # TRL's defaults with the setting's base_choice reward too
    constrained) peer_args=(--constrained) ;;  # TRL's defaults with the pipeline's rollouts (completion_pick's constraint)
    *) echo "REAL_RUN_PEERS: unknown peer '$peer' (known: defaults lora base_choice constrained)" >&2; exit 2 ;;
  esac
  stamp "peer $peer"
  python "$here/trl_peer.py" --dtype "$peer_dtype" "${peer_args[@]}" --out "$out/peer_$peer" > "$out/peer_$peer.log" 2>&1 \
    || { tail -30 "$out/peer_$peer.log"; exit 1; }
  tail -3 "$out/peer_$peer.log"
done
# Last, whether either model reads the passage: option log-likelihood with and without the article on the test
# questions, for the base and the fine-tuned model (benchmarks/reading_ablation.py; REAL_RUN_READING=0 skips it).
if [ "${REAL_RUN_READING:-1}" != 0 ]; then
  tf32=(); [ "${REAL_RUN_TF32:-true}" = true ] && tf32=(--tf32)
  for which in base tuned; do
    stamp "reading check: $which"
    adapter=(); [ "$which" = tuned ] && adapter=(--adapter models/adapter)
    python "$here/reading_ablation.py" --model "$model" --dtype "${REAL_RUN_DTYPE:-float32}" "${tf32[@]}" "${adapter[@]}" \
      --questions data/prepared/eval.jsonl --out "$out/reading_$which.json" > "$out/reading_$which.log" 2>&1 \
      || { tail -30 "$out/reading_$which.log"; exit 1; }
    tail -1 "$out/reading_$which.log"
  done
fi
stamp "done"
