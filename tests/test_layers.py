"""The package's floors, read from the source: no import circle, and no room imports a room on its own floor or above.

The floors, bottom to top (README "Layout"; each room may import only itself and the rooms on lower floors):

0. core: ``errors io hardware provenance untrusted schema config_checks`` (and the package ``__init__``);
1. ``models``: the one model factory, model names and weights;
2. ``data``: data sets, their labels and finding vocabulary, images, splits, manifests, the input contract;
3. ``scoring``: metrics, statistics and resampling, the OOD gate, referral reasons, the model-output loop, figures;
4. ``artifacts``: opening a trained model (checkpoint, ensemble, exports) and its decision record;
5. ``explain``: heatmaps (CAMs, integrated gradients), their overlays and pointing scores;
6. ``evaluation``: the evaluation pipeline and its reports, audit, subgroups, transfer, cross-validation folds;
7. ``train`` and ``serve``: fitting a model (module, callbacks, loggers, its finish) | inference, app, export;
8. ``commands``: one Hydra app per ``conf/<name>.yaml``, launch, run directories, --help, preflight;
9. doorways: the ``python -m lungnet.<x>`` forms, a ``__main__`` block that calls a command; nothing imports them.

Every import counts, also one inside a function (a deferred import is still a dependency) and one inside an
``if __name__ == "__main__":`` block.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lungnet"

FLOORS = {  # room -> floor
    "core": 0,
    "models": 1,
    "data": 2,
    "scoring": 3,
    "artifacts": 4,
    "explain": 5,
    "evaluation": 6,
    "train": 7,
    "serve": 7,
    "commands": 8,
    "doorway": 9,
}
CORE = {"lungnet", "errors", "io", "hardware", "provenance", "untrusted", "schema", "config_checks"}
DOORWAYS = {
    "lungnet.app",
    "lungnet.export",
    "lungnet.audit",
    "lungnet.prepare",
    "lungnet.explain.__main__",
    "lungnet.evaluation.crossval",
    "lungnet.evaluation.transfer",
}


def room(name: str) -> str:
    """The room of module ``name``: a doorway, a core module, or the package directly under ``lungnet``."""
    if name in DOORWAYS:
        return "doorway"
    parts = name.split(".")
    top = parts[1] if len(parts) > 1 else "lungnet"
    if top in CORE or name == "lungnet":
        return "core"
    if top not in FLOORS:
        raise AssertionError(f"{name} is in no room: put it in a room of tests/test_layers.py FLOORS (README Layout)")
    return top


def layer(name: str) -> int:
    """The floor of module ``name``."""
    return FLOORS[room(name)]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The lungnet modules ``name`` imports (``from pkg import submodule`` counts as the submodule)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            subs = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known}
            found |= subs or {base}
    return {m for m in found if m == "lungnet" or m.startswith("lungnet.")}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(name, path, known) - {name} for name, path in mods.items()}


def test_every_module_has_a_room(graph):
    for name in graph:
        room(name)


def test_each_room_imports_only_lower_floors(graph):
    upward = [
        f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
        for a, deps in sorted(graph.items())
        for b in sorted(deps)
        if room(b) != room(a) and layer(b) >= layer(a)
    ]
    assert not upward, "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_circle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_checks_catch_what_they_look_for(tmp_path):
    """The parser and the checks on a made-up package: a deferred upward import and a circle are both found."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    src = tmp_path / "m.py"
    src.write_text(
        "import os\nfrom lungnet.scoring import plots\n"
        "def f():\n    from lungnet.commands.wrapper import run_safely\n"
        "if __name__ == '__main__':\n    from lungnet.serve.app import main\n"
    )
    known = {"lungnet.scoring.plots", "lungnet.commands.wrapper", "lungnet.serve.app"}
    found = imports("lungnet.data.m", src, known)
    assert found == {"lungnet.scoring.plots", "lungnet.commands.wrapper", "lungnet.serve.app"}
    assert (layer("lungnet.data.m"), layer("lungnet.commands.wrapper"), layer("lungnet.explain.run")) == (2, 8, 5)
    assert room("lungnet.app") == "doorway" and room("lungnet.serve.app") == "serve" and room("lungnet.io") == "core"
    with pytest.raises(AssertionError, match="in no room"):
        room("lungnet.attic.x")


def test_nothing_imports_a_command_or_a_doorway(graph):
    """Only the commands' own floor imports `lungnet.commands` (its wrapper); a doorway is imported by nobody."""
    wrong = [
        f"{a} imports {b}"
        for a, deps in sorted(graph.items())
        for b in sorted(deps)
        if (room(b) == "commands" and room(a) not in ("commands", "doorway")) or room(b) == "doorway"
    ]
    assert not wrong, "\n".join(wrong)


def test_every_doorway_only_hands_over():
    """A doorway's whole code is its ``__main__`` block calling one command's ``main``."""
    for name in DOORWAYS:
        path = PACKAGE.parent / (name.replace(".", "/") + ".py")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        code = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        assert len(code) == 1 and isinstance(code[0], ast.If), f"{path}: only a docstring and a __main__ block"


# things written once, each in its own module: logits -> probabilities and device=auto
ONCE = {
    "torch.softmax(": "lungnet/data/preprocessing.py",
    "torch.sigmoid(": "lungnet/data/preprocessing.py",
    "cuda.is_available(": "lungnet/hardware.py",
}
# a softmax that is not logits -> probabilities: Score-CAM's weights over the target layer's channels
ONCE_EXCEPTIONS = {("torch.softmax(", "lungnet/explain/cams.py")}


def test_logits_to_probabilities_and_device_auto_are_written_once():
    found = {
        (needle, path.relative_to(PACKAGE.parent).as_posix())
        for path in PACKAGE.rglob("*.py")
        for needle in ONCE
        if needle in path.read_text(encoding="utf-8")
    }
    assert found - ONCE_EXCEPTIONS == {(needle, home) for needle, home in ONCE.items()}
