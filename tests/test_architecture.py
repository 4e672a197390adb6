"""The structure the families issue promised: no import cycles, no family names in the shared
machinery, a CLI that loads neither torch nor Ray, and modules of a readable size."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "pipeline"
FAMILY_NAMES = ("dcgan", "bytegpt", "mlp-gan", "mlpgan", "vae", "specgan")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every pipeline module ``path`` imports, at any depth of the code (function-level imports too);
    ``from a.b import c`` counts as a.b.c when c is a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    found: set[str] = set()
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _type_checking(node):
            skip.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m in modules and m != here}


def graph() -> dict[str, set[str]]:
    files = sorted(PKG.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imports_of(f, modules) for f in files}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if state.get(m) is None:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if state.get(n) is None:
            found = visit(n)
            if found:
                return found
    return None


def test_the_package_has_no_import_cycle_not_even_through_function_level_imports():
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_function_level_cycle(tmp_path):
    """The check itself: a cycle closed by an import inside a function is found."""
    pkg = tmp_path / "pipeline"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pipeline.b import x\n")
    (pkg / "b.py").write_text("x = 1\n\ndef f():\n    from pipeline import a\n    return a\n")
    files = sorted(pkg.rglob("*.py"))
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        modules = {module_name(f) for f in files}
        g = {module_name(f): imports_of(f, modules) for f in files}
    finally:
        ROOT = saved
    assert find_cycle(g) is not None


def shared_modules() -> list[Path]:
    """Everything but the families' own packages and the catalog of their declarations."""
    return [p for p in sorted(PKG.rglob("*.py")) if p.relative_to(PKG).parts[0] not in ("families", "catalog")
            or p.relative_to(PKG).parts[-1] == "base.py"]


def test_nothing_outside_the_families_branches_on_a_family():
    pattern = re.compile(r"""(\bkind\s*[!=]=\s*["'](text|image)["']|is_text_model|\barch\s*[!=]=|"""
                         r"""["'](""" + "|".join(map(re.escape, FAMILY_NAMES)) + r""")["'])""")
    allowed = {PKG / "specs" / "__init__.py"}  # the old names of the model sections, for old specs and notebooks
    hits = []
    for path in shared_modules():
        if path in allowed:
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if pattern.search(code) and not code.strip().startswith(('"', "'", ">>>")):
                hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert hits == [], "\n".join(hits)


def test_the_cli_imports_neither_torch_nor_ray():
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", "import pipeline.cli"], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    loaded = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if "|" in line}
    heavy = sorted(m for m in loaded if m.split(".")[0] in ("torch", "ray", "pyarrow", "numpy"))
    assert heavy == []


def test_validate_loads_neither_torch_nor_ray():
    code = ("import sys; from typer.testing import CliRunner; from pipeline.cli import app; "
            "r = CliRunner().invoke(app, ['validate', 'jobs/demo.yaml']); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_no_module_is_over_about_400_lines(path):
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 440


def test_no_comment_points_at_a_document_outside_the_repository():
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in sorted(PKG.rglob("*.py"))
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if "DESIGN §" in line]
    assert hits == []


@pytest.mark.slow  # the default suite's time budget (README: the suite); make test-slow runs it
def test_gpu_check_runs_its_cpu_safe_parts():
    """benchmarks/gpu_check.sh --dry-run: the GPU check's training, generation, ceiling and byte-identity
    paths on the CPU at tiny sizes, through the script a GPU machine runs."""
    r = subprocess.run([str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], capture_output=True, text=True,
                       cwd=ROOT, timeout=600)
    out = r.stdout
    assert r.returncode == 0, out[-2000:] + r.stderr[-3000:]
    for figure in ("1. training", "2. generation", "3. byte identity", "4. peak GPU memory"):
        assert figure in out
    assert "identical" in out and "ratio" in out
