"""The package's module structure: no import circles (imports inside functions counted), configs as data."""
import ast
import pathlib

import pclip_jax

PACKAGE = pathlib.Path(pclip_jax.__file__).resolve().parent


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    rel = pathlib.Path(*name.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").is_file() or (PACKAGE.parent / rel / "__init__.py").is_file()


def import_graph() -> dict[str, set[str]]:
    """module → the package modules it imports anywhere in its source (module top, functions, classes)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import mod` imports pkg.mod when it is a module, else a name of pkg.
                targets = [f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t.split(".")[0] == "pclip_jax" and t != name and _is_module(t)}
        graph[name] = edges
    return graph


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


def test_no_module_imports_another_in_a_circle():
    graph = import_graph()
    assert len(graph) > 40 and "pclip_jax.job" in graph
    # The graph sees imports inside functions: the ones that remain are real edges.
    assert "pclip_jax.data.tfds_builders" in graph["pclip_jax.data.input_pipeline"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_main_job_sits_above_the_stages_it_runs():
    graph = import_graph()
    assert {"pclip_jax.train", "pclip_jax.evaluate", "pclip_jax.kg.pipeline"} <= graph["pclip_jax.job"]
    for stage in ("pclip_jax.train", "pclip_jax.evaluate", "pclip_jax.kg.pipeline", "pclip_jax.inference",
                  "pclip_jax.classify"):
        assert "pclip_jax.job" not in graph[stage], stage
    # Nothing below reaches up into evaluate or classify.
    for module, edges in graph.items():
        if module not in ("pclip_jax.job", "pclip_jax.main"):
            assert "pclip_jax.classify" not in edges, module


def test_classify_with_jax_imports_no_library_it_does_not_use():
    """The JAX backend of classify loads a workdir and scores flows; scikit-learn, SciPy, pandas, TensorFlow and
    matplotlib are for training, metrics and plots. Importing them cost every classify run ~1 s (f922ce2)."""
    import subprocess
    import sys

    heavy = ("sklearn", "scipy", "pandas", "tensorflow", "tensorflow_datasets", "matplotlib")
    probe = ("import sys, pclip_jax.classify, pclip_jax.inference, pclip_jax.embedding, pclip_jax.kg.explain; "
             f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "", f"imported on the classify path: {proc.stdout.strip()}"
