"""The package's layers import only downward, and every package imports on its own (no hidden cycles).

    L0 errors, options, dist, losses        pure functions and the few things everything shares
    L1 models, data, memory                  building blocks (each owns its typed config block)
    L2 optim, components, prune              optimizers/backward strategies; policies, schedules, teacher; pruning
    L3 config                                YAML, overrides, the experiment schema, the stage-type registry
    L4 engine                                the runner and its parts, the Stage base class
    L5 stages, callbacks, api                the methods, everything that is not the method; load_model
    L6 run, report, evaluate, export, synth  entry points
    (the package root, ssl_kd/__init__.py, re-exports load_model lazily: it may import any layer)

A module may import from its own package and from any lower layer, never from a higher one nor from another
package of its own layer. Function-level and TYPE_CHECKING imports count too.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from helpers import ROOT

PKG = ROOT / "ssl_kd"
LAYERS = {
    "errors": 0, "options": 0, "dist": 0, "losses": 0,
    "models": 1, "data": 1, "memory": 1,
    "optim": 2, "components": 2, "prune": 2,
    "config": 3,
    "engine": 4,
    "stages": 5, "callbacks": 5, "api": 5,
    "run": 6, "report": 6, "evaluate": 6, "export": 6, "synth": 6,
}  # fmt: skip
ROOT_LAYER = 7  # ssl_kd/__init__.py


def top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "ssl_kd" and len(parts) > 1 else None


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def imports_of(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, imported module) of every import statement anywhere in the source, relative ones resolved."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((node.lineno, name))
            out += [(node.lineno, f"{name}.{a.name}") for a in node.names if name == "ssl_kd"]
    return out


def test_every_package_has_a_layer():
    modules = {p.stem for p in PKG.glob("*.py") if not p.name.startswith("_")}
    packages = {p.parent.name for p in PKG.glob("*/__init__.py")}
    assert modules | packages == set(LAYERS), f"layer table out of date: {sorted((modules | packages) ^ set(LAYERS))}"


def test_imports_only_go_down():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        src = top(module_name(path))
        if src is None:
            continue
        for line, name in imports_of(path.read_text(), module_name(path), path.name == "__init__.py"):
            dst = top(name)
            if dst is None or dst == src:
                continue
            layer = ROOT_LAYER if src == "__init__" else LAYERS[src]
            if LAYERS[dst] >= layer:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {src} (L{layer}) imports {name} (L{LAYERS[dst]})")
    assert not bad, "upward or sideways imports:\n" + "\n".join(bad)


def test_the_checker_sees_hidden_and_relative_imports():
    """The walk above must be able to fail: imports inside functions, under TYPE_CHECKING and relative ones."""
    source = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ssl_kd.stages import kd\n"
        "def f():\n    from ssl_kd.engine import Runner\n    from ..config import schema\n    return Runner\n"
    )
    names = [n for _, n in imports_of(source, "ssl_kd.losses.probe")]
    assert {"ssl_kd.stages", "ssl_kd.engine", "ssl_kd.config"} <= set(names)


PACKAGES = ["errors", "options", "dist", "losses", "models", "data", "memory", "optim", "components", "config",
            "engine", "callbacks", "api", "stages", "run", "report", "evaluate"]  # fmt: skip
# One interpreter imports the third-party libraries (seconds: torch alone is most of a fresh `import ssl_kd.x`), then
# forks a child per package that imports `ssl_kd.<name>` with no ssl_kd module loaded before it.
FORK_EACH = """
import importlib, os, sys, traceback
import accelerate, albumentations, matplotlib, numpy, PIL, pydantic, torch, torchvision, tqdm, yaml
assert not [m for m in sys.modules if m.startswith("ssl_kd")]
sys.modules["diffusers"] = None  # DM-KD's optional image synthesis: importing any package must not need it
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module("ssl_kd." + name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1]:
        failed.append(name)
print(" ".join(failed))
"""


def test_each_package_imports_in_isolation():
    """`import ssl_kd.<pkg>` works for each package in a fresh interpreter (no import cycle that only an earlier
    import of another package hides), without the optional `diffusers` (ssl_kd.synth loads it when it runs): each
    package in its own forked process."""
    res = subprocess.run([sys.executable, "-c", FORK_EACH, *PACKAGES], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert res.returncode == 0 and not res.stdout.split(), f"failed: {res.stdout}\n{res.stderr[-3000:]}"


def runner_reaches(source: str) -> list[int]:
    """Lines where code reads a `runner` attribute or name (a stage sees the run only through the Stage API)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        attr = isinstance(node, ast.Attribute) and node.attr == "runner"
        name = isinstance(node, ast.Name) and node.id in ("runner", "Runner")
        mod = isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ssl_kd.engine.runner")
        if attr or name or mod:
            lines.append(node.lineno)
    return sorted(set(lines))


def test_stages_talk_to_the_engine_only_through_the_stage_api():
    """No `.runner` (nor the Runner, nor `_ctx`) in ssl_kd/stages: the seam is Stage's methods (model, raw_model,
    device, inputs, data, ...), backed by the small StageContext protocol of engine/stage.py."""
    bad = []
    for path in sorted((PKG / "stages").rglob("*.py")):
        source = path.read_text()
        bad += [f"{path.relative_to(ROOT)}:{n}" for n in runner_reaches(source)]
        bad += [f"{path.relative_to(ROOT)}:{i} (_ctx)" for i, ln in enumerate(source.splitlines(), 1) if "_ctx" in ln]
    assert not bad, "stages reaching past the Stage API:\n" + "\n".join(bad)
    assert runner_reaches("def f(self):\n    return self.runner.models\n") == [2]  # the check can fail
