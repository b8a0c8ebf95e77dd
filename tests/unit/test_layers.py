"""The package's layers hold: import-linter checks the contracts in pyproject.toml.

The contracts say the core never imports vLLM or a layer above it, only the
glue imports vLLM, serving never imports extraction, reporting or plotting, and
the layers stack as documented. A new import that breaks one fails here.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.helpers import ROOT


def test_import_contracts_are_kept():
    lint = shutil.which("lint-imports")
    if lint is None:
        pytest.fail("lint-imports missing: install the [test] extra (scripts/setup.sh does)")
    done = subprocess.run([lint, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_vllm_private_api_is_used_only_in_compat():
    """Every use of vLLM internals (`_LOAD_FORMAT_TO_MODEL_LOADER`, `_prepare_weights`, `app.state`) is in compat."""
    private = ("_LOAD_FORMAT_TO_MODEL_LOADER", "_prepare_weights", "openai_serving_models", ".resolvers",
               "envs.VLLM_")
    offenders = [
        f"{path.relative_to(ROOT)}: {needle}"
        for path in (ROOT / "rosi_vllm").rglob("*.py") if path.name != "compat.py"
        for needle in private if needle in path.read_text()
    ]
    assert not offenders, offenders


def test_a_broken_contract_is_caught(tmp_path):
    """The checker itself can fail: a core module importing vLLM is reported."""
    pkg = tmp_path / "rosi_vllm"
    shutil.copytree(ROOT / "rosi_vllm", pkg, ignore=shutil.ignore_patterns("__pycache__", "data"))
    (pkg / "core" / "injection.py").write_text((pkg / "core" / "injection.py").read_text() + "\nimport vllm  # noqa\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    done = subprocess.run([shutil.which("lint-imports") or "lint-imports", "--config", "pyproject.toml"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin:" + str(ROOT)})
    assert done.returncode != 0
    assert "rosi_vllm.core.injection -> vllm" in done.stdout


def test_every_root_package_and_module_is_a_layer():
    """The contracts name packages, so a module is covered by being in one: nothing may sit at the root unnamed."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    named = {name.strip() for layer in layers for name in layer.split("|")}
    root = ROOT / "rosi_vllm"
    present = {p.stem for p in root.glob("*.py") if p.stem != "__init__"} | {
        p.name for p in root.iterdir() if (p / "__init__.py").is_file()}
    assert present - named == set(), f"rosi_vllm/ has {sorted(present - named)} in no layer of pyproject.toml"
