"""The shape checks of what nodes send: a bad message is a rejection, never an exception."""

from __future__ import annotations

from collections.abc import Sequence


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_id(value: object) -> bool:
    return isinstance(value, str) and value != ""


def parse_candidates(raw: object, limit: int) -> tuple[tuple[str, int], ...] | str:
    """A vote's candidates as (id, weight >= 0) pairs, or what is wrong with them."""
    if isinstance(raw, str | bytes) or not isinstance(raw, Sequence):
        return "candidates must be a list of [client_id, weight] pairs"
    if len(raw) > limit:
        return f"{len(raw)} candidates; at most {limit} (the epoch's clients)"
    out: list[tuple[str, int]] = []
    seen: set[str] = set()
    for item in raw:
        if not isinstance(item, tuple | list) or len(item) != 2:
            return f"candidate {item!r} is not a [client_id, weight] pair"
        cid, weight = item
        if not is_id(cid) or not is_int(weight) or weight < 0:
            return f"candidate {item!r} needs a client id and an integer weight >= 0"
        if cid in seen:
            return f"candidate {cid!r} is named twice"
        seen.add(cid)
        out.append((cid, weight))
    return tuple(out)
