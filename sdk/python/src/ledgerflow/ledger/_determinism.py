"""Deterministic randomness for workflow bodies, bit-exact across SDKs.

``ctx.random()`` and ``ctx.uuid4()`` must return the same sequence on every
replay of a run and in every language, so the algorithm is fixed: Mulberry32
seeded with FNV-1a-32 of the run id, exactly as the reference ``determinism.ts``.
All arithmetic is done modulo 2**32, which reproduces JavaScript's ``Math.imul``
and ``>>>`` bit for bit (signedness does not change the low 32 bits).
"""

from __future__ import annotations

_MASK32 = 0xFFFF_FFFF
_FNV_OFFSET = 0x811C_9DC5
_FNV_PRIME = 0x0100_0193
_HEX = "0123456789abcdef"


def fnv1a32(text: str) -> int:
    """Hash ``text`` with 32-bit FNV-1a over its UTF-16 code units.

    The reference hashes ``String.charCodeAt`` values, i.e. UTF-16 code units:
    a character outside the Basic Multilingual Plane contributes its two
    surrogates, so non-ASCII run ids hash the same in every SDK.

    Args:
        text: The string to hash (a run id).

    Returns:
        The unsigned 32-bit hash.
    """
    h = _FNV_OFFSET
    data = text.encode("utf-16-le", "surrogatepass")
    for i in range(0, len(data), 2):
        h ^= data[i] | (data[i + 1] << 8)
        h = (h * _FNV_PRIME) & _MASK32
    return h


class Mulberry32:
    """The Mulberry32 generator: fast, reproducible, not cryptographic."""

    __slots__ = ("_state",)

    def __init__(self, seed: int) -> None:
        """Start the generator.

        Args:
            seed: The seed; only its low 32 bits are used.
        """
        self._state = seed & _MASK32

    def next_uint32(self) -> int:
        """Advance the generator and return its next unsigned 32-bit output."""
        self._state = (self._state + 0x6D2B_79F5) & _MASK32
        t = self._state
        t = ((t ^ (t >> 15)) * (t | 1)) & _MASK32
        t = (t ^ ((t + (((t ^ (t >> 7)) * (t | 61)) & _MASK32)) & _MASK32)) & _MASK32
        return (t ^ (t >> 14)) & _MASK32

    def random(self) -> float:
        """Return the next float in [0, 1), the reference's ``rng()``."""
        return self.next_uint32() / 4_294_967_296


class DeterministicRandom:
    """The random source behind ``ctx.random()`` and ``ctx.uuid4()`` for one run.

    Both draw from one Mulberry32 stream seeded by the run id, in call order,
    as the reference does: a uuid consumes 16 draws.
    """

    __slots__ = ("_rng",)

    def __init__(self, run_id: str) -> None:
        """Seed the stream from ``run_id``.

        Args:
            run_id: The run whose stream this is.
        """
        self._rng = Mulberry32(fnv1a32(run_id))

    def random(self) -> float:
        """Return the next float in [0, 1)."""
        return self._rng.random()

    def uuid4(self) -> str:
        """Return the next v4-shaped uuid string (version and variant bits set)."""
        data = [int(self._rng.random() * 256) for _ in range(16)]
        data[6] = (data[6] & 0x0F) | 0x40
        data[8] = (data[8] & 0x3F) | 0x80
        s = "".join(_HEX[b >> 4] + _HEX[b & 0x0F] for b in data)
        return f"{s[0:8]}-{s[8:12]}-{s[12:16]}-{s[16:20]}-{s[20:32]}"
