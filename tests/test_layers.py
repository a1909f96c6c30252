"""The package layering of docs/architecture.md, enforced: gateway -> agents -> (adapters | router_model) -> core.

import-linter reads the contract from pyproject.toml and follows every import, lazy ones inside
functions included; one import against the arrows fails this test and names the chain."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint(cwd: Path, config: Path | None = None) -> subprocess.CompletedProcess:
    args = [str(LINT_IMPORTS), "--no-cache"] + (["--config", str(config)] if config else [])
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_packages_keep_their_layers():
    result = lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    # The same contract over a copy of the layout with one adapter importing the gateway.
    root = tmp_path / "src"
    for pkg in ("core", "adapters", "router_model", "agents", "gateway"):
        (root / "octogate" / pkg).mkdir(parents=True)
        (root / "octogate" / pkg / "__init__.py").write_text("")
    (root / "octogate" / "gateway" / "app.py").write_text("import octogate.adapters.backend\n")
    (root / "octogate" / "adapters" / "backend.py").write_text(
        "def build():\n    from octogate.gateway import app  # against the arrows\n")
    config = tmp_path / "pyproject.toml"
    contract = (REPO / "pyproject.toml").read_text().split("[tool.importlinter]", 1)[1].split("\n[tool.", 1)[0]
    config.write_text("[tool.importlinter]" + contract)
    result = subprocess.run([str(LINT_IMPORTS), "--no-cache", "--config", str(config)], cwd=root,
                            capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "octogate.adapters.backend -> octogate.gateway" in result.stdout
