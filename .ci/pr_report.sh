#!/usr/bin/env bash
# The pull-request comment, as markdown on stdout: what this branch changed against BASE (default main).
# Works in a fresh clone with no DVC cache: metrics, params and plots/*.png are git-tracked.
# Used by .github/workflows/pr-review.yml; try it locally: bash .ci/pr_report.sh main
set -euo pipefail
base="${1:-main}"
echo "## DVC metrics: this branch vs \`$base\`"
dvc metrics diff "$base" --md
echo
echo "## Params changed"
dvc params diff "$base" --md
echo
if [ -f plots/accuracy.png ]; then
  echo "## Accuracy (base vs fine-tuned, 95% intervals)"
  echo "![accuracy per prompt variant](./plots/accuracy.png)"
fi
