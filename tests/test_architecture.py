"""The package's layering rules (docs/architecture.md), checked on the source: a change that breaks one fails here."""

import ast
import re
from pathlib import Path

import mlflow_flux

PACKAGE = Path(mlflow_flux.__file__).parent
DOC = PACKAGE.parent / "docs" / "architecture.md"
# Higher parts may import lower ones and their own level, never the reverse. Modules not listed are the top (cli,
# plugin, the root). docs/architecture.md gives the same levels (a test below compares them).
LEVEL = {"version": 0, "errors": 0, "statistics": 0, "fluctuation": 0, "reducibility": 0, "dynamics": 0, "reshape": 0,
         "recycling": 0, "settings": 0, "interrupts": 0, "recording": 1, "traces": 1, "explorer": 2, "figures": 2,
         "outputs": 3, "watcher": 3, "report": 3, "sql": 3, "integrations": 4, "study": 5}
# What the C fast path may include: CPython's API, the C library, and its generated layout.
C_INCLUDES = {"Python.h", "structmember.h", "math.h", "stdint.h", "string.h", "_fastpath_layout.h"}
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
            if (other in LEVEL and other != own and LEVEL[other] > LEVEL[own]) or (other == "study" and own != "study"):
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
        if name.startswith(("mlflow_flux.integrations", "mlflow_flux.study", "mlflow_flux.sql.ray_data")):
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


def _documented_levels() -> dict[str, int]:
    """The levels docs/architecture.md gives, from its table's rows: | `part` | level | ..."""
    rows = re.findall(r"^\| `([\w./]+?)/?(?:\.py)?` \| (\d) \|", DOC.read_text(), re.M)
    return {name: int(level) for name, level in rows}


def test_the_architecture_doc_lists_every_module_and_the_levels_enforced_here():
    text = DOC.read_text()
    listed = {name for name in re.findall(r"`([\w/]+\.(?:py|c))`", text)
              if not name.startswith("tests/") and not name.endswith("__init__.py")}
    modules = {path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py")
               if path.name != "__init__.py"} | {"recording/_fastpath.c"}
    assert not modules - listed, f"docs/architecture.md does not list {sorted(modules - listed)}"
    assert not listed - modules, f"docs/architecture.md lists modules that do not exist: {sorted(listed - modules)}"
    assert _documented_levels() == LEVEL


def test_the_c_fast_path_includes_only_the_c_api_the_c_library_and_its_generated_layout():
    source = (PACKAGE / "recording" / "_fastpath.c").read_text()
    included = set(re.findall(r'^#include [<"]([\w.]+)[>"]', source, re.M))
    assert included <= C_INCLUDES, included - C_INCLUDES
