"""Class names for `--label_names`: a `label_id,label_name` CSV or the dataset's own `vocabulary.csv`.

One reader for every command (train, evaluate, search, the demo); it needs no TensorFlow.
"""

from __future__ import annotations

import csv
import io

from nextvlad.files import read_text


def parse_label_names(text: str, *, source: str = "label names") -> dict[int, str]:
    """Class names from the text of a `label_id,label_name` CSV or of the dataset's `vocabulary.csv`.

    `vocabulary.csv` has the header `Index,TrainVideoCount,KnowledgeGraphId,Name,WikiUrl,Vertical1,...`
    and quoted fields that contain commas; both layouts are read with the csv module.

    Args:
        text: the CSV's contents, with a header row.
        source: where the text came from, for error messages.

    Returns:
        `{class_id: name}`; blank names stay blank (56 of the 2018 vocabulary's are).

    Raises:
        ValueError: the header has neither layout, or an id is not an integer.
    """
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    for id_key, name_key in (("label_id", "label_name"), ("Index", "Name")):
        if id_key in header and name_key in header:
            break
    else:
        raise ValueError(
            f"{source} has columns {header}; expected a 'label_id,label_name' header "
            "(or the YouTube-8M vocabulary.csv with 'Index' and 'Name')"
        )
    names = {}
    for line, row in enumerate(reader, start=2):
        try:
            names[int(row[id_key])] = (row[name_key] or "").strip()
        except (TypeError, ValueError):
            raise ValueError(f"{source} line {line}: {id_key}={row[id_key]!r} is not an integer") from None
    return names


def read_label_names(path: str) -> dict[int, str]:
    """`parse_label_names` of a local or remote (gs://) file: what every `--label_names` flag reads.

    Raises:
        FileNotFoundError: the file does not exist or cannot be read (the message says what to pass).
        ValueError: the header has neither layout, or an id is not an integer.
    """
    try:
        text = read_text(path)
    except OSError as e:
        raise FileNotFoundError(
            f"cannot read label names from {path!r} ({e}); pass a 'label_id,label_name' CSV or the "
            "dataset's vocabulary.csv"
        ) from None
    return parse_label_names(text, source=path)
