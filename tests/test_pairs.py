"""The dataset's pairs (`tasks.engine.pairs`): who wears what, the split's pairs and `<split>_pairs.txt`."""

from __future__ import annotations

from pathlib import Path

from tasks.engine.pairs import pairs_of, write_pairs
from tasks.infra.store import Store
from tasks.records.catalog import GARMENT, PERSON, CatalogLayout, unworn_pairs

CATALOG = CatalogLayout("catalog", "persons", "garments", "pairs.csv")
VITONHD = CatalogLayout("vitonhd", "image", "cloth", None)
OK = {PERSON: {"persons/ann.jpg": "ann", "persons/bob.jpg": "bob"},
      GARMENT: {"garments/red.jpg": "red", "garments/blue.jpg": "blue"}}


def test_train_pairs_each_person_with_what_the_catalog_says_they_wear():
    worn, pairs = pairs_of("train", CATALOG, [("persons/ann.jpg", "garments/red.jpg")], OK)
    assert worn == {"ann": "red"}
    assert pairs == [("ann", "red")]


def test_worn_pairs_of_items_the_dataset_lacks_are_dropped():
    worn, pairs = pairs_of("train", CATALOG, [("persons/ann.jpg", "garments/gone.jpg"),
                                              ("persons/gone.jpg", "garments/red.jpg")], OK)
    assert (worn, pairs) == ({}, [])


def test_the_vitonhd_release_without_a_pairs_file_pairs_the_same_names():
    ok = {PERSON: {"image/00001_00.jpg": "00001_00", "image/00002_00.jpg": "00002_00"},
          GARMENT: {"cloth/00001_00.jpg": "00001_00"}}
    assert pairs_of("train", VITONHD, [], ok) == ({"00001_00": "00001_00"}, [("00001_00", "00001_00")])


def test_test_pairs_each_person_with_a_garment_they_do_not_wear():
    worn, pairs = pairs_of("test", CATALOG, [("persons/ann.jpg", "garments/red.jpg")], OK)
    assert pairs == unworn_pairs(["ann", "bob"], ["red", "blue"], worn)
    assert dict(pairs)["ann"] == "blue"


def test_write_pairs_writes_the_contract_names_and_leaves_an_unchanged_file_alone(tmp_path: Path, monkeypatch):
    out = Store(str(tmp_path))
    write_pairs(out, "test", [("ann", "blue"), ("bob", "red")])
    assert (tmp_path / "test_pairs.txt").read_text() == "ann.jpg blue.jpg\nbob.jpg red.jpg\n"

    def no_write(*args):
        raise AssertionError("an unchanged pairs file is rewritten")

    monkeypatch.setattr(out, "write_text", no_write)
    write_pairs(out, "test", [("ann", "blue"), ("bob", "red")])
