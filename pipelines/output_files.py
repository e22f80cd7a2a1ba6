"""The files one scoring run owns under its `--output` prefix, so that a prefix never holds two runs.

A run with `--output PREFIX` finalises files with these names only (`N` shards each, any `N`):

    PREFIX-SSSSS-of-NNNNN.parquet            video rows; readers glob `PREFIX-*.parquet`
    PREFIX-errors-SSSSS-of-NNNNN.jsonl       the dead letter
    PREFIX_segments-SSSSS-of-NNNNN.parquet   segment rows (segment scoring)

All three families are one run's output: a new run that left an older run's segment rows or dead letter
beside its own video rows would mix two runs as surely as leftover video shards would.

While a run is going, Beam's file sinks write into folders named `beam-temp-NAME-<32 hex digits>` next
to the prefix (NAME is the prefix's last component, with `-errors` / `_segments` for the other two
families) and rename the files to their final names only after every shard is complete. Those folders
never match `PREFIX-*.parquet` (a glob's `*` does not cross `/`), but a run killed before its end leaves
them behind, as it can leave the output check's `PREFIX-write-check-<hex>.tmp` probe; `find_existing`
reports both as leftovers so that the next run removes them.

Everything goes through Beam's `FileSystems`, so local paths and `gs://` behave alike.
"""

from __future__ import annotations

import dataclasses
import os
import re

from apache_beam.io.filesystems import FileSystems

# (text after the prefix, file suffix) of each family of files a run finalises.
FAMILIES = (("", ".parquet"), ("-errors", ".jsonl"), ("_segments", ".parquet"))
_SHARD = r"-\d+-of-\d+"


@dataclasses.dataclass(frozen=True)
class ExistingOutput:
    """What an output prefix already holds before a run starts (each field sorted)."""

    shards: tuple[str, ...]  # finalised files of an earlier run: every family, any shard count
    temp_folders: tuple[str, ...]  # Beam's temp folders left by a killed run, with what they hold
    probes: tuple[str, ...]  # output-check probe files left by a killed run
    foreign: tuple[str, ...]  # other files that the readers' glob PREFIX-*.parquet matches (left alone)

    @property
    def leftovers(self) -> tuple[str, ...]:
        """A killed run's temporary files and folders: no reader's glob matches them."""
        return self.temp_folders + self.probes


def _paths(pattern: str) -> list[str]:
    return [m.path for m in FileSystems.match([pattern])[0].metadata_list]


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _is_local(output: str) -> bool:
    return FileSystems.get_scheme(output) in (None, "file")


def find_existing(output: str, *, families: tuple[tuple[str, str], ...] = FAMILIES) -> ExistingOutput:
    """Lists what earlier runs left under `output`.

    Args:
        output: the output prefix (local or `gs://`), as passed to `--output`.
        families: (infix, suffix) of each family of files a run writes, the readers' family first (another
            pipeline's, e.g. `(("", ".tfrecord"), ("-errors", ".jsonl"))` for extracted features).

    Returns:
        The earlier runs' finalised shards, the temporary files of killed runs, and unrelated files
        that nonetheless match `{output}-*.parquet`.
    """
    directory, name = FileSystems.split(output)
    shards: set[str] = set()
    for infix, suffix in families:
        shard = re.compile(re.escape(name + infix) + _SHARD + re.escape(suffix))
        shards.update(p for p in _paths(f"{output}{infix}-*-of-*{suffix}") if shard.fullmatch(_basename(p)))
    foreign = set(_paths(f"{output}-*{families[0][1]}")) - shards

    probe = re.compile(re.escape(name) + r"-write-check-[0-9a-f]{32}\.tmp")
    probes = {p for p in _paths(f"{output}-write-check-*.tmp") if probe.fullmatch(_basename(p))}
    infixes = "|".join(re.escape(infix) for infix, _ in families if infix)
    temp_folder = re.compile(r"beam-temp-" + re.escape(name) + rf"({infixes})?-[0-9a-f]{{32}}")
    folders: set[str] = set()
    # Object stores have no folders: a temp folder is known by the files in it.
    for path in _paths(FileSystems.join(directory, f"beam-temp-{name}*/*")):
        folder = path.rsplit("/", 1)[0]
        if temp_folder.fullmatch(_basename(folder)):
            folders.add(folder)
    if _is_local(output) and os.path.isdir(directory):
        # A run killed before its first row leaves empty temp folders, which no match lists.
        with os.scandir(directory) as entries:
            folders.update(
                FileSystems.join(directory, e.name)
                for e in entries
                if e.is_dir() and temp_folder.fullmatch(e.name)
            )
    return ExistingOutput(
        shards=tuple(sorted(shards)),
        temp_folders=tuple(sorted(folders)),
        probes=tuple(sorted(probes)),
        foreign=tuple(sorted(foreign)),
    )


def remove(output: str, existing: ExistingOutput, *, shards: bool) -> list[str]:
    """Deletes a killed run's leftovers and, with `shards`, the earlier run's finalised files.

    Args:
        output: the output prefix `existing` was found under.
        existing: from `find_existing(output)`.
        shards: also delete `existing.shards` (`--overwrite`); never touches `existing.foreign`.

    Returns:
        The paths deleted (temp folders with everything in them).
    """
    # A trailing "/" makes an object store delete everything under the folder name; a local folder
    # is deleted with its contents by its own path.
    folders = [f if _is_local(output) else f + "/" for f in existing.temp_folders]
    files = [*(existing.shards if shards else ()), *existing.probes]
    if folders or files:
        FileSystems.delete([*files, *folders])
    return [*files, *existing.temp_folders]
