"""Every project module a stage script imports (transitively, function-level imports included) is in its deps.

A module missing from deps is a stale-output trap: edit it, and `dvc repro` says all is up to date while
the stage's outputs come from the old code. Plumbing that dvc.yaml leaves out on purpose (params, fileio,
errors, paths, package __init__) holds no values that change results.
"""

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "mcgrpo"
PLUMBING = {"params.py", "fileio.py", "errors.py", "paths.py", "__init__.py"}


def module_file(name: str) -> Path | None:
    parts = name.split(".")[1:]
    base = PACKAGE.joinpath(*parts) if parts else PACKAGE
    return next((f for f in (base.with_suffix(".py"), base / "__init__.py") if f.exists()), None)


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("mcgrpo")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mcgrpo"):
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def project_closure(script: Path) -> set[Path]:
    seen, todo = set(), [script]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += [f for f in map(module_file, imported_modules(path)) if f and f not in seen]
    return {f for f in seen if PACKAGE in f.parents}


def untracked_imports(dvc_yaml: dict) -> dict[str, list[str]]:
    gaps = {}
    for name, stage in dvc_yaml["stages"].items():
        script = next(ROOT / w for w in stage["cmd"].split() if w.endswith(".py"))
        deps = [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]
        missing = [rel for rel in sorted(f.relative_to(ROOT).as_posix() for f in project_closure(script))
                   if not (Path(rel).name in PLUMBING and Path(rel).parent == Path("src/mcgrpo"))
                   and not any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)]
        if missing:
            gaps[name] = missing
    return gaps


def test_every_stage_lists_the_project_code_it_imports():
    dvc_yaml = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert untracked_imports(dvc_yaml) == {}


def test_the_check_finds_a_missing_module():
    dvc_yaml = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    dvc_yaml["stages"]["train"]["deps"].remove("src/mcgrpo/fast_generation.py")
    assert untracked_imports(dvc_yaml) == {"train": ["src/mcgrpo/fast_generation.py"]}
