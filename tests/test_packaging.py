"""pyproject.toml (pip) and environment.yml (conda) pin the same versions."""

import tomllib

import yaml

from tests.conftest import ROOT


def _pins(requirements):
    return {r.split("==")[0].lower(): r.split("==")[1] for r in requirements if "==" in r}


def test_pip_and_conda_pins_agree():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip = project["dependencies"] + project["optional-dependencies"]["dev"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda_pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins(pip) == _pins(conda_pip)
    assert _pins(pip)["torch"] == "2.13.0"
