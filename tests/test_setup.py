"""The set-up cannot drift: environment.yml and requirements.lock pin the same versions."""

import re
from pathlib import Path

from pipeline.media import ffmpeg_exe

REPO = Path(__file__).resolve().parents[1]


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_environment_yml_agrees_with_the_lock():
    pins = lock_pins()
    env = re.findall(r"^\s+- ([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(\S+)$", (REPO / "environment.yml").read_text(), re.M)
    assert len(env) >= 15
    for name, version in env:
        assert pins.get(name.lower()) == version, f"{name}: environment.yml {version} vs lock {pins.get(name.lower())}"
    direct = [re.split(r"[=<>\[ #]", l)[0].lower() for l in (REPO / "requirements.in").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert sorted(direct) == sorted(n.lower() for n, _ in env)


def test_torch_pair_is_matched_and_runs_torchvision_ops():
    import torch
    import torchvision

    pins = lock_pins()
    assert torch.__version__.split("+")[0] == pins["torch"] and torchvision.__version__.split("+")[0] == pins["torchvision"]
    keep = torchvision.ops.nms(torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10.0]]), torch.tensor([0.9, 0.8]), 0.5)
    assert keep.tolist() == [0]


def test_makefile_ignores_local_pip_configuration():
    makefile = (REPO / "Makefile").read_text()
    assert "PIP_CONFIG_FILE := /dev/null" in makefile and "unexport PIP_FIND_LINKS" in makefile


def test_ffmpeg_is_found_without_root():
    assert Path(ffmpeg_exe()).exists()


def test_ci_calls_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    assert "make test" in readme and "make test" in (REPO / ".ci" / "run").read_text()
