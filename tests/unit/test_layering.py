"""The shape of the package, kept by a test: SQL only in the store, the dialect asked only at
the seam, and imports in the one direction that design.md draws:

    domain (types, errors, settings, registry, retry, …)
      ↑
    store                 the only place with SQLAlchemy (and migrations/)
      ↑          ↑
    service    worker
      ↑          ↑
    api ─────────┘        and, over all of them, the entry points (cli) and the tools
                          (bench, chaos), which nothing of the product imports
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "jobq"

#: Each part of the package (a module or a subpackage under jobq/) and its layer.
LAYER_OF = {
    "types": "domain", "errors": "domain", "settings": "domain", "jsonvalue": "domain",
    "keys": "domain", "retry": "domain", "registry": "domain", "builtin_tasks": "domain",
    "schedules": "domain", "payloads": "domain", "metrics": "domain", "tracing": "domain",
    "webhooks": "domain", "chains": "domain",
    "store": "store", "migrations": "migrations",
    "service": "service", "coalesce": "service", "waits": "service",
    "worker": "worker",
    "api": "api", "dashboard": "api",
    "bench": "tools", "chaos": "tools", "harness": "tools", "testing": "tools",
    "cli": "entry", "client": "entry", "__main__": "entry", "__init__": "entry",
}

#: What each layer may import.
MAY_IMPORT = {
    "domain": {"domain"},
    "store": {"domain", "store"},
    "migrations": {"domain", "store", "migrations"},
    "service": {"domain", "store", "service"},
    "worker": {"domain", "store", "worker"},
    "api": {"domain", "service", "worker", "api"},
    "tools": {"domain", "store", "service", "worker", "api", "tools"},
    "entry": {"domain", "store", "service", "worker", "api", "tools", "entry"},
}

#: The seam: the only files that may ask which database they are on. tables.py's column
#: types are handed the dialect by SQLAlchemy; a migration's DDL differs per database.
SEAM = {"store/dialect.py", "store/postgres.py", "store/sqlite.py", "store/tables.py"}
ASKS_DIALECT = re.compile(r"dialect(\.name)?\s*[!=]=")


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> set[str]:
    """Every module name ``path`` imports, at the top or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def test_every_part_has_a_layer() -> None:
    unknown = sorted({_part(p) for p in _modules()} - set(LAYER_OF))
    assert not unknown, f"give these parts of jobq/ a layer in LAYER_OF: {unknown}"


def test_sqlalchemy_only_in_the_store_and_migrations() -> None:
    found = [
        f"{_rel(p)} imports {name}"
        for p in _modules() if _part(p) not in ("store", "migrations")
        for name in _imports(p) if name.split(".")[0] in ("sqlalchemy", "alembic")
    ]
    assert not found, "SQL belongs in jobq/store/:\n" + "\n".join(found)


def test_only_the_seam_asks_which_database() -> None:
    found = [
        f"{_rel(p)}:{n}: {line.strip()}"
        for p in _modules() if _rel(p) not in SEAM and _part(p) != "migrations"
        for n, line in enumerate(p.read_text().splitlines(), 1) if ASKS_DIALECT.search(line)
    ]
    assert not found, "ask the dialect seam (jobq/store/dialect.py) instead:\n" + "\n".join(found)


@pytest.mark.parametrize("path", _modules(), ids=_rel)
def test_imports_go_one_way(path: Path) -> None:
    layer = LAYER_OF.get(_part(path))
    if layer is None:
        pytest.skip("no layer yet (test_every_part_has_a_layer fails)")
    wrong = []
    for name in _imports(path):
        parts = name.split(".")
        if parts[0] != "jobq" or len(parts) < 2:
            continue
        target = LAYER_OF.get(parts[1])
        if target is not None and target not in MAY_IMPORT[layer]:
            wrong.append(f"{name} ({target})")
    assert not wrong, f"{_rel(path)} ({layer}) may not import: {', '.join(sorted(wrong))}"


def test_the_rules_catch_a_breach(tmp_path: Path) -> None:
    """The checks above find what they look for (so a pass means something)."""
    bad = tmp_path / "bad.py"
    bad.write_text("import sqlalchemy\nfrom jobq.api import app\nif store.dialect == 'x': pass\n")
    assert "sqlalchemy" in _imports(bad) and "jobq.api" in _imports(bad)
    assert ASKS_DIALECT.search(bad.read_text())
    assert "api" not in MAY_IMPORT["store"] and "service" not in MAY_IMPORT["worker"]
