"""Storage on a real S3-protocol server (moto's server mode on 127.0.0.1): round trips, streamed
paginated listings, retries of injected transient failures, permanent errors that fail fast,
credentials that never show, and the preprocess flow from an s3:// catalog to an s3:// dataset."""

from __future__ import annotations

import io
import json
import logging
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.infra import errors
from tasks.infra.errors import (
    RetryPolicy,
    StorageError,
    StorageNotFoundError,
    StoragePermissionError,
    StorageUnavailableError,
)
from tasks.infra.options import resolve_storage_options
from tasks.infra.redaction import redact
from tasks.infra.store import Store
from tasks.infra.weight_cache import local_file
from tasks.records.config import RunPolicy
from tasks.stages.registry import PreprocessConfig
from tests.s3 import Bucket, FaultProxy, clear_s3fs_caches

FAST = RetryPolicy(attempts=5, base=0.01, cap=0.05)  # real backoff, short waits

# Distinctive fake credentials (moto accepts any): they must never show up anywhere.
FAKE_KEY_ID = "AKIAVITONPREPFAKE123"
FAKE_SECRET = "vItOnPrEp/FakeSecret+0123456789abcdefXYZ"  # 40 characters, like a real one
FAKE_TOKEN = "vitonprep-fake-session-token-" + "Zq9" * 40


@pytest.fixture
def s3_faults(s3) -> Iterator[tuple[Bucket, FaultProxy]]:
    """The `s3` bucket and a fault-injecting proxy in front of it; `storage_options` go through it."""
    with FaultProxy(s3.endpoint) as proxy:
        through = Bucket(s3.name, proxy.endpoint, {"endpoint_url": proxy.endpoint}, s3.client)
        yield through, proxy


def retries_logged(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "vitonprep.storage" and "retrying" in r.getMessage()]


# ---------------------------------------------------------------------------------------------
# Round trips and listings


def test_write_read_exists_and_remove_round_trip_on_s3(s3):
    store = Store(s3.url("root"), s3.storage_options)
    assert store.write_bytes("a/b/c.bin", b"\x00\x01") == f"{s3.name}/root/a/b/c.bin"
    assert store.read_bytes("a/b/c.bin") == b"\x00\x01"
    assert s3.get("root/a/b/c.bin") == b"\x00\x01", "not where a plain S3 client finds it"
    assert store.url_of("a/b/c.bin") == s3.url("root/a/b/c.bin")
    assert store.exists("a/b/c.bin") and store.exists("a") and store.isdir("a/b")
    assert not store.exists("a/b/nope.bin") and not store.isdir("a/b/c.bin")
    assert store.listdir() == ["a"] and store.listdir("a/b") == ["c.bin"]
    store.remove("a/b/c.bin")
    store.remove("a/b/c.bin")  # quiet when missing
    assert not store.exists("a/b/c.bin") and s3.keys() == []


def test_listing_recurses_in_the_local_order_with_sizes_etags_and_times(s3, tmp_path):
    files = {
        "top.jpg": b"1", "z-last.png": b"22", "sub/deep/a.png": b"333", "sub/b.jpg": b"4444",
        "sub-x/c.jpg": b"5", ".hidden/d.jpg": b"x", "sub/.e.jpg.tmp": b"x", "sub/.git/f.jpg": b"x",
    }  # fmt: skip
    remote, local = Store(s3.url("cat"), s3.storage_options), Store(str(tmp_path))
    for rel, data in files.items():
        remote.write_bytes(rel, data)
        local.write_bytes(rel, data)
    started = time.time()
    listed = list(remote.list_files())
    expected = ["top.jpg", "z-last.png", "sub/b.jpg", "sub/deep/a.png", "sub-x/c.jpg"]
    assert [f.key for f in listed] == expected, "a folder's files first, then its subfolders, all sorted"
    assert [f.key for f in local.list_files()] == expected, "S3 and local list in the same order"
    for info in listed:
        assert info.size == len(files[info.key])
        assert info.url == s3.url("cat", info.key)
        assert info.etag and info.etag.strip('"')
        assert info.modified is not None and abs(info.modified - started) < 120
    assert [f.key for f in remote.list_files("sub")] == ["b.jpg", "deep/a.png"]
    assert list(remote.list_files("nope")) == []


def test_a_large_listing_is_paginated_and_streamed(s3_faults):
    bucket, proxy = s3_faults
    keys = [f"persons/{folder}/{i:05d}.jpg" for folder in ("a", "b", "c") for i in range(1000)]
    bucket.put_many(keys)
    store = Store(bucket.url(), bucket.storage_options)
    proxy.clear()
    listing = store.list_files("persons", page_size=200)
    first = next(listing)
    assert proxy.count("GET", "list-type=2") <= 2, "the first key came only after fetching many pages"
    rest = [info.key for info in listing]
    got = [first.key, *rest]
    assert got == [k.removeprefix("persons/") for k in sorted(keys)], "every key exactly once, in order"
    assert len(set(got)) == 3000
    # persons/ (its subfolders) + 5 pages of 200 in each of the 3 folders
    assert proxy.count("GET", "list-type=2") == 1 + 3 * 5
    assert all("max-keys=200" in path for _, path in proxy.requests)


def test_options_come_from_the_environment(s3, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3.endpoint)
    store = Store(s3.url("env"))  # no storage_options at all: endpoint and credentials from env
    store.write_text("x.txt", "hello")
    assert s3.get("env/x.txt") == b"hello"
    monkeypatch.setenv("VITONPREP_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    assert resolve_storage_options("s3://b/k")["endpoint_url"] == "http://127.0.0.1:9", "ours comes first"
    explicit = resolve_storage_options("s3://b/k", {"client_kwargs": {"endpoint_url": "http://e"}})
    assert "endpoint_url" not in explicit and explicit["client_kwargs"]["endpoint_url"] == "http://e"
    env = {"AWS_REGION": "eu-west-3", "AWS_PROFILE": "ci"}
    options = resolve_storage_options("s3://b/k", {}, environ=env)
    assert options["client_kwargs"]["region_name"] == "eu-west-3" and options["profile"] == "ci"
    assert "profile" not in resolve_storage_options("s3://b/k", {"key": "k", "secret": "s"}, environ=env)
    assert resolve_storage_options("/tmp/x", {"a": 1}, environ=env) == {"a": 1}


def test_fsspec_configuration_counts_as_given(monkeypatch):
    import fsspec

    configured = {"endpoint_url": "http://configured:9000", "config_kwargs": {"s3": {"addressing_style": "path"}}}
    monkeypatch.setitem(fsspec.config.conf, "s3", configured)  # what FSSPEC_S3_ENDPOINT_URL=... would set
    options = resolve_storage_options("s3://b/k", {}, environ={"AWS_ENDPOINT_URL": "http://env:9000"})
    assert options["endpoint_url"] == "http://configured:9000", "an environment default overrode fsspec's configuration"
    assert options["config_kwargs"] == {"s3": {"addressing_style": "path"}, "retries": {"total_max_attempts": 1}}
    assert resolve_storage_options("s3://b/k", {"endpoint_url": "http://given"}, environ={})["endpoint_url"] == "http://given"
    assert configured == {"endpoint_url": "http://configured:9000", "config_kwargs": {"s3": {"addressing_style": "path"}}}
    assert Store("s3://b/k").fs.config_kwargs["s3"] == {"addressing_style": "path"}


def test_model_weights_come_from_s3_as_a_cached_local_copy(s3, tmp_path):
    s3.put("models/pose/w.task", b"weights")
    path = local_file(s3.url("models/pose/w.task"), s3.storage_options, cache_dir=str(tmp_path))
    assert path.startswith(str(tmp_path)) and Path(path).read_bytes() == b"weights"
    assert local_file(s3.url("models/pose/w.task"), s3.storage_options, cache_dir=str(tmp_path)) == path


def test_new_weights_at_the_same_url_are_downloaded_again_and_change_the_fingerprint(s3, tmp_path, monkeypatch):
    from tasks.stages.registry import PreprocessConfig, resolve_weights, stage_fingerprints

    monkeypatch.setenv("HOME", str(tmp_path))  # the weight cache lives under ~/.cache
    config = PreprocessConfig(catalog="c", out="o", cloth_mask_model=s3.url("models/cloth.pt"),
                              storage_options=s3.storage_options)
    s3.put("models/cloth.pt", b"weights, first version")
    first = resolve_weights(config)
    s3.put("models/cloth.pt", b"weights, second version")
    second = resolve_weights(config)
    assert Path(second.of("cloth_mask").path).read_bytes() == b"weights, second version"
    assert not Path(first.of("cloth_mask").path).exists(), "the copy of the replaced object should be gone"
    assert stage_fingerprints(config, first)["garment"]["cloth_mask"] != stage_fingerprints(config, second)["garment"]["cloth_mask"]


# ---------------------------------------------------------------------------------------------
# Transient errors are retried


@pytest.mark.parametrize(
    "status, code",
    [(503, "SlowDown"), (500, "InternalError"), (503, "ServiceUnavailable"), (429, "TooManyRequests")],
)
def test_a_read_is_retried_through_transient_errors(s3_faults, caplog, status, code):
    bucket, proxy = s3_faults
    bucket.put("k.bin", b"payload")
    store = Store(bucket.url(), bucket.storage_options, retry=FAST)
    proxy.fail(2, status, code)
    with caplog.at_level(logging.WARNING, logger="vitonprep.storage"):
        assert store.read_bytes("k.bin") == b"payload"
    assert proxy.count("GET", "/k.bin") == 3, "2 failed attempts, then the one that worked"
    assert [i[2] for i in proxy.injected] == [status, status]
    assert len(retries_logged(caplog)) == 2


def test_a_write_is_retried_through_transient_errors(s3_faults, caplog):
    bucket, proxy = s3_faults
    store = Store(bucket.url("out"), bucket.storage_options, retry=FAST)
    proxy.fail(3, 503, "SlowDown", when=lambda method, path: method == "PUT")
    with caplog.at_level(logging.WARNING, logger="vitonprep.storage"):
        store.write_bytes("a/b.jpg", b"jpeg")
    assert proxy.count("PUT") == 4
    assert bucket.get("out/a/b.jpg") == b"jpeg"
    assert len(retries_logged(caplog)) == 3


def test_a_failed_listing_page_is_retried_without_restarting_the_listing(s3_faults, caplog):
    bucket, proxy = s3_faults
    keys = [f"items/{i:04d}.jpg" for i in range(50)]
    bucket.put_many(keys)
    store = Store(bucket.url(), bucket.storage_options, retry=FAST)
    proxy.fail(2, 500, "InternalError", when=lambda method, path: "continuation-token" in path)
    with caplog.at_level(logging.WARNING, logger="vitonprep.storage"):
        listed = [info.key for info in store.list_files("items", page_size=20)]
    assert listed == [k.removeprefix("items/") for k in keys]
    # pages 1, 2 (failed twice, then fine), 3: the first page is never fetched again
    assert proxy.count("GET", "list-type=2") == 5 and proxy.count("GET", "continuation-token") == 4
    assert len(retries_logged(caplog)) == 2


def test_dropped_connections_are_retried(s3_faults, caplog):
    bucket, proxy = s3_faults
    bucket.put("k.bin", b"payload")
    store = Store(bucket.url(), bucket.storage_options, retry=FAST)
    proxy.drop(4)  # the HTTP client itself retries a dropped pooled connection once: 2 attempts fail
    with caplog.at_level(logging.WARNING, logger="vitonprep.storage"):
        assert store.read_bytes("k.bin") == b"payload"
    assert len(proxy.injected) == 4
    assert len(retries_logged(caplog)) >= 1
    assert "ConnectionClosedError" in retries_logged(caplog)[0].getMessage()


def test_transient_errors_that_persist_fail_after_the_last_attempt_with_backoff(s3_faults, monkeypatch):
    bucket, proxy = s3_faults
    store = Store(bucket.url("out"), bucket.storage_options, retry=RetryPolicy(attempts=4, base=0.05, cap=0.1))
    slept: list[float] = []
    monkeypatch.setattr(errors, "_sleep", slept.append)
    proxy.fail(None, 503, "SlowDown")
    with pytest.raises(StorageUnavailableError) as caught:
        store.write_bytes("x.bin", b"x")
    assert proxy.count("PUT") == 4 and caught.value.attempts == 4
    assert str(caught.value).startswith(f"write {bucket.url('out/x.bin')} failed after 4 attempts: SlowDown")
    caps = [0.05, 0.1, 0.1]  # base * 2**n, capped; full jitter: anywhere from 0 to the cap
    assert len(slept) == 3 and all(0 <= s <= cap for s, cap in zip(slept, caps))
    assert [RetryPolicy(base=0.2, cap=10).delay(n, rand=lambda: 1.0) for n in (1, 2, 3, 7)] == [0.2, 0.4, 0.8, 10]


# ---------------------------------------------------------------------------------------------
# Permanent errors fail fast


def test_a_missing_bucket_fails_fast_naming_the_url(s3_faults, caplog):
    bucket, proxy = s3_faults
    store = Store("s3://no-such-bucket-here/root", bucket.storage_options, retry=FAST)
    calls = {
        "read": lambda: store.read_bytes("a.jpg"),
        "write": lambda: store.write_bytes("a.jpg", b"x"),
        "list": lambda: list(store.list_files("persons")),
        "isdir": lambda: store.isdir("persons"),
    }
    for operation, call in calls.items():
        proxy.clear()
        started = time.perf_counter()
        with caplog.at_level(logging.WARNING, logger="vitonprep.storage"), pytest.raises(FileNotFoundError) as caught:
            call()
        assert isinstance(caught.value, StorageNotFoundError) and caught.value.attempts == 1
        assert len(proxy.requests) == 1, f"{operation}: {proxy.requests}"
        message = str(caught.value)
        assert message.startswith(f"{operation} s3://no-such-bucket-here/root"), message
        assert "bucket 'no-such-bucket-here' does not exist (NoSuchBucket)" in message
        assert time.perf_counter() - started < 2
    assert retries_logged(caplog) == []


def test_a_missing_key_is_a_file_not_found_error(s3_faults):
    bucket, proxy = s3_faults
    store = Store(bucket.url(), bucket.storage_options, retry=FAST)
    with pytest.raises(FileNotFoundError, match=r"read s3://.*/nope\.jpg failed: does not exist \(NoSuchKey\)"):
        store.read_bytes("nope.jpg")
    assert len(proxy.requests) == 1


def test_access_denied_fails_fast(s3_faults, caplog):
    bucket, proxy = s3_faults
    bucket.put("k.bin", b"x")
    store = Store(bucket.url(), bucket.storage_options, retry=FAST)
    proxy.fail(None, 403, "AccessDenied", "Access Denied")
    calls = {
        "read": lambda: store.read_bytes("k.bin"),
        "write": lambda: store.write_bytes("k.bin", b"y"),
        "list": lambda: list(store.list_files()),
        "exists": lambda: store.exists("k.bin"),
    }
    for operation, call in calls.items():
        proxy.requests.clear()
        with caplog.at_level(logging.WARNING, logger="vitonprep.storage"), pytest.raises(PermissionError) as caught:
            call()
        assert isinstance(caught.value, StoragePermissionError)
        assert len(proxy.requests) == 1, f"{operation}: {proxy.requests}"
        assert str(caught.value).startswith(f"{operation} {bucket.url()}") and "access denied" in str(caught.value)
    assert retries_logged(caplog) == []
    assert bucket.get("k.bin") == b"x"


# ---------------------------------------------------------------------------------------------
# Credentials never show


def test_credentials_never_appear_in_errors_logs_or_reprs(s3_faults, caplog):
    bucket, proxy = s3_faults
    options = {**bucket.storage_options, "key": FAKE_KEY_ID, "secret": FAKE_SECRET, "token": FAKE_TOKEN}
    store = Store(bucket.url("root"), options, retry=FAST)
    store.write_bytes("ok.bin", b"fine")  # the credentials work
    texts = [repr(store), repr(store.child("x"))]
    proxy.fail(2, 503, "SlowDown")
    proxy.fail(None, 403, "AccessDenied", f"denied for {FAKE_KEY_ID} secret={FAKE_SECRET}")
    with caplog.at_level(logging.DEBUG, logger="vitonprep.storage"):
        for call in (lambda: store.read_bytes("ok.bin"), lambda: store.write_bytes("y", b"1")):
            with pytest.raises(StorageError) as caught:
                call()
            error = caught.value
            texts += [str(error), repr(error), "".join(traceback.format_exception(error)), error.url]
    texts += [record.getMessage() for record in caplog.records]
    assert len(retries_logged(caplog)) == 2
    for text in texts:
        for secret in (FAKE_KEY_ID, FAKE_SECRET, FAKE_TOKEN):
            assert secret not in text, f"credential in {text!r}"


def test_redact_scrubs_credential_shapes_and_known_secrets():
    Store("memory://x", {"password": "hunter2-but-longer"})  # registers its secret values
    text = (
        "id AKIAIOSFODNN7EXAMPLE secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY "
        "aws_secret_access_key=abc123 token: 'xyz' https://user:pa55@host/path "
        f"session {'IQoJb3JpZ2luX2VjE' * 10} and hunter2-but-longer; keep s3://bucket/a/00034_00.jpg "
        "etag d41d8cd98f00b204e9800998ecf8427e"
    )
    clean = redact(text)
    for secret in ("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI", "abc123", "xyz", "pa55", "IQoJb3JpZ2lu", "hunter2"):
        assert secret not in clean, f"{secret} in {clean!r}"
    assert "s3://bucket/a/00034_00.jpg" in clean and "d41d8cd98f00b204e9800998ecf8427e" in clean


# ---------------------------------------------------------------------------------------------
# The flow, s3:// to s3://


@pytest.fixture
def secret_block(prefect_server, monkeypatch):
    """The test server's Secret block `s3-credentials` with the only credentials there are (the
    environment's are removed): a run can reach the bucket only through the block."""
    from prefect.blocks.system import Secret

    from tasks.infra.options import use_credentials

    Secret(value={"key": FAKE_KEY_ID, "secret": FAKE_SECRET}).save("s3-credentials", overwrite=True)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    clear_s3fs_caches()
    yield "s3-credentials"
    use_credentials({})
    clear_s3fs_caches()


@pytest.mark.slow
def test_the_preprocess_flow_runs_from_an_s3_catalog_to_an_s3_dataset(s3, samples_dir, secret_block):
    from flows.preprocess import preprocess
    from tasks.infra.options import use_credentials
    from tasks.records.manifest import read_run
    from vitonhd_models import contract

    options = s3.storage_options
    persons = sorted((samples_dir / "image").glob("*.jpg"))
    garments = sorted((samples_dir / "cloth").glob("*.jpg"))
    for path in persons:
        s3.put(f"catalog/persons/{path.name}", path.read_bytes())
    for path in garments:
        s3.put(f"catalog/garments/{path.name}", path.read_bytes())

    summary = preprocess(PreprocessConfig(catalog=s3.url("catalog"), out=s3.url("dataset"), storage_options=options, shard_size=2, storage_secret_block=secret_block))
    assert summary["persons"] == {"total": 4, "ok": 4, "error": 0}, summary["failed"]
    use_credentials({"key": FAKE_KEY_ID, "secret": FAKE_SECRET})  # to read the results back below
    assert summary["garments"] == {"total": 4, "ok": 4, "error": 0}, summary["failed"]
    keys = set(s3.keys("dataset/"))
    for path in persons:
        stem = path.stem
        for rel in (
            f"{contract.DIR_IMAGE}/{stem}.jpg",
            f"{contract.DIR_POSE_JSON}/{stem}_keypoints.json",
            f"{contract.DIR_POSE_IMG}/{stem}_rendered.png",
            f"{contract.DIR_PARSE}/{stem}.png",
            f"{contract.DIR_PARSE_AGNOSTIC}/{stem}.png",
            f"{contract.DIR_AGNOSTIC}/{stem}.jpg",
        ):
            assert f"dataset/test/{rel}" in keys, f"missing dataset/test/{rel}"
    for path in garments:
        for folder in (contract.DIR_CLOTH, contract.DIR_CLOTH_MASK):
            assert f"dataset/test/{folder}/{path.stem}.jpg" in keys, f"missing {folder}/{path.stem}.jpg"
    run_folder = f"dataset/manifests/test/run={summary['run_id']}/"
    parts = [k for k in keys if k.startswith(run_folder) and k.endswith(".parquet")]
    assert len(parts) == 5, parts  # 2 person shards + 2 garment shards + the persons' paired cloth
    for key in ("dataset/test/cloth/00034_00.jpg", "dataset/test/cloth-mask/00034_00.jpg"):
        assert key in keys, f"the paired cloth {key} HR-VITON reads is missing"
    rows = read_run(Store(s3.url("dataset"), options), "test", summary["run_id"]).to_pylist()
    assert len({(row["kind"], row["key"]) for row in rows}) == 8
    assert all(row["status"] == "ok" for row in rows)
    assert all(row["source_url"].startswith(s3.url("catalog/")) for row in rows if row.get("source_url"))
    pairs = s3.get("dataset/test_pairs.txt").decode().splitlines()
    assert len(pairs) == 4

    import pyarrow.parquet as pq

    texts = [json.dumps(summary, default=str), s3.get(f"{run_folder}summary.json").decode(), "\n".join(pairs)]
    texts += [json.dumps(pq.read_table(io.BytesIO(s3.get(part))).to_pylist(), default=str) for part in parts]
    texts += _prefect_logs_and_artifacts(summary["flow_run_id"])
    texts.append(json.dumps(_flow_run_parameters(summary["flow_run_id"]), default=str))
    for text in texts:
        for secret in (FAKE_KEY_ID, FAKE_SECRET):
            assert secret not in text


def _flow_run_parameters(flow_run_id: str) -> dict:
    """The run's parameters as the Prefect API keeps them."""
    from uuid import UUID

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(flow_run_id)).parameters


def _prefect_logs_and_artifacts(flow_run_id: str) -> list[str]:
    """The run's log messages and artifacts, as the Prefect API keeps them."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # send the queued log batches before reading them back
    with get_client(sync_client=True) as client:
        run_id = UUID(flow_run_id)
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    assert logs and artifacts, "the run left no logs or artifacts to check"
    return [log.message for log in logs] + [json.dumps(a.model_dump(mode="json")) for a in artifacts]


@pytest.mark.slow
def test_a_key_with_an_empty_segment_is_refused_and_the_bucket_it_names_is_never_read(s3, samples_dir, prefect_server):
    """S3 lists `persons//<other bucket>/key.jpg`; joined naively it names the other bucket's object."""
    from flows.preprocess import preprocess
    from tasks.records.manifest import read_run

    options = s3.storage_options
    photo = (samples_dir / "image" / "00034_00.jpg").read_bytes()
    other = f"{s3.name}-other"
    s3.client.create_bucket(Bucket=other)
    s3.client.put_object(Bucket=other, Key="key.jpg", Body=(samples_dir / "image" / "00121_00.jpg").read_bytes())
    s3.put("catalog/persons/00034_00.jpg", photo)
    s3.put(f"catalog/persons//{other}/key.jpg", b"this object is in the catalog")

    summary = preprocess(PreprocessConfig(catalog=s3.url("catalog"), out=s3.url("dataset"), storage_options=options), policy=RunPolicy(max_failed_fraction=1.0))

    rows = read_run(Store(s3.url("dataset"), options), "test", summary["run_id"]).to_pylist()
    unsafe = [(row["key"], row["stage"], row["error_code"]) for row in rows if row["key"] != "00034_00.jpg"]
    assert unsafe == [(f"/{other}/key.jpg", "ingest", "unsafe_key")], unsafe
    assert summary["persons"] == {"total": 2, "ok": 1, "error": 1}
    stem = next(row["stem"] for row in rows if row["key"] != "00034_00.jpg")
    assert not [key for key in s3.keys("dataset/") if stem in key], "the refused key left outputs"



# ---------------------------------------------------------------------------------------------
# Credentials are never flow parameters


@pytest.mark.parametrize(
    "options",
    [{"secret": "s"}, {"key": "k"}, {"token": "t"}, {"password": "p"}, {"session_token": "t"},
     {"client_kwargs": {"aws_secret_access_key": "s"}}, {"config_kwargs": {"x": {"credentials": "c"}}},
     {"account_key": "a"}],
    ids=repr,
)
def test_a_credential_in_storage_options_is_refused_with_where_to_put_it(options):
    from pydantic import ValidationError

    from tasks.records.config import TrainConfig
    from tasks.stages.registry import PreprocessConfig

    for make in (lambda: PreprocessConfig(catalog="c", out="o", storage_options=options),
                 lambda: TrainConfig(dataset="d", stage="gmm", out="o", storage_options=options)):
        with pytest.raises(ValidationError, match="must not carry credentials") as caught:
            make()
        assert "AWS_ACCESS_KEY_ID" in str(caught.value) and "Secret block" in str(caught.value)


def test_ordinary_storage_options_are_kept():
    from tasks.stages.registry import PreprocessConfig

    options = {"endpoint_url": "http://minio:9000", "profile": "catalog", "anon": False,
               "client_kwargs": {"region_name": "eu-west-1"}, "config_kwargs": {"retries": {"max_attempts": 3}}}
    assert PreprocessConfig(catalog="c", out="o", storage_options=options).storage_options == options


def test_the_cli_refuses_a_credential_option_before_anything_runs(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "preprocess", "--catalog", str(tmp_path), "--out", str(tmp_path / "o"),
         "--storage-option", "secret=hunter2-hunter2"],
        capture_output=True, text=True, timeout=300, check=False, cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "must not carry credentials (secret)" in result.stderr and "hunter2" not in result.stderr


@pytest.mark.slow
def test_a_prefect_server_refuses_a_deployment_run_whose_parameters_carry_a_credential(prefect_server):
    """Against a real server: the deployment's parameter schema keeps the run from being created, so the
    secret never reaches Prefect's database; read everything back to be sure."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.utilities.callables import parameter_schema

    from flows.preprocess import preprocess

    base = {"catalog": "s3://shop/catalog", "out": "s3://shop/dataset"}
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("preprocess")
        deployment = client.create_deployment(
            flow_id=flow_id, name="credential-test", entrypoint="flows.preprocess.preprocess",
            parameter_openapi_schema=parameter_schema(preprocess.fn).model_dump(), enforce_parameter_schema=True,
        )
        ok = client.create_flow_run_from_deployment(
            deployment, parameters={"config": {**base, "storage_options": {"endpoint_url": "http://minio:9000"}}})
        for options in ({"secret": FAKE_SECRET}, {"client_kwargs": {"aws_secret_access_key": FAKE_SECRET}}):
            with pytest.raises(PrefectHTTPStatusError, match="409"):
                client.create_flow_run_from_deployment(
                    deployment, parameters={"config": {**base, "storage_options": options}})
        stored = [run.parameters for run in client.read_flow_runs()]
    assert ok.parameters["config"]["storage_options"] == {"endpoint_url": "http://minio:9000"}
    assert FAKE_SECRET not in json.dumps(stored, default=str)



@pytest.mark.slow
def test_outputs_deleted_from_the_bucket_behind_the_manifests_back_are_made_again(s3, samples_dir, prefect_server):
    from flows.preprocess import preprocess
    from tasks.records.manifest import read_run

    s3.put("catalog/persons/00034_00.jpg", (samples_dir / "image" / "00034_00.jpg").read_bytes())
    s3.put("catalog/garments/04469_00.jpg", (samples_dir / "cloth" / "04469_00.jpg").read_bytes())
    first = preprocess(PreprocessConfig(catalog=s3.url("catalog"), out=s3.url("dataset"), storage_options=s3.storage_options))
    assert first["persons"]["ok"] == 1 and first["garments"]["ok"] == 1
    s3.client.delete_object(Bucket=s3.name, Key="dataset/test/agnostic-v3.2/00034_00.jpg")
    again = preprocess(PreprocessConfig(catalog=s3.url("catalog"), out=s3.url("dataset"), storage_options=s3.storage_options))
    rows = read_run(Store(s3.url("dataset"), s3.storage_options), "test", again["run_id"]).to_pylist()
    assert [(row["key"], row["stage"]) for row in rows] == [("00034_00.jpg", "agnostic")]
    assert "dataset/test/agnostic-v3.2/00034_00.jpg" in set(s3.keys("dataset/"))


@pytest.mark.slow
def test_a_bucket_that_refuses_writes_fails_the_shard_at_once_not_after_retries(s3, samples_dir, prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.preprocess import preprocess

    s3.put("catalog/garments/04469_00.jpg", (samples_dir / "cloth" / "04469_00.jpg").read_bytes())
    with FaultProxy(s3.endpoint) as proxy:
        proxy.fail(None, 403, "AccessDenied", "Access Denied",
                   when=lambda method, path: method == "PUT" and "/dataset/test/" in path)
        options = {**s3.storage_options, "endpoint_url": proxy.endpoint}
        state = preprocess(PreprocessConfig(catalog=s3.url("catalog"), out=s3.url("dataset"), storage_options=options), return_state=True)
    assert state.is_failed() and "AccessDenied" in state.message, state.message
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    assert [run.run_count for run in runs if run.name == "garment-00000"] == [1], "access denied is no transient error"
