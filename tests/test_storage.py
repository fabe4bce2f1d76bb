"""Storage: atomic writes, listings and local copies through fsspec."""

from __future__ import annotations

import errno
import os
import time
import uuid
from pathlib import Path

import pytest

from tasks.infra.errors import StorageNotFoundError
from tasks.infra.store import Store
from tasks.infra.weight_cache import local_file


def test_write_then_read_round_trips_through_file_urls(tmp_path):
    store = Store(f"file://{tmp_path}")
    store.write_bytes("a/b/c.bin", b"\x00\x01")
    assert store.read_bytes("a/b/c.bin") == b"\x00\x01"
    assert (tmp_path / "a/b/c.bin").read_bytes() == b"\x00\x01"
    assert store.url_of("a/b/c.bin") == f"file://{tmp_path}/a/b/c.bin"


def test_a_write_leaves_no_temporary_file_behind(tmp_path):
    store = Store(str(tmp_path))
    store.write_bytes("x/y.jpg", b"data")
    store.write_bytes("x/y.jpg", b"newer")
    assert sorted(os.listdir(tmp_path / "x")) == ["y.jpg"]
    assert store.read_bytes("x/y.jpg") == b"newer"


def test_a_failed_write_keeps_the_old_file_whole(tmp_path, monkeypatch):
    store = Store(str(tmp_path))
    store.write_bytes("f.txt", b"old")

    def broken_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", broken_replace)
    try:
        store.write_bytes("f.txt", b"new")
    except OSError:
        pass
    monkeypatch.undo()
    assert store.read_bytes("f.txt") == b"old"
    assert os.listdir(tmp_path) == ["f.txt"], "the temporary file was left behind"


def test_listing_recurses_skips_hidden_names_and_gives_relative_keys(tmp_path):
    store = Store(str(tmp_path))
    for rel in ("top.jpg", "sub/deep/a.png", ".hidden/b.jpg", "sub/.c.jpg.tmp"):
        store.write_bytes(rel, b"x")
    listed = {info.key: info.size for info in store.list_files()}
    assert listed == {"top.jpg": 1, "sub/deep/a.png": 1}


def test_listing_a_missing_folder_is_empty(tmp_path):
    assert list(Store(str(tmp_path)).list_files("nope")) == []


def test_remove_is_quiet_for_missing_files(tmp_path):
    store = Store(str(tmp_path))
    store.write_bytes("a.txt", b"x")
    store.remove("a.txt")
    store.remove("a.txt")
    assert not store.exists("a.txt")


def test_local_file_of_a_local_url_is_the_file_itself(tmp_path):
    (tmp_path / "w.pt").write_bytes(b"weights")
    assert local_file(f"file://{tmp_path}/w.pt") == f"{tmp_path}/w.pt"


def test_local_file_of_a_remote_url_is_a_cached_copy(tmp_path):
    # fsspec's in-memory filesystem stands for any remote protocol here.
    remote = Store("memory://models")
    remote.write_bytes("w.pt", b"weights")
    path = local_file("memory://models/w.pt", cache_dir=str(tmp_path))
    assert path.startswith(str(tmp_path)) and open(path, "rb").read() == b"weights"


def test_a_remote_weight_is_downloaded_once_per_version_and_the_replaced_copy_goes(s3, tmp_path):
    # Our rules, not fsspec's filecache (which rewrites one file per URL in place): see tasks.infra.weight_cache.
    from tests.s3 import FaultProxy

    with FaultProxy(s3.endpoint) as proxy:
        url, options, cache = s3.url("models/w.pt"), {"endpoint_url": proxy.endpoint}, str(tmp_path / "cache")
        s3.put("models/w.pt", b"first")
        first = local_file(url, options, cache_dir=cache)
        assert local_file(url, options, cache_dir=cache) == first
        assert proxy.count("GET", f"/{s3.name}/models/w.pt") == 1, "an unchanged object was downloaded again"
        s3.put("models/w.pt", b"other")  # the same size: only the ETag tells the versions apart
        second = local_file(url, options, cache_dir=cache)
        assert proxy.count("GET", f"/{s3.name}/models/w.pt") == 2
    assert second != first and Path(second).name == "w.pt" and Path(second).read_bytes() == b"other"
    assert not Path(first).exists(), "the copy of the replaced object should be gone"
    assert [p.name for p in Path(cache).rglob("*") if p.is_file()] == ["w.pt"], "a temporary file was left behind"


def test_remove_temporaries_deletes_only_what_interrupted_writes_left(tmp_path):
    store = Store(str(tmp_path))
    store.write_bytes("a/b.jpg", b"x")
    (tmp_path / "a" / f".b.jpg.{'0' * 32}.tmp").write_bytes(b"partial")
    (tmp_path / ".c.png.0123456789abcdef0123456789abcdef.tmp").write_bytes(b"partial")
    (tmp_path / "a" / ".notes.tmp").write_bytes(b"someone else's")
    assert store.remove_temporaries() == 2
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [".notes.tmp", "b.jpg"]
    assert store.remove_temporaries() == 0


def test_listing_order_is_files_first_then_subfolders_all_sorted(tmp_path):
    store = Store(str(tmp_path))
    for rel in ("sub-x/c.jpg", "sub/deep/a.png", "z.jpg", "sub/b.jpg", "a.jpg"):
        store.write_bytes(rel, b"x")
    assert [f.key for f in store.list_files()] == ["a.jpg", "z.jpg", "sub/b.jpg", "sub/deep/a.png", "sub-x/c.jpg"]


def test_a_missing_local_file_is_a_file_not_found_error_naming_the_operation(tmp_path):
    import pytest

    from tasks.infra.errors import StorageNotFoundError

    with pytest.raises(FileNotFoundError) as caught:
        Store(str(tmp_path)).read_bytes("nope.jpg")
    assert isinstance(caught.value, StorageNotFoundError)
    assert str(caught.value) == f"read file://{tmp_path}/nope.jpg failed: does not exist"


def test_the_fast_timestamp_parser_agrees_with_botocores():
    from botocore.utils import parse_timestamp as slow

    from tasks.infra.s3_listing import parse_timestamp

    for value in ("2026-01-02T03:04:05.000Z", "2026-01-02T03:04:05Z", "2026-01-02T03:04:05.123456Z",
                  "Fri, 02 Jan 2026 03:04:05 GMT", "1767323045"):  # fmt: skip
        assert parse_timestamp(value).timestamp() == slow(value).timestamp(), value


def test_a_secret_from_fsspecs_own_configuration_is_masked_in_messages(monkeypatch):
    """fsspec applies FSSPEC_S3_SECRET (its configuration) itself: the Store still knows to mask it."""
    import fsspec

    from tasks.infra.redaction import redact

    monkeypatch.setitem(fsspec.config.conf, "s3", {"key": "AKIDFROMCONFIG01", "secret": "secret-from-fsspec-config"})
    Store("s3://bucket/root")
    message = redact("denied for AKIDFROMCONFIG01 with secret-from-fsspec-config")
    assert "secret-from-fsspec-config" not in message and "AKIDFROMCONFIG01" not in message, message


# ---------------------------------------------------------------------------------------------
# Conditional writes: one winner decided by the storage (locally and on S3); check-then-act elsewhere


@pytest.fixture(params=["local", "s3", "memory"])
def any_store(request, tmp_path) -> Store:
    """A local root, a root on the S3 server, and fsspec's in-memory filesystem standing for every other."""
    if request.param == "local":
        return Store(str(tmp_path / "root"))
    if request.param == "memory":
        return Store(f"memory://conditional-{uuid.uuid4().hex}")
    bucket = request.getfixturevalue("s3")
    return Store(bucket.url("root"), bucket.storage_options)


def test_the_storage_decides_conditional_writes_locally_and_on_s3_only(any_store):
    assert any_store.conditional_writes == (any_store.is_local or any_store.is_s3)


def test_create_exclusive_writes_only_where_nothing_is(any_store):
    tag = any_store.create_exclusive("_work/lease.json", b"first")
    assert tag is not None and any_store.read_tagged("_work/lease.json") == (b"first", tag)
    assert any_store.create_exclusive("_work/lease.json", b"second") is None, "it overwrote an existing file"
    assert any_store.read_bytes("_work/lease.json") == b"first"


def test_replace_if_replaces_only_the_content_whose_tag_it_is_given(any_store):
    old = any_store.create_exclusive("lease.json", b"old")
    new = any_store.replace_if("lease.json", b"new", old)
    assert new is not None and new != old and any_store.read_tagged("lease.json") == (b"new", new)
    assert any_store.replace_if("lease.json", b"stale writer", old) is None, "a stale tag replaced newer content"
    assert any_store.read_bytes("lease.json") == b"new"
    any_store.remove("lease.json")
    assert any_store.replace_if("lease.json", b"gone", new) is None, "replace_if recreated a removed file"
    assert not any_store.exists("lease.json")


def test_remove_if_removes_only_the_content_whose_tag_it_is_given(any_store):
    old = any_store.create_exclusive("lease.json", b"old")
    new = any_store.replace_if("lease.json", b"new", old)
    assert not any_store.remove_if("lease.json", old), "a stale tag removed newer content"
    assert any_store.read_bytes("lease.json") == b"new"
    assert any_store.remove_if("lease.json", new) and not any_store.exists("lease.json")
    assert not any_store.remove_if("lease.json", new), "removing a missing file should say it removed nothing"


def test_a_missing_file_has_no_tag(any_store):
    with pytest.raises(StorageNotFoundError):
        any_store.read_tagged("nope.json")


def test_conditional_writes_leave_no_temporary_file_and_only_a_hidden_lock_beside_the_file(tmp_path):
    store = Store(str(tmp_path))
    tag = store.create_exclusive("_work/lease.json", b"one")
    assert store.create_exclusive("_work/lease.json", b"two") is None
    store.remove_if("_work/lease.json", store.replace_if("_work/lease.json", b"three", tag))
    assert sorted(os.listdir(tmp_path / "_work")) == [".lease.json.lock"]


def test_a_local_create_whose_temporary_vanished_before_its_link_writes_it_again(tmp_path, monkeypatch):
    # What a sweep removing it (a writer stalled for longer than the sweep's margin) looks like to the writer.
    store, real_link, calls = Store(str(tmp_path)), os.link, []

    def link_after_a_sweep(src, dst):
        calls.append(src)
        if len(calls) == 1:
            os.remove(src)
        return real_link(src, dst)

    monkeypatch.setattr(os, "link", link_after_a_sweep)
    assert store.create_exclusive("lease.json", b"whole") is not None
    assert len(calls) == 2 and store.read_bytes("lease.json") == b"whole"
    assert os.listdir(tmp_path) == ["lease.json"], "a temporary file was left behind"


def test_a_filesystem_without_hard_links_falls_back_to_check_then_write(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    store = Store(str(tmp_path))
    assert store.create_exclusive("lease.json", b"whole") is not None and store.read_bytes("lease.json") == b"whole"
    assert not store.conditional_writes, "the caller must learn that nothing was decided (and read back)"
    assert store.create_exclusive("lease.json", b"other") is None


def test_remove_temporaries_takes_only_those_last_modified_before_the_given_time(tmp_path):
    store, now = Store(str(tmp_path)), time.time()
    old, recent = tmp_path / f".a.jpg.{'a' * 32}.tmp", tmp_path / f".b.jpg.{'b' * 32}.tmp"
    for path, age in ((old, 600), (recent, 60)):
        path.write_bytes(b"partial")
        os.utime(path, (now - age, now - age))
    assert store.remove_temporaries(modified_before=now - 300) == 1
    assert not old.exists() and recent.exists()


def test_the_s3_listing_does_not_import_the_store():
    import ast

    from tasks.infra import s3_listing

    tree = ast.parse(Path(s3_listing.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert "tasks.infra.store" not in imported, "tasks.infra.store imports s3_listing: the circle is back"


def test_remove_temporaries_spares_those_of_the_named_file(tmp_path):
    store, old = Store(str(tmp_path)), time.time() - 600
    spared, other = tmp_path / "_work" / f".lease.json.{'a' * 32}.tmp", tmp_path / "_work" / f".plan.json.{'b' * 32}.tmp"
    for path in (spared, other):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"partial")
        os.utime(path, (old, old))
    assert store.remove_temporaries(spare="_work/lease.json") == 1
    assert spared.exists() and not other.exists()
