"""Every person gets the paired cloth HR-VITON reads under the person's own name (`tasks.engine.paired_cloth`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tasks.infra.store import Store
from tasks.records.config import RunPolicy, Selection
from tasks.records.manifest import read_current, read_run
from tasks.stages.registry import PreprocessConfig

pytestmark = pytest.mark.slow

PERSONS = ("00034_00.jpg", "00121_00.jpg")
GARMENTS = ("04469_00.jpg", "09163_00.jpg")


def run(catalog: Path, out: Path, max_failed_fraction: float = 0.1, prefix: str = "", **options) -> dict:
    from flows.preprocess import preprocess

    config = PreprocessConfig(catalog=str(catalog), out=str(out), **options)
    return preprocess(config, selection=Selection(prefix=prefix),
                      policy=RunPolicy(max_failed_fraction=max_failed_fraction))


def our_catalog(root: Path, samples: Path, pairs: str | None) -> Path:
    """persons/ and garments/ with new names (no stem is shared), and a pairs.csv when given."""
    catalog = root / "catalog"
    for folder, names, kind, prefix in (("image", PERSONS, "persons", "model"), ("cloth", GARMENTS, "garments", "top")):
        (catalog / kind).mkdir(parents=True)
        for index, name in enumerate(names):
            shutil.copy2(samples / folder / name, catalog / kind / f"{prefix}-{index}.jpg")
    if pairs is not None:
        (catalog / "pairs.csv").write_text(pairs)
    return catalog


def paired_rows(out: Path, split: str) -> dict[str, dict]:
    current = read_current(Store(str(out)), split).to_pylist()
    return {row["key"]: {**row, "details": json.loads(row["details"])} for row in current
            if row["stage"] == "paired_cloth"}


def same_file(out: Path, split: str, folder: str, person: str, garment: str) -> bool:
    return (out / split / folder / f"{person}.jpg").read_bytes() == (out / split / folder / f"{garment}.jpg").read_bytes()


@pytest.fixture(scope="module")
def train_run(samples_dir, tmp_path_factory, prefect_server):
    root = tmp_path_factory.mktemp("paired-train")
    catalog = our_catalog(root, samples_dir, "person,garment\nmodel-0.jpg,top-1.jpg\n")
    out = root / "dataset"
    return catalog, out, run(catalog, out, split="train")


def test_a_person_wearing_a_garment_gets_it_under_their_own_name(train_run):
    _, out, summary = train_run
    assert same_file(out, "train", "cloth", "model-0", "top-1"), "cloth/model-0.jpg is not top-1's cloth"
    assert same_file(out, "train", "cloth-mask", "model-0", "top-1"), "cloth-mask/model-0.jpg is not top-1's mask"
    assert (out / "train_pairs.txt").read_text() == "model-0.jpg top-1.jpg\n"
    assert summary["paired_cloth"]["worn"] == 1 and summary["paired_cloth"]["copied"] == 2


def test_the_manifest_says_which_garment_and_why(train_run):
    _, out, _ = train_run
    rows = paired_rows(out, "train")
    assert rows["model-0.jpg"]["details"] == {"paired": "worn", "garment": "top-1.jpg", "garment_stem": "top-1"}
    assert rows["model-0.jpg"]["outputs"] == ["train/cloth/model-0.jpg", "train/cloth-mask/model-0.jpg"]
    assert rows["model-1.jpg"]["details"]["paired"] == "none" and rows["model-1.jpg"]["outputs"] == []
    assert not (out / "train" / "cloth" / "model-1.jpg").exists(), "nobody is known to wear a garment for model-1"


def test_an_unchanged_rerun_writes_no_paired_cloth_again(train_run):
    catalog, out, _ = train_run
    before = sorted(p.name for p in (out / "manifests" / "train").iterdir())
    run(catalog, out, split="train")
    assert sorted(p.name for p in (out / "manifests" / "train").iterdir()) == before


def test_in_test_a_person_gets_the_garment_of_their_test_pair(samples_dir, tmp_path, prefect_server):
    catalog = our_catalog(tmp_path, samples_dir, None)
    out = tmp_path / "dataset"
    run(catalog, out, split="test")
    pairs = dict(line.split() for line in (out / "test_pairs.txt").read_text().splitlines())
    rows = paired_rows(out, "test")
    for person, garment in pairs.items():
        stem, garment_stem = person[: -len(".jpg")], garment[: -len(".jpg")]
        assert rows[person]["details"]["paired"] == "test_pair" and rows[person]["details"]["garment_stem"] == garment_stem
        assert same_file(out, "test", "cloth", stem, garment_stem) and same_file(out, "test", "cloth-mask", stem, garment_stem)
    # What HR-VITON's loaders open is there, the DensePose renderings included: both targets pass as written.
    from tasks.tools.validate import validate_dataset

    report = validate_dataset(Store(str(out)), workers=2)
    assert report.verdicts()["vitonhd"]["ok"], report.format_text()
    assert report.verdicts()["hrviton"]["ok"], report.format_text()


def test_the_vitonhd_naming_needs_no_copy(samples_dir, tmp_path, prefect_server):
    catalog = tmp_path / "catalog"
    for folder, name in (("image", "00034_00.jpg"), ("cloth", "00034_00.jpg")):
        (catalog / folder).mkdir(parents=True)
        source = PERSONS[0] if folder == "image" else GARMENTS[0]
        shutil.copy2(samples_dir / folder / source, catalog / folder / name)
    out = tmp_path / "dataset"
    summary = run(catalog, out, split="train")
    assert paired_rows(out, "train")["00034_00.jpg"]["details"]["paired"] == "own_name"
    assert summary["paired_cloth"]["copied"] == 0
    assert sorted(path.name for path in (out / "train" / "cloth").iterdir()) == ["00034_00.jpg"], "a copy was made"


def test_a_new_pairing_moves_the_copy_and_a_dataset_without_copies_gets_them(train_run, tmp_path):
    catalog, out, _ = train_run
    catalog, out = shutil.copytree(catalog, tmp_path / "catalog"), shutil.copytree(out, tmp_path / "dataset")
    (Path(catalog) / "pairs.csv").write_text("person,garment\nmodel-0.jpg,top-0.jpg\nmodel-1.jpg,top-1.jpg\n")
    summary = run(Path(catalog), Path(out), split="train")
    assert summary["persons"]["total"] == 0, "only the pairing changed: no item is processed again"
    assert same_file(Path(out), "train", "cloth", "model-0", "top-0") and same_file(Path(out), "train", "cloth", "model-1", "top-1")
    rows = read_run(Store(str(out)), "train", summary["run_id"]).to_pylist()
    assert {row["key"]: json.loads(row["details"])["garment"] for row in rows} == {"model-0.jpg": "top-0.jpg",
                                                                                  "model-1.jpg": "top-1.jpg"}
    # Copies deleted behind the manifest's back (or a dataset made before paired cloth existed) come back.
    for folder in ("cloth", "cloth-mask"):
        (Path(out) / "train" / folder / "model-1.jpg").unlink()
    run(Path(catalog), Path(out), split="train")
    assert same_file(Path(out), "train", "cloth-mask", "model-1", "top-1")


def test_a_person_who_leaves_the_dataset_leaves_no_paired_cloth(train_run, tmp_path):
    catalog, out, _ = train_run
    catalog, out = Path(shutil.copytree(catalog, tmp_path / "catalog")), Path(shutil.copytree(out, tmp_path / "dataset"))
    (catalog / "persons" / "model-0.jpg").write_bytes(b"no longer a photo")
    summary = run(catalog, out, split="train", max_failed_fraction=1.0)
    assert summary["persons"]["error"] == 1
    assert not (out / "train" / "cloth" / "model-0.jpg").exists() and not (out / "train" / "cloth-mask" / "model-0.jpg").exists()
    assert (out / "train" / "cloth" / "top-1.jpg").exists(), "the garment's own files stay"


# ---------------------------------------------------------------------------------------------------
# A person named like a garment of the catalog: `cloth/<name>.jpg` is only ever that garment
# ---------------------------------------------------------------------------------------------------

NOT_A_PHOTO = b"not a photo: the garment's ingest fails"


def copy_of(train_run, tmp_path: Path) -> tuple[Path, Path]:
    catalog, out, _ = train_run
    return Path(shutil.copytree(catalog, tmp_path / "catalog")), Path(shutil.copytree(out, tmp_path / "dataset"))


def manifest_files(out: Path, split: str) -> list[str]:
    return sorted(str(path.relative_to(out)) for path in (out / "manifests" / split).rglob("*"))


@pytest.fixture(scope="module")
def failed_namesake_run(samples_dir, tmp_path_factory, prefect_server):
    """model-0 wears top-1; the garment model-0, named like the person, fails (its file is no photo)."""
    root = tmp_path_factory.mktemp("paired-failed-namesake")
    catalog = our_catalog(root, samples_dir, "person,garment\nmodel-0.jpg,top-1.jpg\n")
    (catalog / "garments" / "model-0.jpg").write_bytes(NOT_A_PHOTO)
    out = root / "dataset"
    return catalog, out, run(catalog, out, split="train", max_failed_fraction=1.0)


def test_a_failed_garment_s_name_gets_no_person_s_copy(failed_namesake_run):
    _, out, summary = failed_namesake_run
    assert summary["garments"]["error"] == 1, "the garment model-0 was meant to fail"
    for folder in ("cloth", "cloth-mask"):
        assert not (out / "train" / folder / "model-0.jpg").exists(), (
            f"{folder}/model-0.jpg exists: the person's copy of top-1 stands under the failed garment's name")
    assert summary["paired_cloth"]["name_taken"] == 1 and summary["paired_cloth"]["copied"] == 0


def test_the_manifest_says_the_copy_was_skipped_and_for_which_garment(failed_namesake_run):
    _, out, _ = failed_namesake_run
    row = paired_rows(out, "train")["model-0.jpg"]
    assert row["outputs"] == [], f"the row lists outputs {row['outputs']}"
    assert row["details"]["paired"] == "name_taken", row["details"]
    assert row["details"]["garment"] == "top-1.jpg", "the row should still say which garment the person wears"
    assert "'model-0.jpg'" in row["details"]["why"], f"the why does not name the garment: {row['details']['why']}"


def test_the_person_keeps_their_pair_and_validate_reports_what_hrviton_misses(failed_namesake_run):
    _, out, _ = failed_namesake_run
    from tasks.tools.validate import validate_dataset

    assert (out / "train_pairs.txt").read_text() == "model-0.jpg top-1.jpg\n", "the person's pair is gone"
    report = validate_dataset(Store(str(out)), workers=2)
    assert report.verdicts()["vitonhd"]["ok"], report.format_text()
    missing = {p.path for p in report.problems if p.code == "paired_cloth_missing"}
    assert missing == {"train/cloth/model-0.jpg", "train/cloth-mask/model-0.jpg"}, report.format_text()


def test_a_garment_named_like_the_person_keeps_its_own_files(samples_dir, tmp_path, prefect_server):
    catalog = our_catalog(tmp_path, samples_dir, "person,garment\nmodel-0.jpg,top-1.jpg\n")
    shutil.copy2(samples_dir / "cloth" / GARMENTS[0], catalog / "garments" / "model-0.jpg")
    out = tmp_path / "dataset"
    summary = run(catalog, out, split="train")
    assert summary["garments"]["error"] == 0, "every garment was meant to succeed"
    for folder in ("cloth", "cloth-mask"):
        assert not same_file(out, "train", folder, "model-0", "top-1"), (
            f"{folder}/model-0.jpg holds top-1 (the person's garment), not the garment model-0")
    assert same_file(out, "train", "cloth", "model-0", "top-0"), "cloth/model-0.jpg is not the garment model-0's photo"
    assert paired_rows(out, "train")["model-0.jpg"]["details"]["paired"] == "name_taken"


def test_a_copy_made_before_a_garment_took_the_name_is_removed(train_run, tmp_path):
    """model-0 had its copy of top-1; then a garment model-0 comes, not processed yet (outside the run's
    prefix): the copy must not stand in for it."""
    catalog, out = copy_of(train_run, tmp_path)
    assert same_file(out, "train", "cloth", "model-0", "top-1"), "precondition: model-0's copy of top-1"
    shutil.copy2(catalog / "garments" / "top-0.jpg", catalog / "garments" / "model-0.jpg")
    summary = run(catalog, out, split="train", prefix="persons/")
    assert summary["garments"]["total"] == 0, "the garment model-0 was meant to stay unprocessed"
    for folder in ("cloth", "cloth-mask"):
        assert not (out / "train" / folder / "model-0.jpg").exists(), (
            f"{folder}/model-0.jpg still holds the person's copy of top-1 under the garment model-0's name")
    assert paired_rows(out, "train")["model-0.jpg"]["details"]["paired"] == "name_taken"


def test_a_copy_is_not_written_again_when_the_garment_that_takes_its_name_fails(train_run, tmp_path):
    catalog, out = copy_of(train_run, tmp_path)
    (catalog / "garments" / "model-0.jpg").write_bytes(NOT_A_PHOTO)
    summary = run(catalog, out, split="train", max_failed_fraction=1.0)
    assert summary["garments"]["error"] == 1, "the garment model-0 was meant to fail"
    for folder in ("cloth", "cloth-mask"):
        assert not (out / "train" / folder / "model-0.jpg").exists(), (
            f"{folder}/model-0.jpg holds the person's copy of top-1 under the failed garment's name")


def test_an_unchanged_rerun_with_a_name_taken_writes_nothing(failed_namesake_run, tmp_path):
    catalog, out, _ = failed_namesake_run
    catalog, out = Path(shutil.copytree(catalog, tmp_path / "catalog")), Path(shutil.copytree(out, tmp_path / "dataset"))
    before = manifest_files(out, "train")
    summary = run(catalog, out, split="train", max_failed_fraction=1.0)
    assert summary["paired_cloth"]["rows"] == 0, f"the rerun wrote {summary['paired_cloth']['rows']} paired_cloth rows"
    assert manifest_files(out, "train") == before, "the rerun wrote manifest files"
