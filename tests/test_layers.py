"""The package's layering, read from the source: no import circle, and no module imports a layer above its own.

Layers, bottom to top (docs: COMMON rules, README "Layout"):

0. ``errors hardware io labels findings provenance schema config_checks untrusted data models preprocessing``: files,
   images, data sets and their findings, the configs' schema, untrusted files' values, the model factory and the
   input contract;
1. ``checkpoint checkpoint_checks ood decision_file referral decision ensemble_manifest ensemble metrics module
   divergence callbacks resize_schedule loggers training_checks training evaluation explain audit``: what trains,
   scores, explains and audits a model;
2. ``inference batch runtimes export app launch rundir prepare cli``: what a user runs.

Every import counts, also one inside a function (a deferred import is still a dependency), with one stated
exception: the body of an ``if __name__ == "__main__":`` block. It runs only when the file is started as a script
(``python -m lungnet.evaluation.crossval``), never on import, so no module can reach it through an import; it
is how a lower module's ``python -m`` command hands over to its Hydra app in `lungnet.cli`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lungnet"

LAYERS = {
    "lungnet": 0,  # the package's __init__ (its version)
    "lungnet.errors": 0,
    "lungnet.hardware": 0,
    "lungnet.io": 0,
    "lungnet.labels": 0,
    "lungnet.findings": 0,  # one finding vocabulary across data sets, and the mapping between their labels
    "lungnet.provenance": 0,  # environment facts of a run (versions, git commit); imports nothing of lungnet
    "lungnet.schema": 0,  # the structured configs (dataclasses); imported by the package __init__ to register them
    "lungnet.config_checks": 0,  # range checks and key descriptions over the schema
    "lungnet.preflight": 0,  # each command's config-only checks, before anything heavy loads (lungnet.cli)
    "lungnet.untrusted": 0,  # typed, range-checked reading of files lungnet did not write in this run
    "lungnet.data": 0,
    "lungnet.models": 0,
    "lungnet.preprocessing": 0,
    "lungnet.checkpoint": 1,
    "lungnet.checkpoint_checks": 1,  # every value a checkpoint stores, checked before lungnet.checkpoint uses it
    "lungnet.ood": 1,  # the out-of-distribution gate (numpy), stored in decision files
    "lungnet.shift": 1,  # a batch's population shift: its gate scores tested against the gate's calibration scores
    "lungnet.decision_file": 1,  # the decision file format: its one reader, every value checked
    "lungnet.referral": 1,  # why a decision is referred (OOD causes, ambiguous sets) and the empty-set note
    "lungnet.decision": 1,  # the decision record: operating point, temperature, conformal sets, OOD gate
    "lungnet.ensemble_manifest": 1,  # the ensemble.json format: its one reader, every value checked
    "lungnet.ensemble": 1,  # several checkpoints as one model: members, checks, manifest, averaging
    "lungnet.metrics": 1,
    "lungnet.module": 1,
    "lungnet.divergence": 1,  # a diverged run stops before it is saved (a callback and the checkpoint's check)
    "lungnet.callbacks": 1,
    "lungnet.resize_schedule": 1,  # progressive resizing, a training callback
    "lungnet.loggers": 1,
    "lungnet.history": 1,  # history.csv, the run's own per-epoch record (a training callback); curves.png reads it
    "lungnet.training_checks": 1,
    "lungnet.training": 1,
    "lungnet.evaluation": 1,
    "lungnet.explain": 1,
    "lungnet.audit": 1,  # the shortcut audit command's task (lungnet.cli.audit runs it)
    "lungnet.inference": 2,
    "lungnet.batch": 2,
    "lungnet.runtimes": 2,
    "lungnet.export": 2,
    "lungnet.app": 2,
    "lungnet.app_info": 2,  # what the app tells clients about its model (names and hashes, no server paths)
    "lungnet.cli_help": 2,  # --help: a command's usage, its own config groups and its options (lungnet.cli)
    "lungnet.launch": 2,  # what a command line means before Hydra composes it (lungnet.cli)
    "lungnet.rundir": 2,  # the commands' run directories (lungnet.cli)
    "lungnet.prepare": 2,  # lungnet-prepare: a data set scanned into its manifest ahead of time
    "lungnet.cli": 2,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(name: str) -> int:
    """The layer of the longest prefix of ``name`` in `LAYERS` (``lungnet`` itself matches only exactly)."""
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if name == prefix or (prefix != "lungnet" and name.startswith(prefix + ".")):
            return LAYERS[prefix]
    raise AssertionError(f"{name} is in no layer: add it to LAYERS in tests/test_layers.py")


def _is_main_guard(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return (
        isinstance(node, ast.If)
        and isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators)
    )


def _nodes(tree: ast.AST):
    """Every node of ``tree`` except the bodies of ``if __name__ == "__main__":`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(child for child in ast.iter_child_nodes(node) if not _is_main_guard(child))


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The lungnet modules ``name`` imports (``from pkg import submodule`` counts as the submodule)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in _nodes(ast.parse(path.read_text(encoding="utf-8"))):
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


def test_every_module_has_a_layer(graph):
    for name in graph:
        layer(name)


def test_no_upward_import(graph):
    upward = [
        f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
        for a, deps in sorted(graph.items())
        for b in sorted(deps)
        if layer(b) > layer(a)
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
        "import os\nfrom lungnet.evaluation import plots\n"
        "def f():\n    from lungnet.cli import run_safely\n"
        "if __name__ == '__main__':\n    from lungnet.app import main\n"
    )
    known = {"lungnet.evaluation.plots", "lungnet.cli", "lungnet.app"}
    assert imports("lungnet.data.m", src, known) == {"lungnet.evaluation.plots", "lungnet.cli"}
    assert layer("lungnet.data.m") == 0 and layer("lungnet.cli") == 2 and layer("lungnet.explain.run") == 1


# things written once, each in its own module: logits -> probabilities and device=auto
ONCE = {
    "torch.softmax(": "lungnet/preprocessing.py",
    "torch.sigmoid(": "lungnet/preprocessing.py",
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
