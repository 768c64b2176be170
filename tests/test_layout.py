"""The house's promises, checked: a short top level, small modules, no import circles, a short README."""

from __future__ import annotations

from pathlib import Path

from tools.import_cycles import cycles

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gptoss_space"


def test_the_package_top_level_holds_at_most_8_modules_beside_its_folders():
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(modules) <= 8, modules


def test_no_module_is_over_350_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 350}
    assert not long


def test_no_two_modules_import_each_other_in_a_circle():
    assert cycles(PACKAGE) == []


def test_the_import_cycle_finder_finds_a_circle(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import x\n")
    (pkg / "b.py").write_text("def f():\n    from pkg import a\n")
    assert cycles(pkg) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_the_readme_reads_in_ten_minutes():
    assert len((ROOT / "README.md").read_bytes()) < 15_000
