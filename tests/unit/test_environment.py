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
    assert makefile.index("torch==2.13.0") < makefile.index("pip install --quiet -e .")


def test_package_exports_the_design_entry_points():
    import nrnlib

    for name in nrnlib.__all__:
        assert callable(getattr(nrnlib, name)), name
    with __import__("pytest").raises(AttributeError, match="no attribute"):
        nrnlib.does_not_exist  # noqa: B018
