"""The code's shape, which no feature test sees: cli.py is a thin skin (short, no loops), no two modules import each
other (directly or round a circle), every module imports on its own, and the CLI's written-out defaults are the
library's."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stores", "encoders")
TOP_LEVEL = ("avstore.py", "cli.py", "cli_options.py")
CLI_MAX_LINES = 300


def module_files() -> dict[str, Path]:
    """Every project module (dotted name -> file): the three packages and the top-level modules."""
    files = [p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))] + [REPO / name for name in TOP_LEVEL]
    modules = {}
    for path in files:
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports, anywhere in the file (function-level imports count too: a circle
    closed inside a function still makes the modules depend on each other). `from a import b` counts as importing
    `a.b` when that is a module."""
    modules = module_files()
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = {m for m in imported if m in modules and m != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan): each holds at least one import circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cli_is_short_and_holds_no_loop():
    source = (REPO / "cli.py").read_text(encoding="utf-8")
    assert len(source.splitlines()) <= CLI_MAX_LINES, f"cli.py has {len(source.splitlines())} lines; move logic into a module"
    loops = [node.lineno for node in ast.walk(ast.parse(source)) if isinstance(node, (ast.For, ast.AsyncFor, ast.While))]
    assert not loops, f"cli.py loops at line(s) {loops}: a command parses options and calls one function of a module"


def test_the_circle_finder_finds_a_circle():
    # the test below is only as good as this: a -> b -> c -> a is one circle, d hangs off it
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_two_modules_import_each_other():
    graph = import_graph()
    assert {"cli", "cli_options", "avstore", "encoders.train", "stores.store"} <= set(graph)  # the graph covers the project
    found = circles(graph)
    described = ["; ".join(f"{a} -> {', '.join(sorted(graph[a] & set(c)))}" for a in c) for c in found]
    assert not found, f"import circles: {described}"


def test_a_run_folder_is_named_in_one_place():
    """`train`, `sweep`, the presets and the demo name their run folders with encoders/runs.run_name."""
    def names_runs(line: str) -> bool:  # a run folder's parts; embed's "random-init-seed{N}" names weights, not a run
        return "-fold{" in line or ("-seed{" in line and "random-init" not in line)

    namers = [str(path.relative_to(REPO)) for path in module_files().values()
              if any(names_runs(line) for line in path.read_text(encoding="utf-8").splitlines())]
    assert namers == ["encoders/runs.py"]


@pytest.mark.heavy
@pytest.mark.parametrize("module", sorted(module_files()))
def test_each_module_imports_alone(module):
    """In a fresh interpreter, so that no other project module was imported first (a circle shows only then)."""
    result = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_every_input_error_names_an_exception_class():
    from cli_options import INPUT_ERRORS

    for module, name in INPUT_ERRORS:
        error = getattr(importlib.import_module(module), name)
        assert isinstance(error, type) and issubclass(error, Exception), (module, name)


def cli_command(name: str):
    """One cli.py command as click sees it."""
    import typer.main

    import cli

    return typer.main.get_command(cli.app).commands[name]


def cli_defaults(command: str) -> dict[str, object]:
    """Option name -> default of one cli.py command, as typer declares them."""
    return {param.name: param.default for param in cli_command(command).params}


def test_the_clis_written_out_defaults_are_the_librarys():
    """cli_options writes the training defaults out (their modules import torch, --help should not); they must not drift."""
    from encoders.embed import EmbedConfig
    from encoders.ladder import LadderConfig
    from encoders.runs import ladder_options
    from encoders.train import TrainConfig

    train_fields = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    train = cli_defaults("train")
    shared = set(train) & set(train_fields) - {"encoder", "modality", "fusion"}  # the CLI resolves those three per encoder
    assert {"epochs", "batch_size", "folds", "device", "amp", "compile", "target", "labels", "labelled_fraction"} <= shared
    assert {name: train[name] for name in shared} == {name: train_fields[name] for name in shared}
    ladder = {k: train[k] for k in ("noise", "lambdas", "cross_skips", "reconstruction", "combinator")}
    assert ladder_options(**ladder) == {}, "the ladder flags' defaults differ from LadderConfig's"
    assert train["noise"] == LadderConfig.noise and train["combinator"] == LadderConfig.combinator

    sweep = cli_defaults("sweep")
    assert {k: sweep[k] for k in ("epochs", "batch_size", "device")} == {k: train_fields[k] for k in ("epochs", "batch_size", "device")}
    from encoders.study import SWEEP_ENCODERS, SWEEP_MODALITIES, SWEEP_SEEDS

    helps = {param.name: param.help for param in cli_command("sweep").params}
    assert f"(default {','.join(SWEEP_ENCODERS)})" in helps["encoders"] and f"(default {','.join(SWEEP_MODALITIES)})" in helps["modalities"]
    assert f"(default {','.join(map(str, SWEEP_SEEDS))};" in helps["seeds"]
    from encoders.runs import RUNS_DIR

    assert Path(cli_defaults("report")["runs"]) == RUNS_DIR
    embed = cli_defaults("embed")
    assert (embed["backbone"], embed["batch_size"], embed["size"]) == (EmbedConfig.backbone, EmbedConfig.batch_size, EmbedConfig.size)
