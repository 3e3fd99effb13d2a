"""How the modules depend on each other, read from their source: no import cycle, training never
imports the serving modules, no reaching into another module's private names."""
import ast
from pathlib import Path

from conftest import REPO

PACKAGES = ("facealign", "launcher")
SERVING = {"facealign.inference", "facealign.evaluate", "facealign.infer", "facealign.export", "facealign.detect"}


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict) -> set[tuple[str, ast.AST]]:
    """Project modules ``name`` imports anywhere in its body (lazy imports in functions included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # a.b.c -> the module that defines it
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add((target, node))
    return found


def _graph():
    modules = _modules()
    return {name: {t for t, _ in _imports(name, path, modules)} for name, path in modules.items()}, modules


def test_no_import_cycles():
    graph, _ = _graph()
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_walker_sees_lazy_imports():
    graph, _ = _graph()
    assert "facealign.inference" in graph["facealign"]  # facealign/__init__'s lazy Predictor
    assert "facealign.models.zoo" in graph["facealign.models"]


def test_training_never_imports_the_serving_modules():
    graph, _ = _graph()
    reached, todo = set(), ["facealign.train"]
    while todo:
        node = todo.pop()
        for nxt in graph[node]:
            if nxt not in reached:
                reached.add(nxt)
                todo.append(nxt)
    assert "facealign.scoring" in reached and "facealign.artifact" in reached
    assert not reached & SERVING, sorted(reached & SERVING)


def test_no_module_uses_another_modules_private_names():
    modules = _modules()
    offences = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                offences += [f"{name}: from {node.module} import {a.name}" for a in node.names
                             if a.name.startswith("_") and a.name != "__version__"]
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                if isinstance(node.value, ast.Name) and node.value.id in {m.rpartition(".")[2] for m in modules}:
                    offences.append(f"{name}: {node.value.id}.{node.attr}")
    assert not offences, offences


def test_mxnets_private_parameter_walk_is_wrapped_once():
    users = [name for name, path in _modules().items() if "_collect_params_with_prefix" in path.read_text()]
    assert users == ["facealign.models.zoo"], users


# NVIDIA's MXNet containers (the route on Hopper: docker/Dockerfile.ngc) run Python 3.10
PY311_ONLY = ("tomllib", "datetime.UTC", "StrEnum", "TaskGroup", "file_digest", "contextlib.chdir",
              "ExceptionGroup", "typing.Self", "assert_never", "reveal_type", "LiteralString")


def test_the_code_runs_on_python_3_10():
    for path in sorted(p for d in ("facealign", "launcher", "bench") for p in (REPO / d).rglob("*.py")):
        source = path.read_text()
        ast.parse(source, filename=str(path), feature_version=(3, 10))  # no 3.11 syntax (except*, ...)
        for name in PY311_ONLY:
            assert name not in source, f"{path}: {name} is Python 3.11+"
