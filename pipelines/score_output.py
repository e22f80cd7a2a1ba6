"""What a scoring run does with its `--output` prefix, so that the prefix never holds two runs' files.

`check_output` runs with the other checks: the prefix must be writable and hold no earlier run's shards
unless `--overwrite` is given. `clear_output` runs right before the pipeline: it deletes what a killed
run left and, with `--overwrite`, the earlier run. Which files a run owns is `pipelines.output_files`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

from apache_beam.io.filesystems import FileSystems

from pipelines import output_files
from pipelines.score_arguments import ScoreSetupError

logger = logging.getLogger(__name__)


def check_output(output: str, *, overwrite: bool) -> None:
    """Before anything runs: `output` is writable and, unless `overwrite`, holds no earlier run's files.

    Raises:
        ScoreSetupError: it is not, with what to pass instead.
    """
    probe = f"{output}-write-check-{uuid.uuid4().hex}.tmp"
    try:
        with FileSystems.create(probe) as f:
            f.write(b"")
        FileSystems.delete([probe])
    except Exception as e:
        raise ScoreSetupError(
            f"Cannot write to the output location {output!r} ({type(e).__name__}: {e}); pass an "
            "--output prefix in a directory or bucket you can write to"
        ) from e
    existing = output_files.find_existing(output)
    if existing.shards and not overwrite:
        _refuse_earlier_run(output, existing.shards)
    if existing.foreign:
        logger.warning(
            "%d file(s) match %s-*.parquet without being this job's shards (%s): they are left alone, and "
            "a reader of that glob reads them too",
            len(existing.foreign),
            output,
            _some(existing.foreign),
        )


def _some(paths: Sequence[str], shown: int = 3) -> str:
    more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
    return ", ".join(paths[:shown]) + more


def _refuse_earlier_run(output: str, shards: Sequence[str]) -> None:
    raise ScoreSetupError(
        f"--output {output!r} already holds the output of an earlier run ({len(shards)} files: "
        f"{_some(shards)}); scoring into it would leave two runs mixed for readers of "
        f"'{output}-*.parquet'. Pass --overwrite to replace that run, or choose a new --output prefix"
    )


def clear_output(output: str, *, overwrite: bool, dry_run: bool) -> None:
    """Right before the pipeline starts (every check passed): deletes what a killed run left and, with
    --overwrite, the earlier run's shards, so that the prefix ends up holding this run's files only.

    The earlier run goes before the new one starts rather than when it finishes: a new run killed while
    renaming its files into place then leaves part of one run (refused next time), never two runs mixed.
    """
    existing = output_files.find_existing(output)
    if existing.shards and not overwrite:
        _refuse_earlier_run(output, existing.shards)  # written there since the check
    if dry_run:
        if existing.shards:
            logger.info("dry run: --overwrite would delete %s", _some(existing.shards))
        return
    if existing.leftovers:
        logger.warning(
            "deleting the temporary files of an interrupted run at %s: %s", output, _some(existing.leftovers)
        )
    if existing.shards:
        logger.info(
            "--overwrite: deleting the earlier run's %d files at %s: %s",
            len(existing.shards),
            output,
            _some(existing.shards),
        )
    output_files.remove(output, existing, shards=overwrite)
