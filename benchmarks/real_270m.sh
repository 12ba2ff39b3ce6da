#!/usr/bin/env bash
# The real run, as a user runs it: Gemma 3 270M (pretrained) on RACE through this repository's dvc.yaml.
#
#   bash benchmarks/real_270m.sh MODEL_DIR RACE_TARBALL OUT
#
# MODEL_DIR: a folder `mcgrpo from-gguf` wrote (an absolute path: queued experiments run in temp copies).
# RACE_TARBALL: RACE.tar.gz from CMU (non-commercial research use only); copied to data/raw/.
# 1. dev: a queue of experiments on 1,000 RACE dev questions (learning rates), REAL_RUN_JOBS (2) at a time;
# 2. meanwhile prepare + baseline on the whole RACE test set in the workspace, then the plain-TRL peers
#    (benchmarks/trl_peer.py) trained and evaluated on the same prepared data;
# 3. the best dev setting by fine-tuned accuracy on the trained variant, then `dvc exp run` on the test set
#    with it (prepare and baseline are found done; train, evaluate, plots, report, publish run);
# 4. OUT/: dvc exp show tables, the peers' metrics, and a tarball of metrics/, plots/, reports/, predictions.
# The repository must be a git repository with its changes committed (dvc exp needs a commit).
set -euo pipefail
model=$1 race=$2 out=$3
mkdir -p "$out" data/raw
cp "$race" data/raw/RACE.tar.gz
if [ -n "$(git status --porcelain)" ]; then git add -A && git commit -qm "real run: RACE under data/raw"; fi

# What every run shares: the pretrained model, RACE, completion prompts, GRPO on the direct completion form.
common=(-S "model.name=$model" -S model.backend=transformers
        -S prepare.source=race -S prepare.path=data/raw/RACE.tar.gz -S prepare.config=all
        -S prepare.n_train=2000 -S prepare.max_prompt_tokens=2048
        -S eval.batch_size=256 -S eval.max_new_tokens=128
        -S train.variant=completion_direct -S train.max_completion_length=4 -S train.max_steps=150
        -S train.num_generations=8 -S train.per_device_train_batch_size=16 -S train.gradient_accumulation_steps=4
        -S train.beta=0.0 -S train.save_steps=50
        -S reward_model.variant=completion_cot -S reward_model.max_new_tokens=128 -S reward_model.batch_size=256)
extra=(${REAL_RUN_EXTRA:-})  # more -S flags, applied last (a CPU smoke run shrinks the sizes with these)
dev=(-S prepare.eval_split=dev -S prepare.n_eval=1000 -S eval.mode=generate -S "eval.variants=[completion_direct]"
     -S reward_model.n_questions=40)
test=(-S prepare.eval_split=test -S prepare.n_eval=null -S eval.mode=both
      -S "eval.variants=[completion_direct,completion_cot,direct,cot]")

best=${REAL_RUN_LR:-}  # set: skip the dev queue and use this learning rate
if [ -z "$best" ]; then
  jobs=${REAL_RUN_JOBS:-2}  # they share one GPU with the peers: see benchmarks/README.md (real 270M run)
  echo "== dev: learning rates, $jobs at a time, in the queue's own copies ($(date -u +%T))"
  for lr in 5e-05 0.0001 0.0002 0.0005; do
    dvc exp run --queue "${common[@]}" "${dev[@]}" -S "train.learning_rate=$lr" "${extra[@]}" -n "dev-lr$lr"
  done
  dvc queue start --jobs "$jobs"
fi

# Meanwhile, in the workspace: prepare and baseline on the test set (they do not depend on the learning rate,
# so the test run below finds them done), then the peers on the same prepared data and baseline.
echo "== test: prepare + baseline on the whole RACE test set ($(date -u +%T))"
dvc exp run baseline "${common[@]}" "${test[@]}" "${extra[@]}" -n test-baseline > "$out/test_baseline.log" 2>&1 \
  || { tail -50 "$out/test_baseline.log"; exit 1; }
grep -A8 "| model | variant" "$out/test_baseline.log" || true
(python benchmarks/trl_peer.py --out "$out/peer_defaults" || python benchmarks/trl_peer.py --dtype float32 --out "$out/peer_defaults_fp32") > "$out/peer_defaults.log" 2>&1 &
(python benchmarks/trl_peer.py --lora-r 16 --lr 5e-5 --out "$out/peer_lora" || python benchmarks/trl_peer.py --lora-r 16 --lr 5e-5 --dtype float32 --out "$out/peer_lora_fp32") > "$out/peer_lora.log" 2>&1 &

if [ -z "$best" ]; then
  # (grep without -q: with pipefail, -q exiting early would fail the pipeline and end the wait)
  while dvc queue status 2>/dev/null | grep -E "Queued|Running" > /dev/null; do sleep 10; done
  dvc queue status | tee "$out/dev_queue_status.txt"
  dvc exp show --json > "$out/dev_exps.json"
  dvc exp show --csv --only-changed > "$out/dev_exps.csv" || true
  best=$(python benchmarks/best_dev_run.py "$out/dev_exps.json")
  [ "$best" != None ] || { echo "no dev experiment finished"; dvc queue logs "dev-lr5e-05" | tail -30; exit 1; }
fi
echo "== best dev learning rate: $best"

echo "== test: train with it, evaluate, plots, report ($(date -u +%T))"
dvc exp run "${common[@]}" "${test[@]}" -S "train.learning_rate=$best" "${extra[@]}" -n "test-lr$best" > "$out/test_run.log" 2>&1 \
  || { tail -50 "$out/test_run.log"; exit 1; }
grep -A8 "| variant | base acc" "$out/test_run.log" || true
wait
dvc exp show --csv --only-changed > "$out/exps.csv" || true
dvc metrics show --md > "$out/metrics_show.md"
tar czf "$out/results.tgz" metrics plots reports data/prepared/stats.json data/prepared/shots.jsonl \
  data/predictions/baseline.jsonl data/predictions/finetuned.jsonl dvc.lock params.yaml
echo "== done ($(date -u +%T))"
