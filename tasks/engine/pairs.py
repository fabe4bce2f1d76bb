"""The dataset's pairs: who wears what over everything the dataset holds, and `<split>_pairs.txt`.

Train pairs each person with the garment they wear (the catalog's pairs file, by key, or VITON-HD's
same-name convention); test pairs each person with a garment they don't (`unworn_pairs`). The paired
cloth (`tasks.engine.paired_cloth`) is decided from the same two answers.
"""

from __future__ import annotations

from tasks.infra.store import Store
from tasks.records.catalog import GARMENT, PERSON, CatalogLayout, unworn_pairs
from vitonhd_models import contract


def pairs_of(
    split: str, layout: CatalogLayout, worn_pairs: list[tuple[str, str]], ok: dict[str, dict[str, str]]
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Who wears what (person stem -> garment stem) and the split's pairs, over the usable items `ok`
    (per kind, key -> stem): `worn_pairs` are the catalog's (person key, garment key) lines."""
    worn = {}
    for person_key, garment_key in worn_pairs:
        if person_key in ok[PERSON] and garment_key in ok[GARMENT]:
            worn[ok[PERSON][person_key]] = ok[GARMENT][garment_key]
    if layout.name == "vitonhd" and layout.pairs_file is None:
        # VITON-HD's own convention: image/X.jpg wears cloth/X.jpg.
        garment_stems = set(ok[GARMENT].values())
        worn = {stem: stem for stem in ok[PERSON].values() if stem in garment_stems}
    if split == "train":
        pairs = sorted(worn.items())
    else:
        pairs = unworn_pairs(list(ok[PERSON].values()), list(ok[GARMENT].values()), worn)
    return worn, pairs


def write_pairs(out: Store, split: str, pairs: list[tuple[str, str]]) -> None:
    """`<out>/<split>_pairs.txt`, rewritten only when its content changes."""
    lines = "".join(f"{contract.person_image_name(p)} {contract.cloth_image_name(g)}\n" for p, g in pairs)
    name = contract.pairs_file_name(split)
    if not out.exists(name) or out.read_text(name) != lines:  # object stores bill and notify every PUT
        out.write_text(name, lines)
