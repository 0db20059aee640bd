"""ARCHITECTURE.md stays true to the package: every module has its place in the map."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def map_rows() -> dict[str, str]:
    """The package map's rows: first cell (a module path in backticks) -> the whole row."""
    rows = {}
    for line in (ROOT / "ARCHITECTURE.md").read_text().splitlines():
        if line.startswith("| `wmh/"):
            rows[line.split("`")[1]] = line
    return rows


def unmapped_modules(package: Path, rows: dict[str, str], text: str) -> list[str]:
    """Modules of ``package`` the map does not name: a top-level module needs a row (or
    a mention as `wmh/name.py`); a sub-package needs a row naming each of its modules."""
    missing = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package.parent).as_posix()
        parts = relative.split("/")
        if len(parts) == 2:
            if f"`{relative}`" not in text:
                missing.append(relative)
        else:
            row = rows.get("/".join(parts[:2]) + "/", "")
            if not row or (path.stem != "__init__" and f"`{path.stem}`" not in row):
                missing.append(relative)
    return missing


def test_every_module_is_in_the_package_map():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    assert unmapped_modules(ROOT / "wmh", map_rows(), text) == []


def test_an_unmapped_module_is_reported(tmp_path):
    package = tmp_path / "wmh"
    (package / "sub").mkdir(parents=True)
    for name in ("__init__.py", "known.py", "new.py", "sub/__init__.py", "sub/a.py",
                 "sub/b.py"):
        (package / name).write_text("")
    rows = {"wmh/sub/": "| `wmh/sub/` | things (`a`) | |"}
    text = "`wmh/__init__.py` `wmh/known.py` " + rows["wmh/sub/"]
    assert unmapped_modules(package, rows, text) == ["wmh/new.py", "wmh/sub/b.py"]


def test_the_readme_links_the_architecture():
    assert "(ARCHITECTURE.md)" in (ROOT / "README.md").read_text()
