"""Reading the protocol-buffers wire format: just enough to walk an ONNX model without the onnx package.

A message is a run of fields, each a varint key (``field_number << 3 | wire_type``) and a value:
a varint (type 0), 8 bytes (1), a length-prefixed run of bytes (2), or 4 bytes (5). Groups
(types 3 and 4) are deprecated and unused by ONNX: they are refused. Every length and offset
is checked against the end of the enclosing message, so truncated or hostile input raises
`WireError` and never reads past the buffer or loops.

Values are not copied: a length-delimited field is returned as ``(start, end)`` offsets into
the one buffer. Fields the caller does not ask for are skipped; long runs of one repeated
scalar field (the unpacked ``floats`` and ``ints`` of a tree-ensemble's attributes, millions
of them) are skipped by one regular-expression match each instead of one step per element, and
runs of one unpacked string field (a tree ensemble's node modes) by a tight loop.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache
from typing import Final, NamedTuple

VARINT: Final = 0
FIXED64: Final = 1
LENGTH_DELIMITED: Final = 2
FIXED32: Final = 5

_MAX_VARINT_BYTES = 10
_MAX_FIELD_NUMBER = (1 << 29) - 1


class WireError(ValueError):
    """The bytes are not a well-formed protocol-buffers message."""


class Field(NamedTuple):
    """One field of a message: its number, wire type and value.

    ``value`` is the varint, or the fixed bytes as an int, or for a length-delimited field
    its start offset, with ``end`` its end offset (else ``end`` is -1).
    """

    number: int
    wire_type: int
    value: int
    end: int


def read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """The unsigned varint at `pos` and the offset after it; `WireError` if it runs past `end` or 10 bytes."""
    result = 0
    shift = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= end:
            raise WireError(f"varint at offset {pos} runs past the end of its message")
        byte = data[pos + i]
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos + i + 1
        shift += 7
    raise WireError(f"varint at offset {pos} is longer than {_MAX_VARINT_BYTES} bytes")


def as_int64(value: int) -> int:
    """A varint read as a two's-complement int64 (negative numbers take 10 bytes on the wire)."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def fields(data: bytes, start: int, end: int, wanted: frozenset[int]) -> Iterator[Field]:
    """The fields numbered in `wanted` of the message in ``data[start:end]``, in order; others are skipped."""
    if not 0 <= start <= end <= len(data):
        raise WireError(f"message bounds {start}..{end} outside the {len(data)}-byte buffer")
    pos = start
    while pos < end:
        key_at = pos
        key = data[pos]
        if key < 0x80:  # one-byte keys (fields 1-15) are the rule: skip the call
            pos += 1
        else:
            key, pos = read_varint(data, pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 0 or number > _MAX_FIELD_NUMBER:
            raise WireError(f"field number {number} at offset {key_at} is invalid")
        if wire_type == LENGTH_DELIMITED:
            length, pos = read_varint(data, pos, end)
            if length > end - pos:
                raise WireError(f"field {number} at offset {key_at} claims {length} bytes, {end - pos} left")
            if number in wanted:
                yield Field(number, wire_type, pos, pos + length)
                pos += length
            else:
                pos = _skip_delimited_run(data, pos + length, end, key) if key < 0x80 else pos + length
            continue
        if wire_type == VARINT:
            value, pos = read_varint(data, pos, end)
        elif wire_type in (FIXED64, FIXED32):
            width = 8 if wire_type == FIXED64 else 4
            if pos + width > end:
                raise WireError(f"fixed-width field {number} at offset {key_at} runs past its message")
            value = int.from_bytes(data[pos : pos + width], "little")
            pos += width
        else:
            raise WireError(f"wire type {wire_type} (field {number} at offset {key_at}) is not supported")
        if number in wanted:
            yield Field(number, wire_type, value, -1)
        else:
            pos = _skip_run(data, pos, end, data[key_at : pos_after_key(data, key_at)], wire_type)


def string(data: bytes, field: Field) -> str:
    """A length-delimited field as UTF-8 text; `WireError` if it is not."""
    if field.wire_type != LENGTH_DELIMITED:
        raise WireError(f"field {field.number} should be a string, has wire type {field.wire_type}")
    try:
        return data[field.value : field.end].decode("utf-8")
    except UnicodeDecodeError:
        raise WireError(f"field {field.number} at offset {field.value} is not UTF-8") from None


def message(field: Field) -> tuple[int, int]:
    """The bounds of an embedded message; `WireError` if the field is not length-delimited."""
    if field.wire_type != LENGTH_DELIMITED:
        raise WireError(f"field {field.number} should be a message, has wire type {field.wire_type}")
    return field.value, field.end


def varint(field: Field) -> int:
    """A varint field's value as an int64; `WireError` for another wire type."""
    if field.wire_type != VARINT:
        raise WireError(f"field {field.number} should be a varint, has wire type {field.wire_type}")
    return as_int64(field.value)


def pos_after_key(data: bytes, pos: int) -> int:
    """The offset just past the (already validated) varint key at `pos`."""
    while data[pos] >= 0x80:
        pos += 1
    return pos + 1


def _skip_delimited_run(data: bytes, pos: int, end: int, key: int) -> int:
    """Past further length-delimited fields with the same one-byte `key` and one-byte lengths.

    The unpacked ``strings`` of an attribute (a tree ensemble's node modes) come one per node.
    """
    while pos + 1 < end and data[pos] == key and data[pos + 1] < 0x80:
        following = pos + 2 + data[pos + 1]
        if following > end:
            raise WireError(f"field {key >> 3} at offset {pos} claims {data[pos + 1]} bytes past its message")
        pos = following
    return pos


def _skip_run(data: bytes, pos: int, end: int, key: bytes, wire_type: int) -> int:
    """Past a run of further fields with the same `key` (a repeated scalar), by one regex match."""
    if data[pos : pos + len(key)] != key:
        return pos
    match = _run_pattern(key, wire_type).match(data, pos, end)
    return match.end() if match else pos


@lru_cache(maxsize=64)
def _run_pattern(key: bytes, wire_type: int) -> re.Pattern[bytes]:
    value = {VARINT: rb"[\x80-\xff]{0,9}[\x00-\x7f]", FIXED64: rb".{8}", FIXED32: rb".{4}"}[wire_type]
    return re.compile(rb"(?:" + re.escape(key) + value + rb")*", re.DOTALL)
