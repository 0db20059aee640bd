"""No import cycles inside the ``wmh`` package, function-level imports included (issue 19).

The graph is read from the source with :mod:`ast`, never by importing, so an import hidden
inside a function counts exactly like one at the top of the file.

How an import statement becomes edges (module ``A`` imports ...):

* ``import wmh.a.b`` / ``from wmh.a import b`` where ``wmh/a/b.py`` or ``wmh/a/b/`` exists:
  an edge ``A -> wmh.a.b``. A package ``wmh.p`` is the node of its ``__init__.py``.
* ``from wmh.a import name`` where ``name`` is not a submodule: an edge ``A -> wmh.a``;
  if ``wmh/a/__init__.py`` declares lazy exports (a module-level ``_EXPORTS = {name:
  "module"}`` read by PEP 562 ``__getattr__``), the edge goes to the exporting module too.
* Relative imports are resolved against the importing module's package.
* Importing ``wmh.a.b`` runs ``wmh/a/__init__.py`` first, so it also adds ``A -> wmh.a``,
  EXCEPT for the packages that contain ``A`` itself: Python initialises a module's parent
  packages before the module, so that implicit step adds no ordering. (An *explicit*
  ``from wmh.a import x`` inside ``wmh.a.b`` stays an edge: it is a cycle exactly when
  ``wmh/a/__init__.py`` reaches ``wmh.a.b``, i.e. when the child would read a half-run
  parent.)
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent / "wmh"


def discover_modules(package_dir: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is_package) for every ``.py`` under ``package_dir``."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, is_package)
    return modules


def _lazy_exports(tree: ast.Module) -> dict[str, str]:
    for node in tree.body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets)):
            return {k.value: v.value for k, v in zip(node.value.keys, node.value.values)
                    if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)}
    return {}


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports (anywhere in the file), by the rules above."""
    modules = discover_modules(package_dir)
    root = package_dir.name
    trees = {name: ast.parse(path.read_text(), filename=str(path))
             for name, (path, _) in modules.items()}
    lazy = {name: _lazy_exports(trees[name]) for name, (_, is_pkg) in modules.items() if is_pkg}

    def owner(dotted: str) -> str | None:
        """The longest existing module prefix of ``dotted``."""
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    graph = {}
    for name, (_, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        own_packages = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        if is_package:
            own_packages.add(name)
        targets: set[str] = set()

        def add(target: str | None) -> None:
            if target is None or target == name:
                return
            targets.add(target)
            parts = target.split(".")
            for i in range(1, len(parts)):  # the parent packages it runs first
                parent = ".".join(parts[:i])
                if parent not in own_packages:
                    targets.add(parent)

        for node in ast.walk(trees[name]):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == root:
                        add(owner(alias.name))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if source.split(".")[0] != root:
                    continue
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    if submodule in modules:
                        add(submodule)
                    else:
                        add(owner(source))
                        exporter = lazy.get(source, {}).get(alias.name)
                        if exporter in modules:
                            add(exporter)
        graph[name] = targets
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle per strongly connected component, e.g. ``[a, b, a]``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def strongconnect(node: str) -> None:  # Tarjan
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                strongconnect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            components.append(component)

    for node in sorted(graph):
        if node not in index:
            strongconnect(node)

    cycles = []
    for component in components:
        start = min(component)
        if len(component) == 1 and start not in graph.get(start, ()):
            continue
        # breadth-first from start back to start, inside the component
        previous = {start: None}
        frontier = [start]
        found = None
        while frontier and found is None:
            following = []
            for node in frontier:
                for succ in sorted(graph.get(node, ())):
                    if succ == start:
                        found = node
                        break
                    if succ in component and succ not in previous:
                        previous[succ] = node
                        following.append(succ)
                if found is not None:
                    break
            frontier = following
        path = [start]
        node = found
        while node is not None and node != start:
            path.append(node)
            node = previous[node]
        path.append(start)
        cycles.append([start] + path[1:-1][::-1] + [start])
    return sorted(cycles)


def test_the_package_has_no_import_cycles():
    cycles = find_cycles(import_graph(PACKAGE_ROOT))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def make_package(tmp_path, files: dict[str, str]) -> Path:
    """A package ``toy`` under ``tmp_path`` with these files (relative path -> source)."""
    for name, source in files.items():
        path = tmp_path / "toy" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return tmp_path / "toy"


def test_finder_reports_a_cycle_in_a_tiny_package(tmp_path):
    graph = import_graph(make_package(tmp_path, {
        "__init__.py": "",
        "a.py": "from toy import b\n",
        "b.py": "def f():\n    from . import c\n",  # a function-level import
        "c.py": "import toy.a as alias\n",
        "d.py": "from toy.a import thing\n",  # into the cycle, not part of it
        "sub/__init__.py": "from .leaf import x\n",
        "sub/leaf.py": "from toy import d\n"}))
    assert graph["toy.b"] == {"toy.c"}
    assert graph["toy.sub"] == {"toy.sub.leaf"}
    assert graph["toy.sub.leaf"] == {"toy.d"}
    assert find_cycles(graph) == [["toy.a", "toy.b", "toy.c", "toy.a"]]


def test_a_child_reading_its_half_run_parent_is_a_cycle(tmp_path):
    graph = import_graph(make_package(tmp_path, {
        "__init__.py": "",
        "p/__init__.py": "from toy.p.child import f\nNAME = 1\n",
        "p/child.py": "from toy.p import NAME\n",
        "p/other.py": "from toy.p import child\n"}))
    assert graph["toy.p.other"] == {"toy.p.child"}  # its own package adds no edge
    assert find_cycles(graph) == [["toy.p", "toy.p.child", "toy.p"]]


def test_importing_a_submodule_runs_its_package_first(tmp_path):
    graph = import_graph(make_package(tmp_path, {
        "__init__.py": "",
        "p/__init__.py": "from toy import user\n",
        "p/leaf.py": "",
        "user.py": "def f():\n    import toy.p.leaf\n"}))
    assert graph["toy.user"] == {"toy.p", "toy.p.leaf"}
    assert find_cycles(graph) == [["toy.p", "toy.user", "toy.p"]]


def test_lazy_exports_resolve_to_the_exporting_module(tmp_path):
    graph = import_graph(make_package(tmp_path, {
        "__init__.py": "",
        "m/__init__.py": '_EXPORTS = {"build": "toy.m.impl"}\n',
        "m/impl.py": "from toy import user\n",
        "user.py": "def f():\n    from toy.m import build\n"}))
    assert graph["toy.user"] == {"toy.m", "toy.m.impl"}
    assert find_cycles(graph) == [["toy.m.impl", "toy.user", "toy.m.impl"]]


def test_a_self_loop_is_a_cycle():
    assert find_cycles({"x": {"x"}, "y": {"x"}}) == [["x", "x"]]
