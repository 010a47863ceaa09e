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
