"""The workshop notebooks: committed without outputs, and run top to bottom on the demo project with the
pipeline's numbers (each notebook computes in its kernel what a stage computes; `dvc repro` of that stage on
the same project must give the same figures)."""

import json
from pathlib import Path

import nbformat
import pytest

from mcgrpo.demo import run, setup_demo
from mcgrpo.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["01_dataset_evaluation.ipynb", "02_fine_tuning_grpo.ipynb", "03_comparison_evaluation.ipynb"]


def read(name):
    return nbformat.read(ROOT / "notebooks" / name, as_version=4)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_are_committed_without_outputs_and_take_parameters_first(name):
    nb = read(name)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{name}: clear its outputs before committing"
    assert "parameters" in code[0].metadata.get("tags", []), f"{name}: the first code cell must be tagged parameters"
    assert "PROJECT = None" in code[0].source


def execute(name, project: Path, **parameters) -> dict:
    """Run a notebook with papermill-style injected parameters; returns what its final (added) cell prints."""
    from nbclient import NotebookClient

    nb = read(name)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    values = {"PROJECT": str(project), **parameters}
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in values.items())))
    nb.cells.append(nbformat.v4.new_code_cell("import json as _json\nprint('RESULT=' + _json.dumps(_result()))"))
    nb.cells.insert(len(nb.cells) - 1, nbformat.v4.new_code_cell(RESULT_CELLS[name]))
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    return json.loads(printed.split("RESULT=", 1)[1])


RESULT_CELLS = {
    "01_dataset_evaluation.ipynb": "def _result():\n    return {'metrics': base_metrics, 'stats_n': stats['eval']['n']}",
    "02_fine_tuning_grpo.ipynb": "def _result():\n    return {'rewards': scored, 'train': train_metrics}",
    "03_comparison_evaluation.ipynb": "def _result():\n    return {'comparison': comparison}",
}


@pytest.mark.slow
def test_the_three_notebooks_give_the_pipelines_numbers(tmp_path):
    project = setup_demo(ROOT, tmp_path / "demo")

    first = execute(NOTEBOOKS[0], project, N_EVAL=12)
    assert first["stats_n"] == 12
    run(["dvc", "repro", "baseline"], project)
    pipeline = read_metrics(project / "metrics/baseline.json")
    assert set(first["metrics"]) == set(pipeline) == {"loglik", "direct", "cot", "completion_direct", "completion_pick",
                                                      "completion_cot"}
    for variant, m in pipeline.items():
        for key in ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "format_rate", "answered_rate", "n"):
            assert first["metrics"][variant][key] == m[key], (variant, key)

    second = execute(NOTEBOOKS[1], project, MAX_STEPS=2)
    rewards = {r["completion"]: r for r in second["rewards"]}
    assert rewards["right, in format"]["correct"] and rewards["right, in format"]["format_ok"]
    assert not rewards["wrong, in format"]["correct"] and rewards["two letters"]["pred"] is None
    assert rewards["right, in format"]["reward"] > rewards["right, malformed"]["reward"] > rewards["no answer"]["reward"]
    assert second["train"]["steps"] == 2 == json.loads((project / "metrics/train.json").read_text())["steps"]
    assert (project / "models/adapter/adapter_model.safetensors").exists()

    third = execute(NOTEBOOKS[2], project)
    run(["dvc", "repro", "evaluate"], project)
    pipeline = read_metrics(project / "metrics/comparison.json")
    assert set(third["comparison"]) == set(pipeline)
    for variant, c in pipeline.items():
        for key in ("base_accuracy", "finetuned_accuracy", "fixed", "broken", "p_value"):
            assert third["comparison"][variant][key] == c[key], (variant, key)
