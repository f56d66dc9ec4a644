"""Parquet footers without pyarrow or the JVM: column types, and canonical encodings lists.

A minimal Thrift compact-protocol reader of the ``FileMetaData`` at the end of a Parquet file,
used by the dataset job (:mod:`build_dataset`) to check raw columns before Spark starts and to
make the part files it writes byte-reproducible (:func:`canonicalize_footer`).

Standard library only, and no import of ``mlpipeline`` or ``airflow``: ``spark-submit`` ships
this file next to the job (``--py-files``), and ``python build_dataset.py`` finds it beside the
script.
"""

from __future__ import annotations

import os
import struct

#: What reading a damaged footer can raise (all of it means "not a readable Parquet file").
READ_ERRORS = (OSError, ValueError, KeyError, IndexError, TypeError, struct.error)


class _Compact:
    """Decodes Thrift compact-protocol structs into ``{field_id: value}`` dicts."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _byte(self) -> int:
        b = self.data[self.pos]
        self.pos += 1
        return b

    def _varint(self) -> int:
        shift = result = 0
        while True:
            b = self._byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    def _zigzag(self) -> int:
        n = self._varint()
        return (n >> 1) ^ -(n & 1)

    def _value(self, ctype: int):
        if ctype in (1, 2):  # bool inside a struct: the type carries the value
            return ctype == 1
        if ctype == 3:
            return struct.unpack("b", bytes([self._byte()]))[0]
        if ctype in (4, 5, 6):
            return self._zigzag()
        if ctype == 7:
            (value,) = struct.unpack_from("<d", self.data, self.pos)
            self.pos += 8
            return value
        if ctype == 8:
            size = self._varint()
            value = self.data[self.pos : self.pos + size]
            self.pos += size
            return value
        if ctype in (9, 10):
            header = self._byte()
            size, etype = header >> 4, header & 0x0F
            if size == 15:
                size = self._varint()
            if etype in (1, 2):  # bools in a list are one byte each
                return [self._byte() == 1 for _ in range(size)]
            start = self.pos
            items = _List(self._value(etype) for _ in range(size))
            items.span = (start, self.pos)
            return items
        if ctype == 11:
            size = self._varint()
            if size == 0:
                return {}
            types = self._byte()
            return {self._value(types >> 4): self._value(types & 0x0F) for _ in range(size)}
        if ctype == 12:
            return self.read_struct()
        raise ValueError(f"unknown Thrift compact type {ctype}")

    def read_struct(self) -> dict:
        fields = {}
        last_id = 0
        while True:
            header = self._byte()
            if header == 0:
                return fields
            delta, ctype = header >> 4, header & 0x0F
            field_id = last_id + delta if delta else self._zigzag()
            fields[field_id] = self._value(ctype)
            last_id = field_id


class _List(list):
    """A decoded Thrift list that remembers the byte span of its elements."""

    span: tuple[int, int] = (0, 0)


# Parquet physical types and (legacy) converted types, as numbered in parquet.thrift.
_PHYSICAL = {
    0: "boolean",
    1: "int32",
    2: "int64",
    3: "int96",
    4: "float",
    5: "double",
    6: "binary",
    7: "fixed",
}
_CONVERTED_INT = {15: "tinyint", 16: "smallint", 17: "int", 18: "bigint"}
_CONVERTED_UINT = {11: "tinyint unsigned", 12: "smallint unsigned", 13: "int unsigned", 14: "bigint unsigned"}


def _leaf_type(element: dict) -> str:
    """Spark-style name of the type Spark reads for one Parquet leaf column."""
    physical = _PHYSICAL.get(element.get(1), "unknown")
    logical = element.get(10) or {}
    converted = element.get(6)
    if 1 in logical or 4 in logical or 12 in logical or converted in (0, 4, 19):
        return "string" if physical == "binary" else f"string({physical})"
    if 5 in logical or converted == 5:
        return "decimal"
    if 6 in logical or converted == 6:
        return "date"
    if 7 in logical or converted in (7, 8):
        return "time"
    if 8 in logical:
        ts = logical[8]
        unit = {1: "millis", 2: "micros", 3: "nanos"}.get(next(iter(ts.get(2) or {1: 0})), "?")
        if unit == "nanos":
            return "timestamp(nanos)"  # Spark refuses nanosecond timestamps by default
        return "timestamp" if ts.get(1) else "timestamp_ntz"
    if converted in (9, 10):
        return "timestamp"
    if 10 in logical:
        bits, signed = logical[10].get(1), logical[10].get(2)
        names = {8: "tinyint", 16: "smallint", 32: "int", 64: "bigint"}
        return names.get(bits, f"int{bits}") + ("" if signed else " unsigned")
    if converted in _CONVERTED_INT:
        return _CONVERTED_INT[converted]
    if converted in _CONVERTED_UINT:
        return _CONVERTED_UINT[converted]
    return {"int32": "int", "int64": "bigint", "int96": "timestamp"}.get(physical, physical)


def _read_footer(path: str) -> tuple[bytes, int]:
    """The Thrift-encoded FileMetaData of a Parquet file and its offset in the file."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        if size < 12:
            raise ValueError("file too small")
        fh.seek(size - 8)
        tail = fh.read(8)
        if tail[4:] != b"PAR1":
            raise ValueError("no PAR1 magic at the end")
        (footer_len,) = struct.unpack("<i", tail[:4])
        if footer_len <= 0 or footer_len > size - 12:
            raise ValueError(f"bad footer length {footer_len}")
        fh.seek(size - 8 - footer_len)
        return fh.read(footer_len), size - 8 - footer_len


def canonicalize_footer(path: str) -> bool:
    """Sort each column chunk's ``encodings`` list in place; True if the file changed.

    parquet-mr collects a column chunk's encodings in a ``HashSet`` of enums, whose iteration
    order follows identity hash codes and so changes from one JVM to the next: two runs on the
    same data write the same pages but list e.g. ``PLAIN, RLE, BIT_PACKED`` in another order.
    Sorting the one-byte elements in place keeps every offset and length, so the file stays
    valid and becomes byte-reproducible.
    """
    footer, offset = _read_footer(path)
    metadata = _Compact(footer).read_struct()
    patched = bytearray(footer)
    for row_group in metadata.get(4) or []:
        for chunk in row_group.get(1) or []:
            encodings = (chunk.get(3) or {}).get(2)
            if not isinstance(encodings, _List):
                continue
            start, end = encodings.span
            if end - start != len(encodings):  # not one byte per element: leave it alone
                continue
            patched[start:end] = bytes(sorted(footer[start:end], key=lambda b: (b >> 1) ^ -(b & 1)))
    if patched == footer:
        return False
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(patched)
    return True


def parquet_num_rows(path: str) -> int:
    """The number of rows a Parquet file holds (``FileMetaData.num_rows``)."""
    footer, _offset = _read_footer(path)
    return int(_Compact(footer).read_struct()[3])


def parquet_columns(path: str) -> dict[str, str]:
    """``{column: type}`` of the top-level columns of a Parquet file, read from its footer."""
    footer, _offset = _read_footer(path)
    schema = _Compact(footer).read_struct().get(2) or []
    if not schema:
        raise ValueError("footer has no schema")
    columns: dict[str, str] = {}
    index = 1
    for _ in range(schema[0].get(5, 0)):  # the root's children are the top-level columns
        element = schema[index]
        name = element[4].decode("utf-8")
        children = element.get(5)
        if children:
            columns[name] = "nested"
            index = _skip_subtree(schema, index)
        else:
            columns[name] = _leaf_type(element)
            index += 1
    return columns


def _skip_subtree(schema: list, index: int) -> int:
    """Index just after the schema element at ``index`` and all its descendants."""
    pending = 1
    while pending:
        pending += (schema[index].get(5) or 0) - 1
        index += 1
    return index
