"""Files without TensorFlow: local paths with the standard library, anything else (gs://) through Beam's
filesystems; glob patterns; and the TFRecord framing (`uint64 length`, masked CRC-32C of the length, the
record, masked CRC-32C of the record), read and written directly.
"""

from __future__ import annotations

import glob
import logging
import os
import struct
from collections.abc import Iterable, Iterator, Sequence

logger = logging.getLogger(__name__)


def is_remote(path: str) -> bool:
    """Whether `path` names an object store (`gs://...`) rather than a local file."""
    return "://" in path


def read_bytes(path: str) -> bytes:
    """The whole content of a local or remote (gs://) file."""
    if not is_remote(path):
        with open(path, "rb") as f:
            return f.read()
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as f:
        return f.read()


def read_text(path: str) -> str:
    """A UTF-8 text file, local or remote (a byte-order mark is dropped)."""
    return read_bytes(path).decode("utf-8-sig")


def write_bytes(path: str, data: bytes) -> None:
    """Writes a whole local or remote (gs://) file; a local parent directory is created if missing."""
    if is_remote(path):
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.create(path) as f:
            f.write(data)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def expand_pattern(file_pattern: str | Sequence[str]) -> list[str]:
    """Expands glob pattern(s), local or gs://, into a sorted, de-duplicated list of files.

    Raises:
        ValueError: no pattern given.
        FileNotFoundError: a pattern matches nothing (the message names it).
    """
    patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    if not patterns:
        raise ValueError("No file pattern given; pass e.g. 'data/train*.tfrecord'")
    files: list[str] = []
    for pattern in patterns:
        if is_remote(pattern):
            from apache_beam.io.filesystems import FileSystems

            matched = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
        else:
            matched = sorted(path for path in glob.glob(pattern) if os.path.isfile(path))
        if not matched:
            raise FileNotFoundError(f"No files match {pattern!r}; check the path (local or gs://) and glob")
        files.extend(matched)
    return list(dict.fromkeys(files))


def masked_crc32c(data: bytes) -> int:
    """The TFRecord framing checksum: CRC-32C of `data`, rotated right by 15 bits plus a constant."""
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def write_tfrecords(path: str, records: Iterable[bytes]) -> int:
    """Writes serialized records to one uncompressed TFRecord file (local or gs://).

    Args:
        path: output file; a local parent directory is created if missing.
        records: serialized records.

    Returns:
        The number of records written.
    """
    if is_remote(path):
        from apache_beam.io.filesystems import FileSystems

        opened = FileSystems.create(path)
    else:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        opened = open(path, "wb")  # noqa: SIM115  (closed by the `with` below)
    count = 0
    with opened as f:
        for record in records:
            header = struct.pack("<Q", len(record))
            f.write(header + struct.pack("<I", masked_crc32c(header)))
            f.write(record)
            f.write(struct.pack("<I", masked_crc32c(bytes(record))))
            count += 1
    logger.debug("wrote %d records to %s", count, path)
    return count


def open_binary(path: str):
    """A binary file object for reading a local or remote (gs://) file."""
    if not is_remote(path):
        return open(path, "rb")  # noqa: SIM115  (the caller closes it)
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(path)


def iter_tfrecords(path: str) -> Iterator[bytes]:
    """The records of one local or remote TFRecord file, streamed and each checked against its CRCs.

    Raises:
        ValueError: the file is truncated, corrupt or not a TFRecord file (the message gives the offset).
    """
    pos = 0
    with open_binary(path) as f:
        while header := f.read(12):
            if len(header) < 12:
                raise ValueError(f"{path} is truncated or not a TFRecord file (partial header at byte {pos})")
            (length,) = struct.unpack("<Q", header[:8])
            if masked_crc32c(header[:8]) != struct.unpack("<I", header[8:])[0]:
                raise ValueError(f"{path} is corrupt at byte {pos}: a record length fails its CRC check")
            body = f.read(length + 4)
            if len(body) < length + 4:
                raise ValueError(f"{path} is truncated at byte {pos}: the last record runs past the end")
            record = body[:length]
            if masked_crc32c(record) != struct.unpack("<I", body[length:])[0]:
                raise ValueError(f"{path}: the record at byte {pos} fails its CRC check")
            yield record
            pos += 12 + length + 4


def _count_local_records(path: str) -> int:
    """Walks the framing (uint64 length, crc, data, crc) without reading the payloads."""
    size = os.path.getsize(path)
    count = 0
    with open(path, "rb") as f:
        pos = 0
        while pos < size:
            header = f.read(12)
            if len(header) < 12:
                raise ValueError(f"{path} is truncated or not a TFRecord file (partial header at byte {pos})")
            (length,) = struct.unpack("<Q", header[:8])
            pos += 12 + length + 4
            if pos > size:
                raise ValueError(
                    f"{path} is truncated or not a TFRecord file (record {count} runs past the end)"
                )
            f.seek(pos)
            count += 1
    return count


def count_records(file_pattern: str | Sequence[str]) -> int:
    """Number of records in the matching TFRecord files: local files from the framing alone (no payload
    is read), remote ones by reading them."""
    total = 0
    for path in expand_pattern(file_pattern):
        total += sum(1 for _ in iter_tfrecords(path)) if is_remote(path) else _count_local_records(path)
    return total


def peek_records(file_pattern: str | Sequence[str], n: int = 8) -> list[bytes]:
    """The first `n` records, in sorted file order, of the matching files."""
    out: list[bytes] = []
    for path in expand_pattern(file_pattern):
        for record in iter_tfrecords(path):
            if len(out) == n:
                return out
            out.append(record)
    return out
