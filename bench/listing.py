"""Benchmark: list and plan a catalog of 100,000 keys on an S3-protocol server (moto, on loopback).

    .venv/bin/python bench/listing.py [--keys 100000] [--folders 100] [--shard-size 64]
                                      [--page-size 1000] [--no-tracemalloc]

A moto server (`ThreadedMotoServer` on 127.0.0.1) runs in a subprocess with `--keys` small objects
under `catalog/persons/<folder>/`, put straight into its backend (HTTP PUTs to moto take ~20 ms
each); every listing goes over HTTP to it. moto's generic response serializer needs ~0.5 ms per
listed key, so by default the server answers ListObjectsV2 with the same XML written directly
(`--moto-serializer` keeps moto's own). Each variant then runs in a fresh subprocess, so that its
ru_maxrss delta is its own:

- `fs.find`: s3fs's `find(detail=True)`, the whole listing in one dict, then items and `plan_shards`;
- `list -> plan_shards`: the project's `list_items` (streamed, paginated `Store.list_files`) collected
  into a list and cut by `tasks.records.catalog.plan_shards` (a planner that needs the whole list);
- `streamed shards`: the same `list_items` generator cut into shards of `--shard-size` as it streams,
  each shard handed on and dropped: memory bounded by one listing page plus one shard.

Each variant runs twice: once for seconds, keys/s, client CPU and ru_maxrss (no tracing), once under
tracemalloc for the peak of Python allocations (tracing slows the client, so its seconds are not used).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import socket
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BUCKET = "vitonprep-bench"
CATALOG = f"s3://{BUCKET}/catalog"
VARIANTS = {
    "find": "fs.find (materialise all)",
    "list": "list_items -> list -> plan_shards",
    "stream": "list_items -> streamed shards",
    "plan": "the flow's planner (first run)",
}
ENV = {"AWS_ACCESS_KEY_ID": "vitonprep-bench-key", "AWS_SECRET_ACCESS_KEY": "vitonprep-bench-secret",
       "AWS_DEFAULT_REGION": "us-east-1", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------------------------------
# The server (a subprocess)


def fast_list_xml() -> None:
    """Make moto answer ListObjectsV2 with hand-written XML.

    moto builds every response with a generic, model-driven serializer: ~0.5 ms per listed key, so
    one 1,000-key page costs the server half a second and 100,000 keys minutes of server time, which
    would drown what the benchmark is about (the client). This writes the same document S3 sends
    (the same fields moto fills in), straight from moto's own result; clients still parse real XML.
    """
    from xml.sax.saxutils import escape

    from moto.s3.responses import S3Response

    original = S3Response.serialized

    def serialized(self, action_result):
        result = getattr(action_result, "result", None)
        if self.data.get("Action") != "ListObjectsV2" or not isinstance(result, dict):
            return original(self, action_result)

        def tag(name, value):
            if isinstance(value, bool):
                value = "true" if value else "false"
            return f"<{name}>{escape(str(value))}</{name}>"

        parts = [
            '<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        ]
        for name in ("Name", "Prefix", "MaxKeys", "KeyCount", "IsTruncated", "Delimiter", "EncodingType",
                     "NextContinuationToken", "StartAfter"):  # fmt: skip
            if name in result:
                parts.append(tag(name, result[name]))
        for item in result.get("Contents", []):
            fields = "".join(tag(name, item[name]) for name in ("Key", "LastModified", "ETag", "Size", "StorageClass"))
            parts.append(f"<Contents>{fields}</Contents>")
        for common in result.get("CommonPrefixes", []):
            parts.append(f"<CommonPrefixes>{tag('Prefix', common['Prefix'])}</CommonPrefixes>")
        parts.append("</ListBucketResult>")
        headers = {"Content-Type": "application/xml", **self.response_headers}
        return 200, headers, "".join(parts)

    S3Response.serialized = serialized


def serve(keys: int, folders: int, fast: bool) -> None:
    """Start moto on 127.0.0.1, fill the bucket, say READY, serve until stdin closes."""
    import boto3
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    if fast:
        fast_list_xml()
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    per_folder = -(-keys // folders)
    for index in range(keys):
        backend.put_object(BUCKET, f"catalog/persons/f{index // per_folder:04d}/{index:07d}.jpg", b"jpeg")
    backend.put_object(BUCKET, "catalog/garments/g.jpg", b"jpeg")
    print(f"READY {endpoint} {time.perf_counter() - started:.1f}", flush=True)
    sys.stdin.read()
    server.stop()


# ---------------------------------------------------------------------------------------------
# The variants (each in its own subprocess)


def stream_shards(items: Iterable, shard_size: int) -> Iterator[list]:
    """Consecutive runs of `shard_size` items as the listing streams in (bench helper)."""
    iterator = iter(items)
    while shard := list(islice(iterator, shard_size)):
        yield shard


def run_variant(name: str, endpoint: str, shard_size: int, page_size: int) -> tuple[int, int]:
    """(items, shards) of one way to list and plan the catalog's persons."""
    from tasks.infra.store import Store
    from tasks.records import catalog as cat

    options = {"endpoint_url": endpoint}
    if name == "find":
        import s3fs

        fs = s3fs.S3FileSystem(**options)
        found = fs.find(f"{BUCKET}/catalog/persons", detail=True)  # dict of every key
        prefix = f"{BUCKET}/catalog/persons/"
        items = [
            cat.CatalogItem(
                kind=cat.PERSON,
                key=path[len(prefix) :],
                rel=path[len(f"{BUCKET}/catalog/") :],
                url=f"s3://{path}",
                size=info["size"],
                stem=cat.stem_for_key(path[len(prefix) :]),
            )
            for path, info in sorted(found.items())
            if path.lower().endswith(cat.IMAGE_EXTENSIONS)
        ]
        return len(items), len(cat.plan_shards(items, shard_size))
    store = Store(CATALOG, options)
    layout = cat.detect_catalog_layout(store)
    original = store.list_files
    store.list_files = lambda folder="", page_size_=page_size: original(folder, page_size=page_size_)  # type: ignore[method-assign]
    if name == "plan":
        from tasks.engine.plan import plan_catalog, refuse_collisions
        from tasks.records.config import Selection
        from tasks.stages.model_cache import Weights
        from tasks.stages.registry import PreprocessConfig, stage_fingerprints

        fingerprints = stage_fingerprints(PreprocessConfig(catalog=CATALOG, out=f"s3://{BUCKET}/dataset"), Weights())
        listed, works = plan_catalog(
            {cat.PERSON: cat.list_items(store, layout, cat.PERSON)}, {}, fingerprints, Selection()
        )
        works = refuse_collisions(listed, works, {})
        return len(works[cat.PERSON]), len(cat.plan_shards(works[cat.PERSON], shard_size))
    if name == "list":
        items = list(cat.list_items(store, layout, cat.PERSON))
        return len(items), len(cat.plan_shards(items, shard_size))
    count = shards = 0
    for shard in stream_shards(cat.list_items(store, layout, cat.PERSON), shard_size):
        count += len(shard)  # a flow would submit the shard here and let it go
        shards += 1
    return count, shards


def measure(name: str, endpoint: str, shard_size: int, page_size: int, trace: bool) -> None:
    import s3fs  # noqa: F401 - imports are not what we measure

    import tasks.infra.store  # noqa: F401

    rss_before, cpu_before = maxrss_mib(), cpu_seconds()
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    items, shards = run_variant(name, endpoint, shard_size, page_size)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 2**20 if trace else None
    print(json.dumps({
        "items": items, "shards": shards, "seconds": seconds, "cpu": cpu_seconds() - cpu_before,
        "rss_delta": maxrss_mib() - rss_before, "peak": peak,
    }))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The driver


def child(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--folders", type=int, default=100, help="persons/ subfolders the keys spread over")
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--page-size", type=int, default=1000, help="keys per list request (S3's maximum)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated: {','.join(VARIANTS)}")
    parser.add_argument("--no-tracemalloc", action="store_true", help="skip the tracemalloc runs")
    parser.add_argument("--moto-serializer", action="store_true", help="moto's own (slow) ListObjectsV2 XML")
    parser.add_argument("mode", nargs="?", default="bench", choices=["bench", "_serve", "_measure"])
    parser.add_argument("--variant", default="stream")
    parser.add_argument("--endpoint", default="")
    parser.add_argument("--trace", action="store_true")
    args = parser.parse_args()
    os.environ.update(ENV)
    if args.mode == "_serve":
        return serve(args.keys, args.folders, not args.moto_serializer)
    if args.mode == "_measure":
        return measure(args.variant, args.endpoint, args.shard_size, args.page_size, args.trace)

    env = {**os.environ, **ENV}
    server = subprocess.Popen(
        child("_serve", "--keys", str(args.keys), "--folders", str(args.folders),
              *(["--moto-serializer"] if args.moto_serializer else [])),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        ready = server.stdout.readline().split()
        if not ready or ready[0] != "READY":
            raise SystemExit("the moto server did not start")
        endpoint, fill_seconds = ready[1], float(ready[2])
        xml = "moto's serializer" if args.moto_serializer else "fast ListObjectsV2 XML"
        print(
            f"moto server {endpoint} ({xml}): {args.keys:,} keys in {args.folders} folders, "
            f"filled in {fill_seconds:.1f} s"
        )
        print(f"shard size {args.shard_size}, page size {args.page_size}, python {sys.version.split()[0]}\n")
        rows = []
        for name in args.variants.split(","):
            common = ["_measure", "--variant", name, "--endpoint", endpoint, "--shard-size", str(args.shard_size),
                      "--page-size", str(args.page_size)]  # fmt: skip
            timed = json.loads(
                subprocess.run(child(*common), capture_output=True, text=True, env=env, check=True).stdout
            )
            traced = None
            if not args.no_tracemalloc:
                out = subprocess.run(child(*common, "--trace"), capture_output=True, text=True, env=env, check=True)
                traced = json.loads(out.stdout)
            rows.append((name, timed, traced))
            print(f"  {VARIANTS[name]}: {timed['seconds']:.1f} s", file=sys.stderr, flush=True)
    finally:
        server.stdin.close()
        server.wait(timeout=60)

    header = f"{'variant':<36} {'items':>8} {'shards':>7} {'seconds':>8} {'keys/s':>8} {'client CPU s':>12} " \
             f"{'tracemalloc peak MiB':>20} {'ru_maxrss delta MiB':>19}"  # fmt: skip
    print(header)
    print("-" * len(header))
    for name, timed, traced in rows:
        peak = f"{traced['peak']:.1f}" if traced else "-"
        print(
            f"{VARIANTS[name]:<36} {timed['items']:>8,} {timed['shards']:>7,} {timed['seconds']:>8.1f} "
            f"{timed['items'] / timed['seconds']:>8,.0f} {timed['cpu']:>12.1f} {peak:>20} {timed['rss_delta']:>19.1f}"
        )


if __name__ == "__main__":
    main()
