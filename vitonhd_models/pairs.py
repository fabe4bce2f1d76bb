"""Pairs files as the loaders read them (contract §1.1). Plain Python: imported where PyTorch is not.

`pair_fields` is the one reader of a pairs line; `parse_pairs` reads a whole file with it, and
`tasks.tools.validate` checks one line by line with it.
"""

from __future__ import annotations

from vitonhd_models.contract import JPG


def pair_fields(line: str, extension: str | None = JPG) -> tuple[str, str] | None:
    """One pairs line as the loaders split it (`line.strip().split()` -> person, cloth), or None when it
    is not two names (each ending in `extension`; None: any names). A blank line is None too: the
    official loaders cannot unpack it."""
    fields = line.split()
    if len(fields) != 2 or (extension is not None and not all(name.endswith(extension) for name in fields)):
        return None
    return fields[0], fields[1]


def parse_pairs(text: str, source: str = "pairs file", extension: str | None = JPG) -> list[tuple[str, str]]:
    """`person.jpg cloth.jpg` per line (contract §1.1: whitespace-separated, no header; blank lines
    skipped). `extension`: what both names must end with (None: any name, as in a catalog's pairs file)."""
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        pair = pair_fields(line, extension)
        if pair is None:
            shown = f"person{extension or ''} cloth{extension or ''}"
            raise ValueError(f"{source}:{number}: expected '{shown}', got {line.strip()!r}")
        pairs.append(pair)
    return pairs


def pair_name(name: str) -> str:
    """A person or garment as the pairs file names it: `x` or `x.jpg` -> `x.jpg`."""
    name = name.strip()
    if not name or "/" in name or any(char.isspace() for char in name):
        raise ValueError(f"{name!r} is not a dataset file name (a stem such as 00001_00, or 00001_00.jpg)")
    return name if name.endswith(".jpg") else f"{name}.jpg"
