"""Issue 5's acceptance path, end to end: one person extracts into a bucket with a two-worker Dask cluster and
publishes it; a reader without write rights verifies it, trains from it, and finds it identical to a local
extraction of the same corpus with the same parameters."""

from __future__ import annotations

import json

import pytest

from tests.remote_helpers import cli, extract_args, moto_s3, reference_store, sample_corpus
from tests.test_cluster import cluster, dask_cluster  # noqa: F401 - cluster: a real scheduler and two workers


@pytest.mark.heavy
def test_cluster_to_bucket_publish_verify_train_as_reader_and_diff(cluster, tmp_path_factory, tmp_path):  # noqa: F811
    """The workers write the bucket themselves: a cluster started without the store's credentials is refused in
    one line that says so; one started with them extracts."""
    corpus, reference = sample_corpus(tmp_path_factory), reference_store(tmp_path_factory)
    with moto_s3(buckets=("lab",)) as s3:
        scratch, shared = "s3://lab/scratch/sample.zarr", "s3://lab/sample.zarr"
        blind = cli(*extract_args(corpus, "s3://lab/blind.zarr", "--scheduler", cluster, workers=None), env=s3.env("writer"))
        assert blind.returncode == 2 and blind.stderr.strip().count("\n") == 0, blind.stderr[-2000:]
        assert "AWS_*" in blind.stderr and "workers" in blind.stderr
        with dask_cluster(tmp_path, s3.env("writer")) as writers:  # their logs go beside the run
            made = cli(*extract_args(corpus, scratch, "--scheduler", writers, workers=None), env=s3.env("writer"))
        assert made.returncode == 0, made.stderr[-2000:]
        published = cli("publish", "--store", scratch, "--to", shared, env=s3.env("writer"))
        assert published.returncode == 0, published.stderr[-2000:]

        reader = s3.env("reader")
        assert cli("verify", "--store", shared, env=reader).returncode == 0
        run = tmp_path / "run"
        trained = cli("train", "--encoder", "resnet18", "--modality", "vision", "--store", shared, "--epochs", "2",
                      "--batch-size", "8", "--out", str(run), "--no-progress", env=reader)
        assert trained.returncode == 0, trained.stderr[-2000:]
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["store"]["location"] == shared and metrics["test"]["n"] > 0
        refused = cli(*extract_args(corpus, shared), env=reader)
        assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0

        same = cli("diff", shared, str(reference), env=reader)
        assert same.returncode == 0, same.stdout + same.stderr
        assert "no difference" in same.stdout
