"""Option values and even splits the strategies share (pure: no MPI, no torch)."""

from __future__ import annotations

from .errors import UsageError

#: Overlap option defaults, merged into the `options` of the strategies that overlap. Two
#: chunks by default: a span's GEMMs re-read the whole weights for fewer rows, and on this
#: machine (bert-base, s128, one rank, 1 thread, no communication, load ~14 on 2 cores)
#: a forward cut into 2/4/8 spans took 1.24/1.61/2.38x as long for tp, 1.03/1.22/1.51x for bp.
OVERLAP_OPTIONS = {"overlap": "off", "chunks": 2}
OVERLAP_MODES = ("off", "on")


def even_split(n: int, parts: int) -> list[int]:
    """n items over `parts` as evenly as possible, the first n % parts parts one larger."""
    return [n // parts + (r < n % parts) for r in range(parts)]


def int_option(who: str, name: str, value, minimum: int) -> int:
    """An integer option (an int or its decimal string from a command line) >= minimum."""
    try:
        number = int(value)
        if isinstance(value, bool) or (isinstance(value, float) and value != number):
            raise ValueError
    except (TypeError, ValueError):
        raise UsageError(f"{who}: option {name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise UsageError(f"{who}: option {name} must be >= {minimum}, got {number}")
    return number


def overlap_chunks(who: str, options: dict) -> int:
    """Chunks a forward cuts its work into: 1 with overlap off, else the `chunks` option."""
    overlap = options.get("overlap", "off")
    if overlap not in OVERLAP_MODES:
        raise UsageError(f"{who}: overlap must be off or on, got {overlap!r}")
    chunks = int_option(who, "chunks", options.get("chunks", OVERLAP_OPTIONS["chunks"]), 1)
    return chunks if overlap == "on" else 1


def spans(who: str, length: int, chunks: int, what: str = "the sequence length") -> list[tuple[int, int]]:
    """(start, length) of `chunks` consecutive pieces of range(length), as even as possible."""
    if chunks > length:
        raise UsageError(f"{who}: chunks ({chunks}) must be <= {what} ({length})")
    sizes = even_split(length, chunks)
    return [(sum(sizes[:i]), n) for i, n in enumerate(sizes)]
