"""Imports: no cycles in the package, one name per test module, and every dev dependency used."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "bridge"
TESTS = ROOT / "tests"
# Dev dependencies used without an import of ours: tools, pytest plugins, and httpx2, which
# starlette's TestClient imports in place of httpx.
TOOLS = {"pytest-asyncio", "pytest-timeout", "pytest-xdist", "ruff", "mypy", "hatchling",
         "httpx2"}
IMPORT_NAMES = {"pyyaml": "yaml"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported(path: Path, known: set[str]) -> Iterator[str]:
    """Every bridge module `path` imports, at the top or inside a function."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module in known:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                yield submodule if submodule in known else node.module


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: set(imported(path, set(found))) - {name} for name, path in found.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One path per cycle found by a depth-first walk."""
    found: list[list[str]] = []
    done: set[str] = set()

    def walk(name: str, path: list[str]) -> None:
        if name in path:
            found.append([*path[path.index(name):], name])
            return
        if name in done:
            return
        for target in sorted(graph[name]):
            walk(target, [*path, name])
        done.add(name)

    for name in sorted(graph):
        walk(name, [])
    return found


def test_no_module_of_the_bridge_imports_itself_back():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]


def dev_dependencies() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [re.split(r"[<>=\[ ]", item)[0] for item in project["optional-dependencies"]["dev"]]


def test_httpx2_is_what_starlettes_test_client_runs_on():
    import httpx2
    from starlette import testclient

    assert testclient.httpx is httpx2


def test_every_dev_dependency_is_imported_or_a_tool():
    sources = " ".join(path.read_text() for folder in ("tests", "bench", "bridge")
                       for path in (ROOT / folder).rglob("*.py"))
    unused = [name for name in dev_dependencies() if name not in TOOLS
              and not re.search(rf"^\s*(import|from) {IMPORT_NAMES.get(name, name)}\b",
                                sources, re.M)]
    assert unused == []


def suite_modules() -> set[str]:
    return {path.stem for path in TESTS.glob("*.py") if path.stem != "__init__"}


def suite_imports(path: Path) -> Iterator[str]:
    """The test suite's own modules that `path` imports, each named as its import spells it."""
    names = suite_modules()
    for node in ast.walk(ast.parse(path.read_text())):
        spelled = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                   else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        yield from (name for name in spelled
                    if name.removeprefix("tests.").split(".")[0] in names or name == "tests")


def misplaced_imports(paths: list[Path]) -> list[str]:
    """Imports of a test module (pytest collects those) or of a helper by its bare name."""
    return [f"{path.name}: {name}" for path in paths for name in suite_imports(path)
            if not name.startswith("tests.")
            or name.removeprefix("tests.").startswith(("test_", "conftest"))]


def test_test_modules_import_helpers_only_and_as_tests_dot_name():
    paths = [*TESTS.glob("*.py"), *(ROOT / "bench").rglob("*.py")]
    assert misplaced_imports(paths) == []


def test_an_import_of_another_test_module_or_of_a_bare_helper_name_is_found(tmp_path):
    (tmp_path / "test_x.py").write_text(
        "from tests.test_metrics import value\nfrom fake_slack import FakeSlack\n"
        "from tests.fake_jira import FakeJira\nfrom conftest import TOKENS\n")
    assert misplaced_imports([tmp_path / "test_x.py"]) == [
        "test_x.py: tests.test_metrics", "test_x.py: fake_slack", "test_x.py: conftest"]


def test_no_module_of_the_suite_is_loaded_under_two_names():
    by_file: dict[Path, list[str]] = {}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve().parent == TESTS:
            by_file.setdefault(Path(file).resolve(), []).append(name)
    assert {path.name: names for path, names in by_file.items() if len(names) > 1} == {}
    assert "tests.conftest" in sys.modules
