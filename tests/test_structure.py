"""How the packages depend on each other, read from their source (lazy imports in functions included):
no import cycle; training never imports serving; the spec imports no MXNet, OpenCV or Horovod; the
launcher reaches only the spec and the runs; nothing imports the command-line mains; no reaching into
another module's private names."""
import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

PACKAGES = ("facealign", "launcher")
STAGES = ("spec", "train", "runs", "evaluation", "serve", "platform", "cli", "data", "models", "synth")


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


def _reached(graph, roots):
    reached, todo = set(), list(roots)
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in reached:
                reached.add(nxt)
                todo.append(nxt)
    return reached


def _in(package, names):
    return {n for n in names if n == package or n.startswith(package + ".")}


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


def _package(module: str) -> str:
    """The package a module belongs to: facealign's stages (facealign.train, ...), launcher, facealign itself."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "facealign" and len(parts) > 1 else parts[0]


def package_graph(graph) -> dict[str, dict[str, list[str]]]:
    """{package: {package it imports: [the module imports behind the arrow]}}; an entry point (``__main__``)
    is a command line's, not its package's."""
    out = {}
    for module, targets in graph.items():
        if module.endswith("__main__"):
            continue
        for target in targets:
            a, b = _package(module), _package(target)
            if a != b:
                out.setdefault(a, {}).setdefault(b, []).append(f"{module} -> {target}")
    return out


def package_loops(packages) -> list[str]:
    """Every loop through the package graph, from each package it passes, with the first import behind its
    last arrow."""
    loops = []
    for start in sorted(packages):
        todo, seen = [(start, [start])], set()
        while todo:
            node, path = todo.pop()
            for nxt in sorted(packages.get(node, {})):
                if nxt == start:
                    loops.append(" -> ".join(path + [start]) + "  (" + packages[node][nxt][0] + ")")
                elif nxt not in seen:
                    seen.add(nxt)
                    todo.append((nxt, path + [nxt]))
    return loops


def test_packages_import_one_way():
    """No package imports another that imports it back, directly or round a longer loop: module by module
    the graph can be acyclic while the packages are not (data.pack -> synth -> data.pose)."""
    graph, _ = _graph()
    loops = package_loops(package_graph(graph))
    assert not loops, "packages that import each other:\n" + "\n".join(loops)


def test_the_package_walk_finds_a_loop_between_packages():
    """The walk above, on a made-up graph with a loop through three packages and no module-level loop."""
    graph = {"facealign.data.pack": {"facealign.synth.faces"}, "facealign.synth.faces": {"facealign.models.layers"},
             "facealign.models.layers": {"facealign.data.codec"}, "facealign.data.codec": set()}
    packages = package_graph(graph)
    assert packages == {"facealign.data": {"facealign.synth": ["facealign.data.pack -> facealign.synth.faces"]},
                        "facealign.synth": {"facealign.models": ["facealign.synth.faces -> facealign.models.layers"]},
                        "facealign.models": {"facealign.data": ["facealign.models.layers -> facealign.data.codec"]}}
    loops = package_loops(packages)
    assert loops[0] == ("facealign.data -> facealign.synth -> facealign.models -> facealign.data  "
                        "(facealign.models.layers -> facealign.data.codec)") and len(loops) == 3  # once from each
    del graph["facealign.models.layers"]  # the loop broken: none left
    assert not package_loops(package_graph({**graph, "facealign.models.layers": set()}))


def test_the_walker_sees_lazy_imports():
    graph, _ = _graph()
    assert "facealign.serve.predictor" in graph["facealign"]  # facealign/__init__'s lazy Predictor
    assert "facealign.models.zoo" in graph["facealign.models"]


def test_every_module_belongs_to_a_stage():
    _, modules = _graph()
    loose = [m for m in modules if m.startswith("facealign.") and m.split(".")[1] not in STAGES
             and m not in ("facealign._native", "facealign.errors")]
    assert not loose, loose


def test_training_never_imports_serving():
    graph, _ = _graph()
    train = {m for m in _in("facealign.train", graph) if not m.endswith("__main__")}  # the entry point is a main
    reached = _reached(graph, train)
    assert "facealign.evaluation.scoring" in reached and "facealign.runs.artifact" in reached
    assert not _in("facealign.serve", reached) and not _in("facealign.cli", reached), sorted(reached)


def test_the_launcher_reaches_only_the_spec_and_the_runs():
    graph, _ = _graph()
    direct = {t for m in _in("launcher", graph) for t in graph[m] if t.startswith("facealign")}
    assert direct and all(t.startswith(("facealign.spec", "facealign.runs")) for t in direct), sorted(direct)


def test_nothing_imports_the_command_line():
    graph, _ = _graph()
    importers = {m for m, targets in graph.items() for t in targets
                 if t.startswith("facealign.cli") and not m.startswith("facealign.cli") and not m.endswith("__main__")}
    assert not importers, sorted(importers)


def test_argparse_lives_in_the_command_line_modules():
    _, modules = _graph()
    users = sorted(m for m, path in modules.items() if m.startswith("facealign.") and "import argparse" in path.read_text()
                   and not m.startswith("facealign.cli"))
    assert not users, users


HEAVY = ("mxnet", "cv2", "horovod")


def _fresh_modules(code: str, cwd=REPO) -> set[str]:
    # PATH without Slurm: submit and sweep stop at "sbatch not found", after everything they import
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    out = subprocess.run([sys.executable, "-c", code + "\nimport json, sys; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, timeout=120, cwd=cwd, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.splitlines()[-1])), out.stderr


def _heavy(loaded):
    return sorted(m for m in loaded if m.split(".")[0] in HEAVY)


def _tiny_spec(tmp_path) -> Path:
    (tmp_path / "train.rec").write_bytes(b"")
    (tmp_path / "train.idx").write_bytes(b"")
    job = tmp_path / "job.yaml"
    job.write_text(f"model: {{name: hg2-d3-cab, width: 64}}\ndata: {{train: [{tmp_path / 'train'}]}}\n"
                   f"run: {{name: tiny, out_root: {tmp_path / 'runs'}}}\n")
    return job


def test_the_spec_imports_no_mxnet_opencv_or_horovod(tmp_path):
    job = _tiny_spec(tmp_path)
    loaded, _ = _fresh_modules(f"from facealign.spec import components\n"
                            f"spec = components.load({str(job)!r}, check_files=True)\n"
                            f"components.model_spec(spec); components.runtime_env(spec)\n"
                            f"components.hyperparameters(spec, 1); components.scheme(spec)")
    assert "facealign.spec.components" in loaded and not _heavy(loaded), _heavy(loaded)


@pytest.mark.parametrize("command", ["validate", "render", "submit", "sweep", "status"])
def test_the_login_node_commands_import_no_mxnet_opencv_or_horovod(tmp_path, command):
    """Each facealign-launch command a login node runs, in a fresh process, reading sys.modules after it."""
    job = _tiny_spec(tmp_path)
    (tmp_path / "runs" / "tiny" / "checkpoints").mkdir(parents=True)  # a run not started yet, for status
    (tmp_path / "runs" / "tiny" / "job.yaml").write_text(job.read_text())
    argv = {"validate": ["validate", str(job)], "render": ["render", str(job)],
            "submit": ["submit", str(job)],
            "sweep": ["sweep", str(job), "--grid", "optim.lr=1e-3,2e-3", "--out-root", str(tmp_path / "sweeps")],
            "status": ["status", str(tmp_path / "runs"), "--no-slurm"]}[command]
    loaded, said = _fresh_modules(f"import sys\nfrom launcher import cli\ntry:\n    code = cli.main({argv!r})\n"
                            f"except SystemExit as e:\n    code = e.code\n"
                            f"print('exit', code, file=sys.stderr)")
    assert "launcher.cli" in loaded and not _heavy(loaded), _heavy(loaded)
    expected = "exit 2" if command in ("submit", "sweep") else "exit 0"  # 2: no sbatch on this PATH
    assert said.strip().endswith(expected) and "Traceback" not in said, said[-2000:]
    if command in ("submit", "sweep"):
        assert "sbatch not found" in said


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


def test_the_batch_step_learns_horovods_build_without_importing_mxnet():
    loaded, said = _fresh_modules("import sys\nfrom launcher import slurm\nprint('mpi', slurm.horovod_has_mpi(), file=sys.stderr)")
    assert said.strip() == "mpi False"  # this machine's Horovod: Gloo only (install.sh)
    # Horovod's runner is the batch step's (the rendezvous); its MXNet extension and MXNet are not
    assert not {m for m in loaded if m.startswith(("mxnet", "horovod.mxnet", "cv2"))}


def test_no_function_is_longer_than_100_lines_and_the_loop_fits_a_screen():
    long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 100:
                long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, long
    loop = next(n for n in ast.walk(ast.parse((REPO / "facealign/train/loop.py").read_text()))
                if isinstance(n, ast.FunctionDef) and n.name == "train_loop")
    assert loop.end_lineno - loop.lineno + 1 <= 60


def test_the_loop_keeps_no_state_in_closures():
    """Where a run stands is TrainState; no function of the loop defines a function inside it."""
    tree = ast.parse((REPO / "facealign/train/loop.py").read_text())
    nested = [f"{outer.name}.{inner.name}" for outer in tree.body if isinstance(outer, ast.FunctionDef)
              for inner in ast.walk(outer) if isinstance(inner, ast.FunctionDef) and inner is not outer]
    assert not nested, nested


OLD_PATHS = ("artifact", "backends", "checkpoint", "components", "config", "cpu_isa", "demo", "detect", "dist",
             "evaluate", "export", "gpu_probe", "infer", "inference", "loss_scaling", "losses", "metrics",
             "mixed_precision", "optim", "run_lock", "scoring", "smoothing", "validation")


def test_the_old_import_paths_are_gone_since_0_2_0():
    """CHANGELOG 0.1.0 kept them for one release; none comes back, and no code, test or page uses one."""
    left = [name for name in OLD_PATHS if (REPO / "facealign" / f"{name}.py").exists()]
    assert not left and not (REPO / "facealign" / "_moved.py").exists(), left
    said = subprocess.run([sys.executable, "-c", "import facealign.config"], capture_output=True, text=True, cwd=REPO)
    assert said.returncode == 1 and "No module named 'facealign.config'" in said.stderr
    pattern = re.compile(r"(?:from facealign import|import facealign\.|python -m facealign\.)(" + "|".join(OLD_PATHS) + r")\b")
    users = [f"{path.relative_to(REPO)}: {m.group(0)}"
             for folder in ("facealign", "launcher", "bench", "tests", "docs", "slurm", "docker")
             for path in (REPO / folder).rglob("*") if path.suffix in (".py", ".md", ".sh", "") and path.is_file()
             and path != Path(__file__)
             for m in pattern.finditer(path.read_text(errors="replace"))]
    users += [f"README.md: {m.group(0)}" for m in pattern.finditer((REPO / "README.md").read_text())]
    assert not users, users
    import facealign.train  # the loop's names are the loop's (facealign.train.loop), not the package's

    assert not hasattr(facealign.train, "main") and not hasattr(facealign.train, "EXIT_OK")


def test_the_runs_know_the_files_not_the_training():
    """A run directory's modules (checkpoints among them) import nothing of training or serving."""
    graph, _ = _graph()
    direct = {t for m in _in("facealign.runs", graph) for t in graph[m]}
    assert not _in("facealign.train", direct) and not _in("facealign.serve", direct), sorted(direct)
