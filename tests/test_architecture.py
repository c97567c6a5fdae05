"""The package's module structure: every module in its layer and importing nothing above it, no import circles
(imports inside functions counted), own-module imports inside functions only with a stated reason."""
import ast
import pathlib

import pclip_jax

PACKAGE = pathlib.Path(pclip_jax.__file__).resolve().parent

# The layers, lowest first (docs/architecture.md). A module may import modules of its own layer or of a layer
# below; every module of the package must be in one. `pclip_bench` (peers, costs) sits on top of all of them.
LAYERS = (
    ("root", ("pclip_jax",)),  # the package's own __init__: the version
    ("plumbing", ("pclip_jax.plumbing",)),
    ("graph", ("pclip_jax.graph",)),
    ("data", ("pclip_jax.data",)),
    ("models", ("pclip_jax.models",)),
    ("text", ("pclip_jax.text",)),
    ("training", ("pclip_jax.training",)),
    ("serving", ("pclip_jax.serving",)),
    ("entry points", ("pclip_jax.job", "pclip_jax.main", "pclip_jax.ingest", "pclip_jax.evaluate",
                      "pclip_jax.classify", "pclip_jax.export", "pclip_jax.recalibrate", "pclip_jax.distill",
                      "pclip_jax.configs",
                      "pclip_jax.kg")),
    ("benchmarks", ("pclip_bench",)),
)


def layer_of(module: str) -> int:
    """Index in LAYERS of the layer that owns `module` (the longest matching prefix), or -1."""
    best, best_len = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def _module_name(path: pathlib.Path) -> str:
    """pclip_jax/training/loop.py → pclip_jax.training.loop (also for pclip_bench, beside pclip_jax)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    rel = pathlib.Path(*name.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").is_file() or (PACKAGE.parent / rel / "__init__.py").is_file()


def _sources():
    yield from PACKAGE.rglob("*.py")
    bench = PACKAGE.parent / "pclip_bench"
    if bench.is_dir():
        yield from bench.rglob("*.py")


def _reason(lines: list[str], index: int) -> str:
    """The comment that gives an import's reason: on its line, or on the block of imports it continues (a
    comment line just above, or an import above it with one)."""
    while index >= 0:
        line = lines[index].strip()
        if "#" in line:
            return line.split("#", 1)[1].strip()
        if not line.startswith(("from ", "import ")):
            return ""
        index -= 1
    return ""


def imports_of(path: pathlib.Path):
    """(imported module, line, inside a function?, the line's comment) of every own-package import in `path`."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source, str(path))
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function |= {id(inner) for inner in ast.walk(node) if inner is not node}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base for a in node.names]
        else:
            continue
        comment = _reason(lines, node.lineno - 1)
        for target in targets:
            if target.split(".")[0] in ("pclip_jax", "pclip_bench") and target != name and _is_module(target):
                yield target, node.lineno, id(node) in in_function, comment


def import_graph() -> dict[str, set[str]]:
    """module → the package modules it imports anywhere in its source (module top, functions, classes)."""
    return {_module_name(path): {target for target, *_ in imports_of(path)} for path in _sources()}


def find_cycle(graph: dict[str, set[str]]):
    """One import cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "active"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "active":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_every_module_has_a_layer_and_imports_nothing_above_it():
    graph = import_graph()
    assert len(graph) > 60 and "pclip_jax.job" in graph and "pclip_jax.training.pretrain" in graph
    unplaced = sorted(m for m in graph if layer_of(m) < 0)
    assert not unplaced, f"modules in no layer (add them to LAYERS and docs/architecture.md): {unplaced}"
    upward = []
    for path in _sources():
        module = _module_name(path)
        for target, line, _, _ in imports_of(path):
            if layer_of(target) > layer_of(module):
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module} ({LAYERS[layer_of(module)][0]}) "
                              f"imports {target} ({LAYERS[layer_of(target)][0]})")
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_the_layer_check_names_an_upward_import():
    assert layer_of("pclip_jax.data.flow_table") == 3 and layer_of("pclip_jax.plumbing") == 1
    assert layer_of("pclip_jax.training.loop") > layer_of("pclip_jax.text.prompts") > layer_of("pclip_jax.data.ingest")
    assert layer_of("pclip_jax.classify") > layer_of("pclip_jax.serving.classify")
    assert layer_of("pclip_bench.peers.suite") == len(LAYERS) - 1
    assert layer_of("pclip_jaxx") == -1


def test_own_module_imports_inside_functions_give_their_reason():
    """An import of the package's own module inside a function hides an edge of the layer map from a reader; each
    says why on its line (an optional dependency, keeping JAX off the onnx path, start-up time, ...)."""
    silent = [f"{path.relative_to(PACKAGE.parent)}:{line}: {target}"
              for path in _sources() for target, line, inside, comment in imports_of(path)
              if inside and not comment]
    assert not silent, "own-module imports inside functions without a `# reason`:\n" + "\n".join(silent)


def test_no_module_imports_another_in_a_circle():
    graph = import_graph()
    assert len(graph) > 60 and "pclip_jax.job" in graph
    # The graph sees imports inside functions: the ones that remain are real edges.
    assert "pclip_jax.data.tfds_builders" in graph["pclip_jax.data.input_pipeline"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_main_job_sits_above_the_stages_it_runs():
    graph = import_graph()
    stages = {"pclip_jax.training.pretrain", "pclip_jax.evaluate", "pclip_jax.training.detection"}
    assert stages <= graph["pclip_jax.job"]
    # Only the flags module imports the main job; the library never imports the benchmark package.
    for module, edges in graph.items():
        if module.startswith("pclip_jax"):
            assert module == "pclip_jax.main" or "pclip_jax.job" not in edges, module
            assert not any(edge.startswith("pclip_bench") for edge in edges), module
    # Nothing below reaches up into evaluate or classify (`pclip_jax.classify` is the command's path).
    for module, edges in graph.items():
        if module not in ("pclip_jax.job", "pclip_jax.main", "pclip_jax.classify"):
            assert "pclip_jax.serving.classify" not in edges and "pclip_jax.classify" not in edges, module
        if module not in ("pclip_jax.job", "pclip_jax.main") and not module.startswith("pclip_bench"):
            assert "pclip_jax.evaluate" not in edges, module


def test_classify_with_jax_imports_no_library_it_does_not_use():
    """The JAX backend of classify loads a workdir and scores flows; scikit-learn, SciPy, pandas, TensorFlow and
    matplotlib are for training, metrics and plots. Importing them cost every classify run ~1 s (f922ce2)."""
    import subprocess
    import sys

    heavy = ("sklearn", "scipy", "pandas", "tensorflow", "tensorflow_datasets", "matplotlib")
    probe = ("import sys, pclip_jax.classify, pclip_jax.training.restore, pclip_jax.training.towers, "
             "pclip_jax.serving.explain; "
             f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "", f"imported on the classify path: {proc.stdout.strip()}"


def test_the_graph_layer_and_ingest_import_no_jax():
    """The knowledge graph is data (graph/ has no JAX), and ingest stays free of it (start-up time of its CLI)."""
    import subprocess
    import sys

    modules = sorted(m for m in import_graph() if m.startswith("pclip_jax.graph")) + ["pclip_jax.data.ingest",
                                                                                       "pclip_jax.data.flow_table"]
    probe = (f"import sys, importlib; [importlib.import_module(m) for m in {modules!r}]; "
             "print(','.join(m for m in ('jax', 'flax', 'jraph') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "", f"imported by {modules}: {proc.stdout.strip()}"


# Below the entry points, the few places that still hand the *whole* Settings to another module (issue 28: the
# settings are resolved once; a stage reads its own section). Each is a function of more than one section:
# serialising all of it, the name vectors (data.use_names, text.encoder, model.name_dim), the towers' initial
# state (train, data, model, text). A new one fails here: pass the section(s) the callee reads instead.
WHOLE_SETTINGS_HANDOFFS = {
    ("pclip_jax.plumbing.workdir", "save_settings", "settings_lib.to_dict"),
    ("pclip_jax.training.experiment", "prepare_experiment", "with_name_features"),
    ("pclip_jax.training.experiment", "flows_as_trained", "with_name_features"),
    ("pclip_jax.training.pretrain", "pretrain", "create_state"),
    ("pclip_jax.training.state", "create_state", "init_params"),
}
ENTRY_LAYER = next(i for i, (name, _) in enumerate(LAYERS) if name == "entry points")


def whole_settings_handoffs() -> set[tuple[str, str, str]]:
    """(module, function, callee) for every call, in a module below the entry points, that passes a parameter
    annotated `Settings` (the whole settings) to a function imported from another module of the package."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        if layer_of(module) >= ENTRY_LAYER:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pclip_jax"):
                imported.update({a.asname or a.name: node.module for a in node.names})
            elif isinstance(node, ast.Import):
                imported.update({a.asname or a.name: a.name for a in node.names if a.name.startswith("pclip_jax")})
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef):
                continue
            whole = {a.arg for a in fn.args.args + fn.args.kwonlyargs if a.annotation is not None
                     and ast.unparse(a.annotation).strip("'\"").split(".")[-1] == "Settings"}
            for call in ast.walk(fn):
                arguments = [*call.args, *(k.value for k in call.keywords)] if isinstance(call, ast.Call) else []
                if not any(isinstance(a, ast.Name) and a.id in whole for a in arguments):
                    continue
                head = call.func.id if isinstance(call.func, ast.Name) else (
                    call.func.value.id if isinstance(call.func, ast.Attribute)
                    and isinstance(call.func.value, ast.Name) else None)
                if head in imported and imported[head] != module:
                    found.add((module, fn.name, ast.unparse(call.func)))
    return found


def test_below_the_entry_points_settings_are_handed_on_by_section():
    """Settings are resolved once at the entry points; below them a function passes on the section its callee
    reads. `benchmarks/settings_walk.py` counts the same thing at run time over the main job (docs/architecture.md)."""
    found = whole_settings_handoffs()
    assert found <= WHOLE_SETTINGS_HANDOFFS, \
        f"the whole Settings handed to another module: {sorted(found - WHOLE_SETTINGS_HANDOFFS)}"
    assert found, "the check found no hand-off at all: it no longer sees the package's calls"
