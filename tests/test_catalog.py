"""The catalog: layouts, stems, pairs and shards."""

from __future__ import annotations

import re

import pytest

from tasks.infra.store import Store
from tasks.records.catalog import (
    GARMENT,
    PERSON,
    CatalogError,
    detect_catalog_layout,
    list_items,
    plan_shards,
    read_worn_pairs,
    stem_collisions,
    stem_for_key,
    unworn_pairs,
)

SAFE_STEM = re.compile(r"^[a-z0-9_-]+$")


def make_catalog(root, files: dict[str, bytes]) -> Store:
    store = Store(str(root))
    for rel, data in files.items():
        store.write_bytes(rel, data)
    return store


def test_vitonhd_names_keep_their_stem():
    assert stem_for_key("00034_00.jpg") == "00034_00"


@pytest.mark.parametrize(
    "key",
    ["a/b.JPG", "image_01.jpg", "x.png", "My Photo.v2.jpeg", "persons/Image/IMG.webp", "über/шуба.jpg", ".jpg"],
)
def test_stems_are_contract_safe(key):
    stem = stem_for_key(key)
    assert SAFE_STEM.match(stem), f"{key!r} -> {stem!r} has unsafe characters"
    assert "image" not in stem, f"{key!r} -> {stem!r} contains 'image' (HR-VITON's loader replaces it)"
    assert "." not in stem


def test_stems_are_deterministic_and_distinct_for_lossy_keys():
    keys = ["x.jpg", "x.png", "X.jpg", "a/b.jpg", "a-b.jpg", "a--b.jpg"]
    stems = [stem_for_key(k) for k in keys]
    assert stems == [stem_for_key(k) for k in keys]
    assert len(set(stems)) == len(keys), f"collision among {dict(zip(keys, stems))}"


def test_detects_our_layout_and_lists_nested_images_only(tmp_path):
    store = make_catalog(
        tmp_path,
        {
            "persons/a/p1.jpg": b"1",
            "persons/p2.PNG": b"2",
            "persons/notes.txt": b"x",
            "persons/.hidden.jpg": b"x",
            "garments/g1.webp": b"3",
            "pairs.csv": b"person,garment\na/p1.jpg,g1.webp\n",
        },
    )
    layout = detect_catalog_layout(store)
    assert (layout.name, layout.pairs_file) == ("catalog", "pairs.csv")
    persons = list(list_items(store, layout, PERSON))
    assert [p.key for p in persons] == ["p2.PNG", "a/p1.jpg"], "expected a folder's files before its subfolders"
    assert {p.rel for p in persons} == {"persons/a/p1.jpg", "persons/p2.PNG"}
    assert [g.key for g in list_items(store, layout, GARMENT)] == ["g1.webp"]
    assert read_worn_pairs(store, layout) == [("a/p1.jpg", "g1.webp")]


def test_detects_vitonhd_layout_with_its_pairs_file(tmp_path):
    store = make_catalog(
        tmp_path, {"image/00001_00.jpg": b"1", "cloth/00001_00.jpg": b"2", "test_pairs.txt": b"00001_00.jpg 00001_00.jpg\n"}
    )
    layout = detect_catalog_layout(store)
    assert (layout.name, layout.persons_dir, layout.garments_dir, layout.pairs_file) == (
        "vitonhd", "image", "cloth", "test_pairs.txt",
    )
    assert read_worn_pairs(store, layout) == [("00001_00.jpg", "00001_00.jpg")]


def test_a_folder_without_either_layout_is_rejected(tmp_path):
    store = make_catalog(tmp_path, {"photos/a.jpg": b"1"})
    with pytest.raises(CatalogError, match="persons/ and garments/"):
        detect_catalog_layout(store)


def test_pairs_csv_needs_its_header(tmp_path):
    store = make_catalog(tmp_path, {"persons/a.jpg": b"1", "pairs.csv": b"a.jpg,g.jpg\n"})
    with pytest.raises(CatalogError, match="person,garment"):
        read_worn_pairs(store, detect_catalog_layout(store))


def test_shards_cover_every_item_once_in_order():
    items = list(range(10))
    shards = plan_shards(items, 4)
    assert shards == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_keys_sharing_a_stem_are_refused_and_the_rest_are_not():
    hashed = stem_for_key("A.jpg")  # "a-<hash>": a file can be named exactly that
    stems = {"A.jpg": hashed, f"{hashed}.jpg": stem_for_key(f"{hashed}.jpg"), "b.jpg": "b"}
    assert stems["A.jpg"] == stems[f"{hashed}.jpg"]
    refused = stem_collisions(stems, owners={})
    assert set(refused) == {"A.jpg", f"{hashed}.jpg"}, "neither holds the name yet: both are refused"
    assert "rename one of them" in refused["A.jpg"] and repr(f"{hashed}.jpg") in refused["A.jpg"]


def test_the_key_that_already_holds_a_stem_keeps_it():
    stems = {"A.jpg": "a-1", "a-1.jpg": "a-1"}
    assert set(stem_collisions(stems, owners={"a-1": "A.jpg"})) == {"a-1.jpg"}


def test_test_pairs_never_give_a_person_what_they_wear():
    persons = ["p1", "p2", "p3"]
    garments = ["g1", "g2", "g3"]
    worn = {"p1": "g2", "p2": "g3", "p3": "g1"}
    pairs = unworn_pairs(persons, garments, worn)
    assert [p for p, _ in pairs] == persons
    assert all(worn[p] != g for p, g in pairs), pairs
    assert pairs == unworn_pairs(list(reversed(persons)), garments, worn), "not deterministic"


def test_a_new_garment_changes_few_test_pairs():
    persons = [f"p{i:04d}" for i in range(1000)]
    garments = [f"g{i:03d}" for i in range(100)]
    before = dict(unworn_pairs(persons, garments, {}))
    after = dict(unworn_pairs(persons, [*garments, "g-new"], {}))
    changed = [person for person in persons if before[person] != after[person]]
    assert all(after[person] == "g-new" for person in changed), "a pair moved to an old garment"
    assert len(changed) <= 60, f"{len(changed)} of 1000 test pairs changed for one new garment of 101"
    assert len(set(after.values())) > 60, "the persons are not spread over the garments"


def test_a_long_name_gets_a_stem_every_output_name_can_hold():
    key = "a" * 236 + ".jpg"  # a legal file name of 240 bytes
    stem = stem_for_key(key)
    assert len(stem) <= 100 and stem != stem_for_key("a" * 235 + ".jpg")
    longest = f".{stem}_keypoints.json.{'0' * 32}.tmp"  # its longest output's temporary name
    assert len(longest.encode()) <= 255 and len(f"{stem}_{stem}.jpg") <= 255


def test_a_vitonhd_name_of_ordinary_length_is_kept():
    assert stem_for_key("a" * 100 + ".jpg") == "a" * 100


def pairs_from(tmp_path, data: bytes) -> list[tuple[str, str]]:
    store = make_catalog(tmp_path, {"persons/a.jpg": b"1", "pairs.csv": data})
    return read_worn_pairs(store, detect_catalog_layout(store))


@pytest.mark.parametrize(
    "data",
    [
        "\ufeffperson,garment\r\nmodèle.jpg,robe.jpg\r\n\r\nb.jpg,g.jpg\r\n".encode("utf-8"),  # Excel "CSV UTF-8"
        "person,garment\nmodèle.jpg,robe.jpg\n\nb.jpg,g.jpg\n".encode("cp1252"),  # Excel "CSV" on Windows
        "person;garment\nmodèle.jpg;robe.jpg\nb.jpg;g.jpg\n".encode("cp1252"),  # European locales: semicolons
        "person\tgarment\r\nmodèle.jpg\trobe.jpg\r\nb.jpg\tg.jpg\r\n".encode("utf-16"),  # "Unicode text"
        "Person , Garment\n\n  modèle.jpg , robe.jpg \n\n\nb.jpg,g.jpg\n".encode("utf-8"),
    ],
    ids=["utf8-bom-crlf", "cp1252", "semicolons", "utf16-tabs", "spaces-blank-lines"],
)
def test_a_pairs_file_a_spreadsheet_saved_is_read(tmp_path, data):
    assert pairs_from(tmp_path, data) == [("modèle.jpg", "robe.jpg"), ("b.jpg", "g.jpg")]


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (b"person,garment\na.jpg,g.jpg\nonly-one-column.jpg\n", 3),
        (b"person,garment\na.jpg,g.jpg\n\nb.jpg,\n", 4),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01", 1),  # a JPEG saved as pairs.csv
        (b"", 1),
    ],
    ids=["one-column", "empty-garment", "binary", "empty-file"],
)
def test_a_pairs_file_that_is_not_one_names_the_file_and_the_line(tmp_path, data, line):
    with pytest.raises(CatalogError, match=rf"pairs\.csv:{line}:"):
        pairs_from(tmp_path, data)
