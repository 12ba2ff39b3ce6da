"""evaluate: base model + LoRA adapter on the same eval set and settings as baseline; compare."""

from mcgrpo import paths
from mcgrpo.errors import EVAL_OOM, run_stage
from mcgrpo.evaluation import answer_eval_set
from mcgrpo.fileio import read_jsonl, write_jsonl
from mcgrpo.metrics import compare, format_comparison, summarize, write_metrics
from mcgrpo.modeling import load_model
from mcgrpo.params import load_params


def main():
    p = load_params()
    records = read_jsonl(paths.EVAL_SET)
    model, tokenizer, _ = load_model(p.model, adapter_dir=paths.ADAPTER)
    rows = answer_eval_set(model, tokenizer, records, p.eval, "finetuned", shots=read_jsonl(paths.SHOTS))
    comparison = compare(read_jsonl(paths.BASELINE_PREDICTIONS), rows)
    write_jsonl(paths.FINETUNED_PREDICTIONS, rows)
    write_metrics(paths.FINETUNED_METRICS, summarize(rows))
    write_metrics(paths.COMPARISON, comparison)
    print(format_comparison(comparison))


if __name__ == "__main__":
    run_stage(main, oom_hint=EVAL_OOM)
