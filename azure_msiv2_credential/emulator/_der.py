"""A minimal DER reader.

cryptography parses a CSR but hides encoding details the wire contract pins down (string tags in
the subject, the RSASSA-PSS parameters, the exact attribute shape). This reader exposes the raw
tag-length-value structure so the emulator can check them strictly.
"""

from __future__ import annotations

from dataclasses import dataclass

SEQUENCE = 0x30
SET = 0x31
INTEGER = 0x02
BIT_STRING = 0x03
NULL = 0x05
OBJECT_IDENTIFIER = 0x06
UTF8_STRING = 0x0C
IA5_STRING = 0x16


class DerError(ValueError):
    """The bytes are not the DER structure that was expected."""


@dataclass(frozen=True)
class Tlv:
    """One DER element: its tag byte and its content octets."""

    tag: int
    content: bytes

    def children(self) -> list[Tlv]:
        """Parse the content as a sequence of elements (for constructed types)."""
        return parse_all(self.content)

    def expect(self, tag: int, what: str) -> Tlv:
        if self.tag != tag:
            raise DerError(f"{what}: expected tag 0x{tag:02x}, found 0x{self.tag:02x}")
        return self


def parse_one(data: bytes, offset: int = 0) -> tuple[Tlv, int]:
    """Parse the element at ``offset``; return it and the offset just after it."""
    if offset + 2 > len(data):
        raise DerError("truncated element")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise DerError("high tag numbers are not used here")
    first = data[offset + 1]
    pos = offset + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0:
            raise DerError("indefinite length is not DER")
        if count > 4 or pos + count > len(data):
            raise DerError("bad length")
        length = int.from_bytes(data[pos : pos + count], "big")
        if length < 0x80 or data[pos] == 0:
            raise DerError("length is not minimally encoded")
        pos += count
    end = pos + length
    if end > len(data):
        raise DerError("truncated content")
    return Tlv(tag, data[pos:end]), end


def parse_all(data: bytes) -> list[Tlv]:
    """Parse consecutive elements filling ``data`` exactly."""
    items: list[Tlv] = []
    offset = 0
    while offset < len(data):
        item, offset = parse_one(data, offset)
        items.append(item)
    return items


def parse_single(data: bytes) -> Tlv:
    """Parse exactly one element with no trailing bytes."""
    item, end = parse_one(data)
    if end != len(data):
        raise DerError("trailing bytes after the element")
    return item


def decode_oid(tlv: Tlv) -> str:
    """Dotted-decimal form of an OBJECT IDENTIFIER."""
    tlv.expect(OBJECT_IDENTIFIER, "object identifier")
    content = tlv.content
    if not content or content[-1] & 0x80:
        raise DerError("bad object identifier")
    arcs: list[int] = []
    value = 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(arc) for arc in head + arcs[1:])


def decode_int(tlv: Tlv) -> int:
    tlv.expect(INTEGER, "integer")
    if not tlv.content:
        raise DerError("empty integer")
    return int.from_bytes(tlv.content, "big", signed=True)
