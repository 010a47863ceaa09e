"""Helpers for the sharing tests: a real S3 server (moto) on loopback with IAM on, and cached small stores.

The S3 server enforces IAM like AWS does: a `writer` user may do anything on S3, a `reader` user may only list
and get. CLI subprocesses get the endpoint and one user's keys through the standard AWS_* variables, exactly
as a lab member's shell would, so nothing in avstore knows it is talking to moto.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import zarr

from pipeline.corpora.sample import write_sample_corpus
from stores.location import locate
from tests.conftest import REPO

SMALL = ["--size", "48", "--n-mels", "32", "--frames", "10", "--detect-every", "3", "--no-progress"]
N_CLIPS = 18  # write_sample_corpus(actors=3, sentences=1)


# ---- the S3 server --------------------------------------------------------------------------------------------------
@dataclass
class S3:
    endpoint: str
    keys: dict[str, tuple[str, str]]  # user -> (access key id, secret)

    def env(self, user: str = "writer") -> dict[str, str]:
        """The environment a CLI subprocess runs with, as that user."""
        key, secret = self.keys[user]
        return {**os.environ, **_aws_env(self.endpoint, key, secret)}

    def fs(self, user: str = "writer"):
        import s3fs

        key, secret = self.keys[user]
        return s3fs.S3FileSystem(key=key, secret=secret, endpoint_url=self.endpoint, skip_instance_cache=True)


def _aws_env(endpoint: str, key: str, secret: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


@contextmanager
def moto_s3(buckets: tuple[str, ...] = ("lab",)) -> Iterator[S3]:
    """moto's server on 127.0.0.1 (a free port), IAM enforced, `buckets` created; this process's AWS_* variables
    point at it as `writer` until the end, when the server's state is reset and it is stopped."""
    import boto3
    import requests
    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = "http://127.0.0.1:%d" % server.get_host_and_port()[1]
    try:
        admin = dict(endpoint_url=endpoint, aws_access_key_id="admin", aws_secret_access_key="admin", region_name="us-east-1")
        iam = boto3.client("iam", **admin)
        keys = {
            "writer": _user(iam, "writer", ["s3:*"]),
            "reader": _user(iam, "reader", ["s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation"]),
        }
        for bucket in buckets:
            boto3.client("s3", **admin).create_bucket(Bucket=bucket)
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()  # IAM on from now
        s3fs.S3FileSystem.clear_instance_cache()  # a cached client would still point at an earlier server
        with pytest.MonkeyPatch.context() as patch:
            for name, value in _aws_env(endpoint, *keys["writer"]).items():
                patch.setenv(name, value)
            patch.delenv("AWS_PROFILE", raising=False)
            patch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
            yield S3(endpoint, keys)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            requests.post(f"{endpoint}/moto-api/reset-auth", data=b"inf", timeout=10)
            requests.post(f"{endpoint}/moto-api/reset", timeout=10)  # moto's state lives in this process
        finally:
            server.stop()


def _user(iam, name: str, actions: list[str]) -> tuple[str, str]:
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName=f"{name}-s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


# ---- the CLI and cached stores --------------------------------------------------------------------------------------
def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """The CLI as a user runs it: a real subprocess, with `env` (e.g. S3.env("reader"))."""
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=timeout, **kwargs)


def sample_corpus(factory: pytest.TempPathFactory) -> Path:
    """One small corpus per test session (18 clips), shared by the test modules."""
    out = factory.getbasetemp() / "shared-corpus"
    if not (out / "SAMPLE.json").is_file():
        write_sample_corpus(out, actors=3, sentences=1, seed=0)
    return out


def extract_args(corpus: Path, store: str, *extra: str, workers: str | None = "0") -> list[str]:
    """The extract command line of these tests (in-process by default: `--workers 0`; None leaves it out)."""
    local = ["--workers", workers] if workers is not None else []
    return ["extract", "--dataset", "sample", "--root", str(corpus), "--store", store, *local, *SMALL, *extra]


def reference_store(factory: pytest.TempPathFactory) -> Path:
    """A local `--workers 0` extraction of the shared corpus, made once per session; treat it as read-only.

    Its BLAS and OpenMP pools have 2 threads, where Dask workers have 1: the store must not care (test_determinism).
    """
    store = factory.getbasetemp() / "shared-reference.zarr"
    if not (store / "avstore-checksums.json").is_file():
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}
        result = cli(*extract_args(sample_corpus(factory), str(store)), env=env)
        assert result.returncode == 0, result.stderr
    return store


def arrays_of(store: str | Path) -> dict[str, np.ndarray]:
    """Every array of every feature set, plus the clip ids, wherever the store lives."""
    root = zarr.open_group(locate(store).zarr_store(read_only=True), mode="r")
    out = {f"{name}/{array_name}": array[:] for name, group in root["features"].groups() for array_name, array in group.arrays()}
    out["clips/clip_id"] = root["clips/clip_id"][:]
    return out


def assert_same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key
