"""environment.yml's pip section and pyproject.toml's dependencies list the same pinned packages."""

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_environment_yml_equals_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert sorted(pip_section) == sorted(project)
    assert all("==" in req for req in project), "every dependency is pinned"


def test_torch_pinned_first_in_makefile():
    makefile = (ROOT / "Makefile").read_text()
    assert makefile.index("torch==2.13.0") < makefile.index(" -e .")


def test_package_exports_the_design_entry_points():
    """Also after the submodules of the same name are imported (which must not rebind the names)."""
    import importlib

    import nrnlib

    importlib.import_module("nrnlib.evaluate")
    importlib.import_module("nrnlib.finetune")
    for name in nrnlib.__all__:
        assert callable(getattr(nrnlib, name)) and not isinstance(getattr(nrnlib, name), type(nrnlib)), name
