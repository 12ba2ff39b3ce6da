"""Data-parallel GRPO: the train stage relaunches itself under `accelerate launch` (here 2 CPU processes, gloo)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mcgrpo.demo import setup_demo
from mcgrpo.params import TrainParams
from mcgrpo.training import accelerate_command, training_backend

ROOT = Path(__file__).resolve().parents[1]


def test_the_launch_command_and_backend_rules(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    tp = TrainParams(num_processes=2)
    command = accelerate_command(tp, "stages/train.py")
    assert command[1:] == ["-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/ddp.yaml",
                           "--num_processes", "2", "--num_machines", "1", "stages/train.py"]
    assert training_backend("auto", tp) == "transformers"
    with pytest.raises(Exception, match="unsloth trains on one GPU only"):
        training_backend("unsloth", tp)
    with pytest.raises(Exception, match="train.accelerate_config='nope.yaml': file not found"):
        accelerate_command(TrainParams(num_processes=2, accelerate_config="nope.yaml"), "stages/train.py")


@pytest.mark.slow
def test_two_processes_train_one_adapter(tmp_path):
    overrides = {"prepare": {"n_train": 16, "n_eval": 4},
                 "train": {"max_steps": 2, "save_steps": 2, "num_processes": 2, "per_device_train_batch_size": 4,
                           "num_generations": 4, "max_completion_length": 8}}
    repo = setup_demo(ROOT, tmp_path / "demo", overrides=overrides, warm_start_steps=0)
    env = {**os.environ, "PYTHONPATH": str(repo / "src"), "MASTER_PORT": "29533"}
    subprocess.run([sys.executable, "stages/prepare.py"], cwd=repo, env=env, check=True, capture_output=True)
    proc = subprocess.run([sys.executable, "stages/train.py"], cwd=repo, env=env, text=True, capture_output=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "launching 2 training processes" in proc.stdout
    summary = json.loads((repo / "metrics/train.json").read_text())
    assert summary["num_processes"] == 2 and summary["steps"] == 2 and summary["backend"] == "transformers"
    assert (repo / "models/adapter/adapter_model.safetensors").exists()
    with open(repo / "results/train/plots/metrics/reward.tsv") as f:
        assert [line.split("\t")[0] for line in f.read().splitlines()[1:]] == ["1", "2"]  # one writer, no duplicates
