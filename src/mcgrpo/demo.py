"""The offline demo: the real dvc.yaml and stages, run by real `dvc` in a scratch git repo,
on a tiny random-init Gemma 3 and a synthetic dataset, with params.yaml shrunk to fit 2 CPU cores.

The demo params are the project's params.yaml with DEMO_OVERRIDES applied, so every key the real
run has, the demo has too.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from mcgrpo.data.synthetic import make_synthetic_mc
from mcgrpo.fileio import write_jsonl
from mcgrpo.params import deep_merge, read_raw_params, write_params
from mcgrpo.tiny import build_tiny_model

TINY_MODEL = "models/tiny-gemma"
DEMO_DATA = "data/raw/demo.jsonl"
DEMO_OVERRIDES = {
    "model": {"name": TINY_MODEL, "backend": "transformers", "dtype": "float32"},
    "prepare": {"source": "table", "path": DEMO_DATA, "config": None, "n_train": 48, "n_eval": 24,
                "max_prompt_tokens": 400,
                "fields": {"id": "id", "context": "context", "question": "question", "options": "options",
                           "answer": "answer", "answer_format": "letter", "source": None}},
    "eval": {"batch_size": 24, "max_new_tokens": 24},
    "reward_model": {"n_questions": 24, "samples_per_question": 4, "max_new_tokens": 24, "batch_size": 48,
                     "min_per_class": 3},
    "train": {"max_steps": 6, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
              "num_generations": 4, "max_completion_length": 24, "learning_rate": 1e-4, "warmup_steps": 0,
              "save_steps": 3, "gradient_checkpointing": False},
}
MODEL_METRICS = ["metrics/baseline.json", "metrics/finetuned.json"]
PROJECT_FILES = ["dvc.yaml", "stages", "src", "configs", ".dvcignore"]
GIT_ENV = {"GIT_AUTHOR_NAME": "mcgrpo demo", "GIT_AUTHOR_EMAIL": "demo@localhost",
           "GIT_COMMITTER_NAME": "mcgrpo demo", "GIT_COMMITTER_EMAIL": "demo@localhost"}


def project_env(cwd) -> dict:
    # The stages import the project's own copy of the package: the code DVC hashes is the code that runs.
    return {**os.environ, **GIT_ENV, "DVC_NO_ANALYTICS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(cwd) / "src"), os.environ.get("PYTHONPATH")]))}


def run(cmd: list[str], cwd, check=True, capture=False) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=project_env(cwd), check=check, text=True, capture_output=capture)


WARM_START_STEPS = 200  # so the tiny model answers in format and GRPO sees reward differences


def setup_demo(project: Path, dest: Path, overrides: dict | None = None, warm_start_steps: int = WARM_START_STEPS) -> Path:
    """A fresh git+dvc repo at dest with the project's pipeline, demo params, tiny model and data."""
    project, dest = Path(project).resolve(), Path(dest).resolve()
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in PROJECT_FILES:
        src = project / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    write_params(dest / "params.yaml", deep_merge(read_raw_params(project / "params.yaml"),
                                                  deep_merge(DEMO_OVERRIDES, overrides or {})))
    write_jsonl(dest / DEMO_DATA, make_synthetic_mc(120, seed=0))
    build_tiny_model(dest / TINY_MODEL, warm_start_steps=warm_start_steps)
    run(["git", "init", "-q"], dest)
    run(["dvc", "init", "-q"], dest)
    run(["dvc", "config", "core.analytics", "false"], dest)
    # DVC-tracked, so experiments queued with `dvc exp run --queue` (run in a temporary copy) have it too
    run(["dvc", "add", "-q", TINY_MODEL], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "demo project"], dest)
    return dest


def run_demo(project: Path, dest: Path) -> None:
    dest = setup_demo(project, dest)
    print(f"demo project: {dest}\n$ dvc repro", flush=True)
    run(["dvc", "repro"], dest)
    print("\n$ dvc metrics show   (base and fine-tuned share keys)", flush=True)
    run(["dvc", "metrics", "show", "--md", *MODEL_METRICS], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "demo run"], dest)
    print("\n$ dvc exp run -S train.learning_rate=0.001   (an experiment: only train and what follows rerun)", flush=True)
    run(["dvc", "exp", "run", "-S", "train.learning_rate=0.001"], dest)
    print("\n$ dvc metrics diff --md   (experiment vs the committed run)", flush=True)
    run(["dvc", "metrics", "diff", "--md", "--all", "--targets", *MODEL_METRICS, "metrics/train.json"], dest)
    print(f"\nreport: {dest / 'reports/report.md'}\nplots:  {dest / 'plots'}")


if __name__ == "__main__":
    run_demo(Path.cwd(), Path(sys.argv[1] if len(sys.argv) > 1 else "build/demo"))
