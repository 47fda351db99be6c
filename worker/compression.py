"""Small stored records compressed with a preset dictionary (Zstandard), and read back.

A lead's checkpoint, its state record and the fold at the head of its log are a few hundred
bytes to ~1.5 KB each, and most of it is the same words in every lead: state and rule names,
decision names, input keys, msgpack and JSON framing. A general compressor finds little to
share inside one such record (zlib: ~1,100 B to ~580); with a dictionary of those words it
needs only what is particular to the lead (~1,100 B to ~250; ~3 us to pack, ~1 us to unpack).
That was the largest part of a lead's memory (issue #13), and it is read and written as often
as the record itself, so the codec has to be fast: hence zstandard (its dictionaries are the
reference implementation's; zlib with a preset dictionary gave ~420 B for ~30 us a compression).

A packed record is `MARK`, the dictionary's number, then a zstd frame without its magic
number (4 bytes every record would repeat). `MARK` is 0xc1, a byte msgpack never uses and
JSON never starts with, so anything else is a record written before compression, read as it
is: a store upgrades record by record, as each is rewritten. The dictionaries are frozen: a
record says which one packed it, and every dictionary ever shipped stays readable
(`bench/zdict_train.py` says how v1 was built, from histories unlike the benchmarks').
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import zstandard

from worker.errors import StoreError

MARK = 0xC1
CURRENT = 1
# Zstandard level 3 (its default): smaller records than 1, still ~2 us on these sizes.
LEVEL = 3
_FORMAT = zstandard.FORMAT_ZSTD1_MAGICLESS


@cache
def _dictionary(number: int) -> zstandard.ZstdCompressionDict:
    try:
        raw = resources.files("worker").joinpath(f"zdict/v{number}.bin").read_bytes()
    except FileNotFoundError:
        raise StoreError(f"a record was packed with dictionary {number}, which this version does not have") from None
    return zstandard.ZstdCompressionDict(raw, dict_type=zstandard.DICT_TYPE_FULLDICT)


@cache
def _compressor() -> zstandard.ZstdCompressor:
    params = zstandard.ZstdCompressionParameters.from_level(
        LEVEL, format=_FORMAT, write_content_size=True, write_checksum=False, write_dict_id=False
    )
    return zstandard.ZstdCompressor(dict_data=_dictionary(CURRENT), compression_params=params)


@cache
def _decompressor(number: int) -> zstandard.ZstdDecompressor:
    return zstandard.ZstdDecompressor(dict_data=_dictionary(number), format=_FORMAT)


_HEAD = bytes((MARK, CURRENT))


def pack(raw: bytes) -> bytes:
    """Compress one record (msgpack or JSON bytes)."""
    return _HEAD + _compressor().compress(raw)


def unpack(blob: bytes) -> bytes:
    """The record `pack` was given; a record written before compression comes back as it is."""
    if not blob or blob[0] != MARK:
        return blob
    try:
        return _decompressor(blob[1]).decompress(blob[2:])
    except (zstandard.ZstdError, IndexError) as exc:
        raise StoreError(f"a stored record is damaged: {exc}") from None


def is_packed(blob: bytes | None) -> bool:
    return bool(blob) and blob[0] == MARK  # type: ignore[index]
