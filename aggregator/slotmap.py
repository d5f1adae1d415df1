"""Integer keys to slots in arrays: the compact maps behind the story index and the known items.

A long-running daemon keeps tens of thousands of ids, hashes and n-grams in memory. As dict
entries with int objects each takes about 100 bytes; packed in sorted arrays, 8.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import MutableSequence, Sequence
from typing import Any

U32 = 0xFFFF_FFFF


class SlotMap:
    """Integer keys to slots (positions in a caller's arrays), several slots per key.

    2**bits buckets, each a sorted `array('Q')` of ``(key >> bits) << 32 | slot`` for the keys
    whose low bits are the bucket's: 8 bytes an entry where a dict entry and its int objects take
    about 100. Looking up, adding and removing are bisections and one memmove in C. A key keeps
    bits + 32 of its bits, so two keys of a big window can share an entry: callers that need the
    exact key (titles, URLs, ids) check it against what the slot holds.
    """

    __slots__ = ("_bits", "_buckets", "_mask")

    def __init__(self, bits: int) -> None:
        self._bits = bits
        self._mask = (1 << bits) - 1
        self._buckets = [array("Q") for _ in range(1 << bits)]

    def __len__(self) -> int:
        return sum(map(len, self._buckets))

    def span(self, key: int) -> tuple[array[int], int, int]:
        """The bucket holding `key` and the range of its entries there (a slot is `entry & U32`)."""
        bucket = self._buckets[key & self._mask]
        prefix = ((key >> self._bits) & U32) << 32
        lo = bisect_left(bucket, prefix)
        if lo == len(bucket) or bucket[lo] - prefix > U32:
            return bucket, lo, lo  # the usual answer for a key not held, without a second bisection
        return bucket, lo, bisect_left(bucket, prefix + (1 << 32), lo)

    def first(self, key: int) -> int:
        """The lowest slot held for `key`, or -1 (one bisection: exact keys seldom share an entry)."""
        bucket = self._buckets[key & self._mask]
        prefix = ((key >> self._bits) & U32) << 32
        i = bisect_left(bucket, prefix)
        if i < len(bucket) and (packed := bucket[i]) - prefix <= U32:
            return packed & U32
        return -1

    def find(self, key: int, column: Sequence[int]) -> int:
        """The slot held for `key` whose `column[slot]` is `key` (a column of whole keys, such as
        ids), or -1."""
        slot = self.first(key)
        if slot < 0 or column[slot] == key:
            return slot
        return next((s for s in self.slots(key) if column[s] == key), -1)

    def slots(self, key: int) -> list[int]:
        bucket, lo, hi = self.span(key)
        return [packed & U32 for packed in bucket[lo:hi]] if hi > lo else []

    def _find(self, key: int, slot: int) -> tuple[array[int], int, int]:
        bucket = self._buckets[key & self._mask]
        packed = ((key >> self._bits) & U32) << 32 | slot
        return bucket, bisect_left(bucket, packed), packed

    def has(self, key: int, slot: int) -> bool:
        bucket, i, packed = self._find(key, slot)
        return i < len(bucket) and bucket[i] == packed

    def add(self, key: int, slot: int) -> None:
        bucket, i, packed = self._find(key, slot)
        if i == len(bucket) or bucket[i] != packed:
            bucket.insert(i, packed)

    def remove(self, key: int, slot: int) -> None:
        bucket, i, packed = self._find(key, slot)
        if i < len(bucket) and bucket[i] == packed:
            del bucket[i]


def put_row(columns: Sequence[MutableSequence[Any]], values: Sequence[Any], free: list[int]) -> int:
    """Write one row across parallel columns (arrays, lists): into a freed slot when there is
    one, else appended. Returns the slot."""
    if free:
        slot = free.pop()
        for column, value in zip(columns, values, strict=True):
            column[slot] = value
        return slot
    for column, value in zip(columns, values, strict=True):
        column.append(value)
    return len(columns[0]) - 1
