import pytest

from tests.conftest import open_up, run_cli, run_cli_unprivileged


def test_help_lists_every_command_with_a_description():
    out = run_cli("--help").stdout
    for command in ("sample", "summary", "datasets", "demo"):
        assert command in out


def test_unknown_dataset_is_one_line_exit_2_and_creates_nothing(tmp_path):
    result = run_cli("summary", "--dataset", "nope", "--root", str(tmp_path / "x"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "unknown dataset 'nope'" in result.stderr and "crema-d" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_missing_root_is_one_line_exit_2(tmp_path):
    result = run_cli("summary", "--dataset", "crema-d", "--root", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert result.returncode == 2 and "does not exist" in result.stderr and "--root" in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_root_without_expected_folders(tmp_path):
    result = run_cli("summary", "--dataset", "crema-d", "--root", str(tmp_path))
    assert result.returncode == 2 and "no VideoFlash/ folder" in result.stderr


def test_the_default_store_lives_under_data_and_an_old_default_store_is_still_used_and_named_once(tmp_path):
    """Issue 25: the default store folder was `stores/`, the Python package, so `rm -rf stores/*` deleted code."""
    import json

    from stores.store import FeatureStore

    missing = run_cli("verify", cwd=tmp_path)
    assert missing.returncode == 2 and "'data/stores/crema-d.zarr'" in missing.stderr, missing.stderr
    FeatureStore.create(tmp_path / "stores" / "crema-d.zarr", dataset="crema-d", class_names=["ANG"], split_seed=0)
    old = run_cli("info", "--json", cwd=tmp_path)
    assert old.returncode == 0 and json.loads(old.stdout)["dataset"] == "crema-d", old.stderr
    assert old.stderr.count("old default store location") == 1 and "data/stores/crema-d.zarr" in old.stderr


def test_a_device_no_run_can_use_is_refused_in_one_line():
    from pipeline.hardware import DeviceError, resolve_device

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda")
    with pytest.raises(DeviceError, match="unknown --device 'tpu'; choose auto, cpu or cuda"):
        resolve_device("tpu")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="torch sees no CUDA GPU here; use --device cpu"):
            resolve_device("cuda")


def test_a_store_this_user_cannot_read_is_one_line_exit_2_naming_what_to_check(tmp_path):
    from stores.store import FeatureStore

    workdir = tmp_path / "work"
    workdir.mkdir()
    workdir.chmod(0o777)
    open_up(workdir)
    store = workdir / "s.zarr"
    FeatureStore.create(store, dataset="crema-d", class_names=["ANG"], split_seed=0)
    (store / "zarr.json").chmod(0o600)  # the owner's alone
    result = run_cli_unprivileged("info", "--store", str(store), cwd=workdir)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr[-2000:]
    assert f"cannot read store '{store}' (PermissionError" in result.stderr and "credentials" in result.stderr
