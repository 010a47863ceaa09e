from tests.conftest import run_cli


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
