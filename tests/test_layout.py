"""The habits of the codebase as checks: no module in src/ over 400 lines, no function over 60
(data files aside), and no test importing from conftest (helpers live in their own modules)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted((ROOT / "src" / "nextchar").rglob("*.py"))
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def test_the_package_is_where_the_layout_test_looks():
    assert len(MODULES) > 30


def test_no_module_is_longer_than_400_lines():
    long = {
        p.relative_to(ROOT): n
        for p in MODULES
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_is_longer_than_60_lines():
    long = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_tests_import_helpers_from_modules_not_from_conftest_or_other_tests():
    offenders = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "conftest" or node.module.startswith("test_"):
                    offenders.append(f"{path.name}: from {node.module} import ...")
    assert not offenders, offenders


def test_the_readme_map_names_every_module():
    """README's "How the code is laid out" names each module (a package's by its stem)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## How the code is laid out", 1)[1].split("\n## ", 1)[0]
    missing = [
        str(p.relative_to(ROOT))
        for p in MODULES
        if p.stem not in ("__init__", "__main__") and p.stem not in section
    ]
    assert not missing, f"not in README's module map: {missing}"
