"""The config layer is the bottom one: ``pretrainlab.config`` (the schemas and ConfigError)
imports no other pretrainlab module, so the models, data and objectives can import it without a
cycle; the checks that need those modules live above them, in ``pretrainlab.validation``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pretrainlab

SRC = Path(pretrainlab.__file__).parent


def pretrainlab_imports(module: Path) -> set[str]:
    """Every pretrainlab module ``module`` imports, at the top or inside a function."""
    return pretrainlab_imports_in(ast.parse(module.read_text(encoding="utf-8")))


def pretrainlab_imports_in(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pretrainlab"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pretrainlab"))
    return found


def test_config_imports_no_other_pretrainlab_module():
    tree = ast.parse((SRC / "config.py").read_text(encoding="utf-8"))
    assert not pretrainlab_imports_in(tree)


def test_the_models_and_data_do_not_import_validation():
    lower = [p for folder in ("models", "data", "objectives") for p in (SRC / folder).rglob("*.py")]
    for module in lower:
        assert "pretrainlab.validation" not in pretrainlab_imports(module), module


def test_importing_the_config_loads_no_other_pretrainlab_module():
    code = (
        "import sys; import pretrainlab.config; "
        "print(sorted(m for m in sys.modules if m.startswith('pretrainlab.') and 'registration' not in m))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['pretrainlab.config', 'pretrainlab.models']"


def test_validation_is_where_validate_lives():
    from pretrainlab import validation

    assert validation.validate.__module__ == "pretrainlab.validation"
    assert len((SRC / "config.py").read_text(encoding="utf-8").splitlines()) < 400
