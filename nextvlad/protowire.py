"""The protobuf wire format of `tf.train.Feature` maps, read and written by hand (no protobuf classes).

Wire format (tensorflow/core/example/{example,feature}.proto):
  Example { Features features = 1; }
  SequenceExample { Features context = 1; FeatureLists feature_lists = 2; }
  Features { map<string, Feature> feature = 1; }   FeatureLists { map<string, FeatureList> feature_list = 1; }
  map entry { key = 1; value = 2; }   FeatureList { repeated Feature feature = 1; }
  Feature { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
  BytesList { repeated bytes value = 1; }   FloatList / Int64List { repeated value = 1 [packed = true]; }
A length-delimited field is `tag varint(len) payload`, tag = (field << 3) | wire type. Nothing here knows
YouTube-8M: `nextvlad.records` reads and `nextvlad.record_writer` writes its records with these pieces.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np


class MalformedError(Exception):
    """The bytes are not a valid protobuf message."""


def varint_at(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise MalformedError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise MalformedError("varint longer than 10 bytes")


VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


def fields(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """`(field number, wire type, a, b)` for each field in `buf[pos:end]`: a varint's value in `a`, else
    the payload's `[a, b)` range."""
    while pos < end:
        key, pos = varint_at(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise MalformedError("field number 0")
        if wire == VARINT:
            value, pos = varint_at(buf, pos, end)
            yield number, wire, value, 0
            continue
        if wire == LENGTH:
            size, pos = varint_at(buf, pos, end)
            stop = pos + size
        elif wire == FIXED64:
            stop = pos + 8
        elif wire == FIXED32:
            stop = pos + 4
        else:
            raise MalformedError(f"unsupported wire type {wire}")
        if stop > end:
            raise MalformedError("field runs past the end of its message")
        yield number, wire, pos, stop
        pos = stop


def messages(buf: bytes, pos: int, end: int, number: int) -> list[tuple[int, int]]:
    """The `[start, stop)` ranges of every length-delimited field `number` (repeated or merged)."""
    return [(a, b) for n, wire, a, b in fields(buf, pos, end) if n == number and wire == LENGTH]


def string_map(buf: bytes, ranges: Sequence[tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """A `map<string, message>` (field 1 of `Features` / `FeatureLists`): key -> value range; last wins."""
    out: dict[str, tuple[int, int]] = {}
    for start, stop in ranges:
        for entry_start, entry_stop in messages(buf, start, stop, 1):
            key, value = b"", (entry_stop, entry_stop)  # a missing value is an empty message
            for n, wire, a, b in fields(buf, entry_start, entry_stop):
                if wire != LENGTH:
                    continue
                if n == 1:
                    key = buf[a:b]
                elif n == 2:
                    value = (a, b)
            try:
                out[key.decode("utf-8")] = value
            except UnicodeDecodeError:
                raise MalformedError("map key is not UTF-8") from None
    return out


KINDS = {1: "bytes_list", 2: "float_list", 3: "int64_list"}


class Feature:
    """One decoded `Feature`: its kind (None when empty) and its values (list or float32 array)."""

    __slots__ = ("kind", "values")

    def __init__(self, kind: str | None, values: Any) -> None:
        self.kind, self.values = kind, values

    def describe(self) -> str:
        return "an empty feature" if self.kind is None else f"{self.kind} with {len(self.values)} values"


def signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def packed_varints(buf: bytes, start: int, stop: int) -> list[int]:
    out, pos = [], start
    while pos < stop:
        value, pos = varint_at(buf, pos, stop)
        out.append(signed(value))
    return out


def read_feature(buf: bytes, start: int, stop: int) -> Feature:
    """Decodes a `Feature`; repeated occurrences of its list merge, and the last kind set wins."""
    kind_number, parts = 0, []
    for n, wire, a, b in fields(buf, start, stop):
        if n in KINDS and wire == LENGTH:
            if n != kind_number:
                kind_number, parts = n, []
            parts.append((a, b))
    if not kind_number:
        return Feature(None, [])
    values: Any = []
    if kind_number == 1:
        for a, b in parts:
            values += [buf[x:y] for n, wire, x, y in fields(buf, a, b) if n == 1 and wire == LENGTH]
    elif kind_number == 3:
        for a, b in parts:
            for n, wire, x, y in fields(buf, a, b):
                if n != 1:
                    continue
                if wire == VARINT:
                    values.append(signed(x))
                elif wire == LENGTH:
                    values += packed_varints(buf, x, y)
    else:
        chunks = []
        for a, b in parts:
            for n, wire, x, y in fields(buf, a, b):
                if n == 1 and wire in (FIXED32, LENGTH):
                    if (y - x) % 4:
                        raise MalformedError("packed floats not a multiple of 4 bytes")
                    chunks.append(buf[x:y])
        values = np.frombuffer(b"".join(chunks), dtype="<f4").astype(np.float32)
    return Feature(KINDS[kind_number], values)


# Writing

F1 = b"\x0a"  # field 1, length-delimited
F2 = b"\x12"  # field 2, length-delimited
F3 = b"\x1a"  # field 3, length-delimited
U64 = (1 << 64) - 1


def varint(n: int) -> bytes:
    n &= U64  # negative int64 values are encoded as their 64-bit two's complement
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def length_field(tag: bytes, payload: bytes) -> bytes:
    return tag + varint(len(payload)) + payload


def bytes_feature(values: Sequence[bytes]) -> bytes:
    return length_field(F1, b"".join(length_field(F1, v) for v in values))


def int64_feature(values: Iterable[int]) -> bytes:
    packed = b"".join(varint(int(v)) for v in values)
    return length_field(F3, length_field(F1, packed) if packed else b"")


def float_feature(values: Any) -> bytes:
    packed = np.asarray(values, dtype="<f4").tobytes()
    return length_field(F2, length_field(F1, packed) if packed else b"")


def features_message(entries: Sequence[tuple[str, bytes]]) -> bytes:
    """Features message body from (key, encoded Feature) pairs."""
    return b"".join(
        length_field(F1, length_field(F1, key.encode()) + length_field(F2, feat)) for key, feat in entries
    )
