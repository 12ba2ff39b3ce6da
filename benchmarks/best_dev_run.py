"""Print the name of the dev experiment with the highest fine-tuned accuracy on the trained variant
("None" when no dev experiment has finished).

    python benchmarks/best_dev_run.py dev_exps.json    # from `dvc exp show --json`; the choices go to stderr

Only experiments evaluated on the dev split (prepare.eval_split: dev) are candidates: test-set results never
choose a setting.
"""

import json
import sys

from mcgrpo.params import load_params

variant = load_params().train.variant
best, best_accuracy = None, -1.0
# dvc exp show --json: [{"rev", "experiments": [{"revs": [{"name", "data": {"metrics", "params"}}]}]}]
for commit in json.load(open(sys.argv[1])):
    for experiment in commit.get("experiments") or []:
        for rev in experiment["revs"]:
            data = rev.get("data") or {}
            params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
            if params.get("prepare", {}).get("eval_split") != "dev":
                continue
            tuned = (data.get("metrics") or {}).get("metrics/finetuned.json", {}).get("data", {})
            accuracy = tuned.get(params.get("train", {}).get("variant", variant), {}).get("accuracy")
            print(f"dev {rev.get('name')}: fine-tuned accuracy {accuracy}", file=sys.stderr)
            if accuracy is not None and accuracy > best_accuracy:
                best, best_accuracy = rev.get("name"), accuracy
print(best)
