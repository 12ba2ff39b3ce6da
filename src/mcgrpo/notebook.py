"""What the workshop notebooks (notebooks/*.ipynb) share: a project to work in, its params, stages run by DVC.

The notebooks hold no second implementation: they call the functions the stages call, or run a stage with
`dvc repro`. Their first cell names a project folder; by default a scratch copy of the offline demo (tiny
random-init Gemma 3, synthetic questions), shared by the three notebooks so 02 trains on what 01 prepared.
"""

import os
import subprocess
import time
from pathlib import Path

from mcgrpo.demo import project_env, setup_demo
from mcgrpo.params import read_raw_params, write_params


def repo_root(start: Path | None = None) -> Path:
    """The checkout the notebook runs from: the first folder upwards holding dvc.yaml and src/mcgrpo."""
    start = Path(start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "dvc.yaml").exists() and (folder / "src" / "mcgrpo").is_dir():
            return folder
    raise FileNotFoundError(f"no mcgrpo checkout at or above {start}: run the notebook from the repository")


def open_project(path=None) -> Path:
    """Work in `path` (a project with dvc.yaml and params.yaml), or in the shared demo project, made once.

    The working directory becomes the project: the package's paths (data/prepared/..., metrics/...) are
    relative, as they are for the stages.
    """
    if path is None:
        path = repo_root() / "notebooks" / "demo-project"
        if not (path / "dvc.yaml").exists():
            print(f"making the offline demo project in {path} (tiny model, synthetic questions) ...")
            setup_demo(repo_root(), path)
    path = Path(path).resolve()
    if not (path / "dvc.yaml").exists() or not (path / "params.yaml").exists():
        raise FileNotFoundError(f"{path}: not a project folder (needs dvc.yaml and params.yaml)")
    os.chdir(path)
    return path


def set_params(changes: dict) -> dict:
    """Merge {section: {key: value}} into params.yaml (as `dvc exp run -S` would) and validate the result;
    None values are left out, so a notebook parameter of None keeps the project's setting."""
    params = read_raw_params()
    for section, values in changes.items():
        for key, value in values.items():
            if value is not None:
                params.setdefault(section, {})[key] = value
    return write_params("params.yaml", params).model_dump()  # a bad value fails here, naming the key


def repro(*stages: str, on_poll=None, every_s: float = 2.0) -> str:
    """`dvc repro STAGE...` in the project; returns its output and raises with it when a stage fails.
    on_poll() is called every `every_s` seconds while it runs (and once at the end), so a notebook can
    redraw the training curves as the stage writes them."""
    log = Path(".dvc/tmp") / f"notebook-{'-'.join(stages) or 'all'}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        process = subprocess.Popen(["dvc", "repro", *stages], stdout=out, stderr=subprocess.STDOUT,
                                   env=project_env(Path.cwd()), text=True)
        while process.poll() is None:
            time.sleep(every_s if on_poll else 0.2)
            if on_poll:
                on_poll()
    if on_poll:
        on_poll()
    text = log.read_text()
    if process.returncode:
        raise RuntimeError(f"dvc repro {' '.join(stages)} failed:\n{text[-3000:]}")
    return text


def adapter_path(adapter: str) -> Path:
    """A local adapter folder as given, or a Hub repo id downloaded (token from HF_TOKEN / `hf auth login`)."""
    if Path(adapter).exists():
        return Path(adapter)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(adapter))
