"""The structural rules of docs/architecture.md ("Module map"), checked by the same script a
developer runs (scripts/check_structure.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_structure.py"


def load_checker():
    spec = importlib.util.spec_from_file_location("check_structure", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_no_cycle_no_oversized_module_or_function_no_backend_outside_runtime():
    assert load_checker().check() == []


def test_the_checker_sees_a_cycle_and_a_long_function(tmp_path, monkeypatch):
    checker = load_checker()
    pkg = tmp_path / "src" / "qkdtwin"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from qkdtwin.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    body = "".join("    x = 1\n" for _ in range(85))
    (pkg / "sub" / "b.py").write_text(f"def f():\n    from qkdtwin import a\n{body}")
    (pkg / "c.py").write_text('RUNTIME = "clab"\n')
    monkeypatch.setattr(checker, "ROOT", tmp_path)
    monkeypatch.setattr(checker, "PACKAGE", pkg)
    problems = checker.check()
    assert any(p.startswith("import cycle:") and "qkdtwin.a" in p and "qkdtwin.sub.b" in p
               for p in problems), problems
    assert any("f() is 87 lines" in p for p in problems), problems
    assert any('c.py names the "clab" backend' in p for p in problems), problems
