"""Packaging: the wheel holds the package only and declares the console scripts; the installed package imports
without the repository around it; pip and conda name the same dependencies; CI runs the README's command."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "hypermorph_spatially_adaptive"
SCRIPTS = ("hypermorph-train-global", "hypermorph-train-spatial", "hypermorph-identify", "hypermorph-infer",
           "hypermorph-phantom", "hypermorph-demo", "hypermorph-locality", "hypermorph-study")


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~ \[]", r.strip(), maxsplit=1)[0].lower() for r in requirements}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """A wheel built from a copy of the sources (so that no build output lands in the repository)."""
    source = tmp_path_factory.mktemp("source") / "project"
    def skip(folder: str, names: list[str]) -> set[str]:
        outputs = {".git", ".venv", "runs", "data", "build"} if Path(folder) == ROOT else set()
        return {n for n in names if n in outputs or n in ("__pycache__", ".pytest_cache") or n.endswith(".egg-info")}

    shutil.copytree(ROOT, source, ignore=skip)
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                             "--quiet", "-w", str(out), str(source)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = out.glob("*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_holds_only_the_package_and_its_metadata(wheel):
    top = {name.split("/")[0] for name in wheel.namelist()}
    dist_info = {name for name in top if name.endswith(".dist-info")}
    assert top - dist_info == {PACKAGE} and len(dist_info) == 1
    names = set(wheel.namelist())
    for module in ("core/regularizers.py", "models/checkpoints.py", "data/phantom/writer.py",
                   "evaluation/statistics.py", "stages/identification/stage.py", "stages/inference/pairs.py"):
        assert f"{PACKAGE}/{module}" in names, module


def test_the_wheel_declares_the_console_scripts(wheel):
    (entry_points,) = [name for name in wheel.namelist() if name.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry_points).decode()
    assert "[console_scripts]" in text
    for script in SCRIPTS:
        assert re.search(rf"^{script} = {PACKAGE}\.[\w.]+:main\w*$", text, re.MULTILINE), script


def test_the_package_imports_from_a_folder_outside_the_repository(tmp_path):
    code = ("import hypermorph_spatially_adaptive as h, hypermorph_spatially_adaptive.stages.demo, sys; "
            "print(h.__file__); print('datasets' in sys.modules, 'regularizers' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    location, loaded = result.stdout.splitlines()
    assert Path(location).parent.name == PACKAGE
    assert loaded == "False False"  # no top-level file was imported on the way


def test_environment_yml_and_pyproject_name_the_same_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_side = _names(project["dependencies"] + project["optional-dependencies"]["test"])
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda_pip = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    assert _names(conda_pip) == pip_side


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_the_console_scripts_point_at_existing_entry_points():
    import importlib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == set(SCRIPTS)
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target


def test_no_source_file_is_ignored_by_git():
    # An ignore pattern such as "data/" once hid the package's data/ sub-package from commits and clean clones.
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    result = subprocess.run(["git", "ls-files", "--others", "--ignored", "--exclude-standard", "--",
                             PACKAGE, "tests", "benchmarks", "docs"], cwd=ROOT, capture_output=True, text=True)
    ignored = [path for path in result.stdout.splitlines() if "__pycache__" not in path]
    assert not ignored, f"ignored by .gitignore, so missing from every clone: {ignored}"
