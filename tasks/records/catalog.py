"""Reading a catalog: where persons and garments live, their stems, who wears what, and shards.

Two layouts are accepted at a catalog root:
- ours: `persons/` and `garments/` (any depth) and an optional `pairs.csv` (`person,garment`);
- VITON-HD's: `image/` (persons) and `cloth/` (garments) and an optional `*_pairs.txt`.
"""

from __future__ import annotations

import bisect
import codecs
import csv
import hashlib
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from tasks.infra.store import Store
from vitonhd_models.contract import DIR_CLOTH, DIR_IMAGE, pairs_file_split
from vitonhd_models.pairs import parse_pairs

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
PERSON = "person"
GARMENT = "garment"

_UNSAFE = re.compile(r"[^a-z0-9_-]+")
STEM_HASH_CHARS = 10  # 40 bits of the key's sha256: enough to keep lossy stems apart
# A safe name is kept up to this length. Longer ones are cut and hashed: the longest output name
# (`<stem>_keypoints.json`), its temporary name (+38) and a try-on result (`<person>_<garment>.jpg`)
# then stay within the 255 bytes a file name may have.
MAX_KEPT_STEM = 100
CUT_STEM = 80


@dataclass(frozen=True)
class CatalogLayout:
    name: str  # "catalog" or "vitonhd"
    persons_dir: str
    garments_dir: str
    pairs_file: str | None  # relative to the catalog root


@dataclass(frozen=True, slots=True)
class CatalogItem:
    """One input photo. `key` is relative to its kind's folder; `stem` names every output."""

    kind: str
    key: str
    rel: str  # relative to the catalog root: the folder and the key
    url: str
    size: int
    stem: str
    modified: float | None = None  # epoch seconds, where the filesystem reports it
    etag: str | None = None


class CatalogError(ValueError):
    """The catalog as a whole is unusable (no persons/ or image/ folder, a malformed pairs file)."""


def detect_catalog_layout(store: Store) -> CatalogLayout:
    if store.isdir("persons") or store.isdir("garments"):
        pairs = "pairs.csv" if store.exists("pairs.csv") else None
        return CatalogLayout("catalog", "persons", "garments", pairs)
    if store.isdir(DIR_IMAGE) or store.isdir(DIR_CLOTH):
        candidates = [name for name in store.listdir() if pairs_file_split(name)]
        return CatalogLayout("vitonhd", DIR_IMAGE, DIR_CLOTH, candidates[0] if candidates else None)
    raise CatalogError(
        f"{store.url} is not a catalog: expected persons/ and garments/ (with an optional pairs.csv), "
        "or a VITON-HD-style root with image/ and cloth/"
    )


def stem_for_key(key: str) -> str:
    """A contract-safe, deterministic stem for a catalog key.

    `00034_00.jpg` keeps its name (`00034_00`), so VITON-HD's `split('_')[0]` naming still works.
    Anything else, and any name longer than `MAX_KEPT_STEM`, is made safe (lowercase, `[a-z0-9_-]`,
    no `image`, no dots, at most `CUT_STEM` characters) and, because that loses information,
    suffixed with a hash of the full key so two keys never share a stem.
    """
    base, ext = posixpath.splitext(key)
    safe = _UNSAFE.sub("-", base.lower().replace("/", "--")).strip("-")
    safe = safe.replace("image", "img") or "item"
    if safe == base and ext == ".jpg" and len(safe) <= MAX_KEPT_STEM:
        return safe
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:STEM_HASH_CHARS]
    return f"{safe[:CUT_STEM]}-{digest}"


def list_items(store: Store, layout: CatalogLayout, kind: str) -> Iterable[CatalogItem]:
    """Every image below the kind's folder (any depth), in a stable order. Keys that would leave the
    root are listed too (the planner refuses them, so they get an error row, never a read)."""
    folder = layout.persons_dir if kind == PERSON else layout.garments_dir
    for info in store.list_files(folder):
        if not info.key.lower().endswith(IMAGE_EXTENSIONS):
            continue
        yield CatalogItem(
            kind=kind,
            key=info.key,
            rel=f"{folder}/{info.key}",  # never posixpath.join: an absolute key would replace the folder
            url=info.url,
            size=info.size,
            stem=stem_for_key(info.key),
            modified=info.modified,
            etag=info.etag,
        )


def stem_collisions(stems: Mapping[str, str], owners: Mapping[str, str]) -> dict[str, str]:
    """key -> why it cannot run, for the keys of one kind (`stems`: key -> stem) that share a stem.

    The key that already holds the stem in the dataset (`owners`: stem -> key) keeps it; every other
    key with that stem is refused (all of them, when none holds it yet).
    """
    by_stem: dict[str, list[str]] = {}
    for key, stem in stems.items():
        by_stem.setdefault(stem, []).append(key)
    refused = {}
    for stem, keys in by_stem.items():
        if len(keys) < 2:
            continue
        for key in keys:
            if owners.get(stem) == key:
                continue
            others = ", ".join(repr(other) for other in keys if other != key)
            refused[key] = f"its output name {stem!r} is also the name of {others}: rename one of them"
    return refused


PAIRS_DELIMITERS = (",", ";", "\t")  # what spreadsheets write: comma, semicolon (European locales), tab


def decode_text(data: bytes, name: str) -> str:
    """The text of a file a spreadsheet or an editor saved: UTF-8 with or without a BOM, UTF-16 with a
    BOM ("Unicode text"), else Windows-1252 (a superset of Latin-1's printable characters)."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as error:
            raise CatalogError(f"{name}: not readable as the UTF-16 its byte order mark says: {error}") from None
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def read_worn_pairs(store: Store, layout: CatalogLayout) -> list[tuple[str, str]]:
    """(person key, garment key) for each person wearing a known garment, from the pairs file.

    Without a pairs file, a VITON-HD root pairs `image/X.jpg` with `cloth/X.jpg` (its convention);
    our layout then has no pairs. Blank lines are skipped; anything else that is not a pair raises a
    CatalogError naming the file and the line, before a single image is processed.
    """
    if layout.pairs_file is None:
        return []
    name = layout.pairs_file
    text = decode_text(store.read_bytes(name), name)
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if "\x00" in line:
            raise CatalogError(f"{name}:{number}: holds a NUL byte; this is not a text file")
    if layout.name == "catalog":
        return _read_pairs_csv(lines, name)
    try:  # a VITON-HD root's own pairs file, read as its loaders read it (any image names)
        return parse_pairs(text, name, extension=None)
    except ValueError as error:
        raise CatalogError(str(error)) from None


def _read_pairs_csv(lines: list[str], name: str) -> list[tuple[str, str]]:
    numbered = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    header_number, header = numbered[0] if numbered else (1, "")
    delimiter = next((d for d in PAIRS_DELIMITERS if d in header), ",")
    if [field.strip().lower() for field in header.split(delimiter)][:2] != ["person", "garment"]:
        raise CatalogError(f"{name}:{header_number}: the first line must be the header 'person,garment', "
                           f"got {header[:80]!r}")
    pairs = []
    for number, line in numbered[1:]:
        try:
            fields = next(csv.reader([line], delimiter=delimiter))
        except csv.Error as error:
            raise CatalogError(f"{name}:{number}: not a CSV row ({error}): {line[:80]!r}") from None
        person, garment = (fields + ["", ""])[:2]
        if not person.strip() or not garment.strip():
            raise CatalogError(f"{name}:{number}: expected 'person{delimiter}garment', got {line[:80]!r}")
        pairs.append((person.strip(), garment.strip()))
    return pairs


def plan_shards(items: Sequence[CatalogItem], shard_size: int) -> list[list[CatalogItem]]:
    """Consecutive runs of `shard_size` items, in the listing order."""
    if shard_size < 1:
        raise ValueError("shard_size must be at least 1")
    return [list(items[start : start + shard_size]) for start in range(0, len(items), shard_size)]


def _ring_position(stem: str) -> int:
    return int.from_bytes(hashlib.sha256(stem.encode("utf-8")).digest()[:8], "big")


def unworn_pairs(person_stems: Sequence[str], garment_stems: Sequence[str], worn: dict[str, str]) -> list[tuple[str, str]]:
    """Each person with a garment they do not wear, as the VITON-HD test split does.

    Deterministic, and stable as the catalog grows: the garments sit on a ring in the order of their
    stems' hashes, and a person takes the first garment after their own stem's hash (the one after that
    when it is what they wear). A new garment changes the pair of about one person in n (n garments):
    a nightly run rewrites few pairs and few paired cloths (`tasks.engine.paired_cloth`), not all of them.
    """
    garments = sorted(set(garment_stems), key=lambda stem: (_ring_position(stem), stem))
    if not garments:
        return []
    positions = [_ring_position(stem) for stem in garments]
    result = []
    for person in sorted(person_stems):
        start = bisect.bisect_right(positions, _ring_position(person))
        for step in range(len(garments)):
            garment = garments[(start + step) % len(garments)]
            if garment != worn.get(person) or len(garments) == 1:
                break
        result.append((person, garment))
    return result


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an item gets an error row without being read. Its outputs are removed, unless they are
    another item's (a key whose stem another key already holds)."""

    code: str
    message: str
    remove_outputs: bool = True


@dataclass(frozen=True, slots=True)
class WorkItem:
    """An item a run processes: the stages it runs whatever happens upstream, and what it was before."""

    item: CatalogItem
    stages: frozenset[str]
    verify_content: bool = False  # the listing changed but the fingerprint did not: ingest checks the hash
    previous_sha256: str | None = None
    previous_fit: str | None = None  # how ingest placed the photo last time (JSON), for the pose stage
    refusal: Refusal | None = None
    missing: frozenset[str] = frozenset()  # planned because their outputs are gone from the dataset

    @property
    def stem(self) -> str:
        return self.item.stem

    @property
    def kind(self) -> str:
        return self.item.kind
