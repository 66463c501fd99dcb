"""The import rules of docs/ARCHITECTURE.md, checked on the source, plus what importing costs.

Every import statement of the package counts, including the lazy ones inside functions: a
cycle closed by a lazy import is still a cycle in the design.
"""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import compexp_core
from compexp_core import _core
from compexp_core.engine.formula import OP_CODES

PACKAGE_DIR = Path(compexp_core.__file__).resolve().parent
PKG = "compexp_core"

# Layer of each module (by its first name under the package) and the layers it may import.
# A module may always import its own layer's modules. Modules not listed here fail the test:
# a new module needs a home in docs/ARCHITECTURE.md first.
LAYERS = {
    "_core": "compiled", "_cuda": "compiled", "_optional": "support",
    "engine": "engine",
    "io": "io",
    "results": "api", "inputs": "api", "search": "api", "distributed": "api", "__init__": "api",
    "analysis": "analysis",
    "report": "report",
    "extract": "models", "broden": "models", "world": "models", "demo": "models",
    "synthetic": "models", "nli": "models", "adversarial": "models", "text": "models",
    "lm": "models",
    "cli": "cli", "__main__": "cli",
}
MAY_IMPORT = {
    "compiled": set(),
    "support": set(),
    "engine": {"compiled"},
    "io": {"engine", "support"},
    "api": {"engine", "io", "compiled", "support"},
    "analysis": {"engine", "api", "support"},
    "report": {"engine", "io", "api", "analysis", "support"},
    "models": {"engine", "io", "api", "analysis", "report", "support"},
    "cli": {"compiled", "support", "engine", "io", "api", "analysis", "report", "models"},
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict:
    return {_module_name(p): p for p in PACKAGE_DIR.rglob("*.py")}


def _resolve(module: str, is_package: bool, node, modules=()) -> list:
    """Package modules named by one import statement of ``module``: ``from X import name``
    imports the module ``X.name`` when there is one, else ``X`` itself."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == PKG]
    if node.level == 0:
        base = node.module or ""
        if base.split(".")[0] != PKG:
            return []
    else:
        parts = module.split(".")
        anchor = parts if is_package else parts[:-1]
        anchor = anchor[:len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([node.module] if node.module else []))
    subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
    return subs if len(subs) == len(node.names) else [base] + subs


COMPILED = ("compexp_core._core", "compexp_core._cuda")      # extension modules: no source


def import_graph() -> dict:
    """module -> set of package modules it imports (anywhere in its source)."""
    modules = _modules()
    graph = {name: set() for name in COMPILED}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _resolve(name, path.name == "__init__.py", node, {*modules, *COMPILED}):
                    if (target in modules or target in COMPILED) and target != name:
                        edges.add(target)
        graph[name] = edges
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    first = parts[1] if len(parts) > 1 else "__init__"
    assert first in LAYERS, f"{module} has no layer: give it a home in docs/ARCHITECTURE.md and LAYERS"
    return LAYERS[first]


def _find_cycle(graph: dict):
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        state[m] = 2
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycles():
    cycle = _find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_layers_import_only_what_they_may():
    bad = []
    for module, targets in import_graph().items():
        layer = _layer(module)
        for target in targets:
            other = _layer(target)
            if other != layer and other not in MAY_IMPORT[layer] and target != PKG:
                bad.append(f"{module} ({layer}) imports {target} ({other})")
            if target == PKG and layer not in ("cli", "api"):
                bad.append(f"{module} ({layer}) imports the package root {PKG}")
    assert not bad, "\n".join(sorted(bad))


def test_the_checker_sees_lazy_imports_and_cycles():
    # The checker itself: a lazy import inside a function is an edge, and a cycle is found.
    tree = ast.parse("def f():\n    from ..io import open_activations\n")
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
    assert _resolve("compexp_core.engine.units", False, node)[0] == "compexp_core.io"
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None
    with pytest.raises(AssertionError, match="no layer"):
        _layer("compexp_core.newthing")


def test_operator_codes_match_the_compiled_engine():
    assert OP_CODES == {"or": _core.OP_OR, "and": _core.OP_AND, "and_not": _core.OP_AND_NOT,
                        "or_not": _core.OP_OR_NOT}


def _python(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300)


def test_import_and_cpu_search_load_neither_torch_nor_cuda():
    out = _python(
        "import sys, numpy as np, compexp_core as cx\n"
        "m = np.random.default_rng(0).random((40, 3, 4, 4)) < 0.3\n"
        "a = np.random.default_rng(1).random((40, 2, 2, 2)).astype(np.float32)\n"
        "r = cx.search_formulas(a, m, device='cpu')\n"
        "import compexp_core.analysis, compexp_core.io\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] == 'torch' or k == 'compexp_core._cuda'))\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_without_torch_search_works_and_model_code_says_what_to_install():
    # `sys.modules["torch"] = None` makes `import torch` fail as on a machine without it.
    out = _python(
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np, compexp_core as cx\n"
        "m = np.random.default_rng(0).random((40, 3)) < 0.3\n"
        "print(cx.search_formulas(m[:, :1], m)[0].iou)\n"
        "from compexp_core.extract import extract_activations, load_model\n"
        "from compexp_core.demo import run_demo\n"
        "for call in (lambda: extract_activations(None, None, 'x', 'o.h5'),\n"
        "             lambda: load_model('m.pt'), lambda: run_demo('out')):\n"
        "    try:\n"
        "        call()\n"
        "    except ImportError as e:\n"
        "        print(e)\n")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "1.0"
    assert len(lines) == 4 and all("needs torch" in line and "pip install" in line for line in lines[1:])


def test_only_the_command_line_uses_argparse():
    users = []
    for name, path in _modules().items():
        if _layer(name) == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names) or \
                    isinstance(node, ast.ImportFrom) and node.module == "argparse":
                users.append(name)
    assert not users, f"argparse outside cli/: {sorted(set(users))}"
