"""The package's layering rules (docs/architecture.md), checked on the source: a change that breaks one fails here."""

import ast
from pathlib import Path

import mlflow_flux

PACKAGE = Path(mlflow_flux.__file__).parent
# Higher parts may import lower ones, never the reverse. Modules not listed are the top (cli, plugin, the root).
LEVEL = {"fluctuation": 0, "errors": 0, "recording": 1, "traces": 1, "watcher": 2, "report": 2, "integrations": 2,
         "study": 3}
MLFLOW_INTERNALS = ("mlflow.utils", "mlflow.store", "mlflow.tracking.fluent", "mlflow.tracking.context")


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path, ast.parse(path.read_text())


def _imports(name: str, path: Path, tree: ast.AST):
    """Every module an import statement names, functions' bodies included, as absolute dotted names."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target
            yield from (f"{target}.{alias.name}" for alias in node.names)


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "mlflow_flux" else None


def test_no_part_imports_a_higher_one_and_the_library_never_imports_the_study():
    wrong = []
    for name, path, tree in _modules():
        own = _part(name)
        if own not in LEVEL:
            continue
        for target in _imports(name, path, tree):
            other = _part(target)
            if other in LEVEL and other != own and LEVEL[other] > LEVEL[own]:
                wrong.append(f"{name} imports {target}")
            elif other == "study" and own != "study":
                wrong.append(f"{name} imports {target}")
    assert not wrong, wrong


def test_only_the_adapter_touches_mlflow_internals():
    offenders = [f"{name} imports {target}" for name, path, tree in _modules()
                 for target in _imports(name, path, tree)
                 if target.startswith(MLFLOW_INTERNALS) and name != "mlflow_flux.traces.mlflow_adapter"]
    assert not offenders, offenders


def test_no_module_reads_docstrings_at_run_time():
    readers = [name for name, _, tree in _modules() for node in ast.walk(tree)
               if (isinstance(node, ast.Attribute) and node.attr == "__doc__")
               or (isinstance(node, ast.Name) and node.id == "__doc__")]
    assert not readers, f"these break under python -OO: {readers}"


def test_no_import_cycles_among_the_modules():
    names = {name for name, _, _ in _modules()}
    graph = {name: {t for t in _imports(name, path, tree) if t in names and t not in (name, "mlflow_flux")}
             for name, path, tree in _modules()}
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])


def test_only_the_integrations_import_the_optional_frameworks():
    frameworks = ("lightning", "pytorch_lightning", "transformers", "ray", "playwright")
    for name, path, tree in _modules():
        if name.startswith("mlflow_flux.integrations") or name.startswith("mlflow_flux.study"):
            continue
        used = {module.split(".")[0] for module in _imports(name, path, tree)}
        assert not used & set(frameworks), (name, used & set(frameworks))


def test_an_integration_without_its_framework_is_one_import_error_naming_the_extra():
    import subprocess
    import sys

    for module, extra, framework in (("lightning", "lightning", "lightning"),
                                     ("transformers", "transformers", "transformers")):
        # sys.modules[name] = None makes `import name` fail as if it were not installed
        code = (f"import sys; sys.modules[{framework!r}] = None\n"
                f"try:\n    import mlflow_flux.integrations.{module}\n"
                f"except ImportError as e:\n    print(e)\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert f"pip install 'mlflow-flux[{extra}]'" in out, out
