"""baseline: the base model answers the eval set under every prompt variant."""

from mcgrpo import paths
from mcgrpo.errors import EVAL_OOM, run_stage
from mcgrpo.evaluation import answer_eval_set
from mcgrpo.fileio import read_jsonl, write_jsonl
from mcgrpo.metrics import format_metrics, summarize, write_metrics
from mcgrpo.modeling import load_model
from mcgrpo.params import load_params


def main():
    p = load_params()
    records = read_jsonl(paths.EVAL_SET)
    model, tokenizer, _ = load_model(p.model)
    rows = answer_eval_set(model, tokenizer, records, p.eval, "base", shots=read_jsonl(paths.SHOTS))
    metrics = summarize(rows)
    write_jsonl(paths.BASELINE_PREDICTIONS, rows)
    write_metrics(paths.BASELINE_METRICS, metrics)
    print(format_metrics({"base": metrics}))


if __name__ == "__main__":
    run_stage(main, oom_hint=EVAL_OOM)
