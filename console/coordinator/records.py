"""The coordinator's mutable records of clients and rounds, each caching its broadcast view.

A snapshot is built on every broadcast, so a record keeps its frozen view (and a round its
dict form) until something in it changes; an epoch boundary with 1,000 clients then rebuilds
only the views that changed.
"""

from __future__ import annotations

from typing import Any

from transport.state import ClientStatus, ClientView, ResultRef, RoundView, round_to_dict


def is_int(value: object) -> bool:
    """An int that is not a bool (what every count and round number must be)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_id(value: object) -> bool:
    """A non-empty string (what every client id and hash must be)."""
    return isinstance(value, str) and value != ""


def _fast_client_view(**fields: Any) -> ClientView:
    """A ClientView without the frozen dataclass's per-field ``object.__setattr__``.

    2-3x cheaper, which matters when an epoch boundary rebuilds 1,000 views in one snapshot.
    Only used while ClientView keeps a plain ``__dict__`` (checked below, and a test compares
    it with the real constructor).
    """
    view = _new(ClientView)
    view.__dict__.update(fields)
    return view


_new = object.__new__
_client_view: Any = (
    _fast_client_view
    if "__slots__" not in vars(ClientView) and not hasattr(ClientView, "__post_init__")
    else ClientView
)


class Client:
    """One client's mutable record; its :class:`ClientView` is cached until :meth:`changed`."""

    __slots__ = (
        "id",
        "status",
        "endpoint",
        "warmed_up",
        "last_seen",
        "joined_at",
        "drop_reason",
        "public_key",
        "_view",
    )

    def __init__(self, cid: str, status: ClientStatus, endpoint: str, now: float) -> None:
        self.id = cid
        self.status = status
        self.endpoint = endpoint
        self.warmed_up = False
        self.last_seen = now
        self.joined_at = now
        self.drop_reason = ""
        self.public_key = ""
        self._view: ClientView | None = None

    def changed(self) -> None:
        self._view = None

    def view(self) -> ClientView:
        if self._view is None:
            self._view = _client_view(
                id=self.id,
                status=self.status,
                gossip_endpoint=self.endpoint,
                warmed_up=self.warmed_up,
                last_seen=self.last_seen,
                joined_at=self.joined_at,
                drop_reason=self.drop_reason,
                public_key=self.public_key,
            )
        return self._view


class Round:
    """One round's mutable record; its :class:`RoundView` is cached until :meth:`changed`."""

    __slots__ = (
        "round",
        "epoch",
        "seed",
        "train_set",
        "witnesses",
        "quorum",
        "started",
        "ended",
        "outcome",
        "commits",
        "attestations",
        "accepted",
        "aggregates",
        "members",
        "_view",
        "_dict",
    )

    def __init__(self, view: RoundView, members: frozenset[str] = frozenset()) -> None:
        self.round = view.round
        self.epoch = view.epoch
        self.seed = view.seed
        self.train_set = view.train_set
        self.witnesses = view.witnesses
        self.quorum = view.quorum
        self.started = view.started
        self.ended = view.ended
        self.outcome = view.outcome
        self.commits: dict[str, ResultRef] = dict(view.commits)
        self.attestations: dict[str, dict[str, str]] = {
            w: dict(a) for w, a in view.attestations.items()
        }
        self.accepted: dict[str, ResultRef] = dict(view.accepted)
        self.aggregates: dict[str, str] = dict(view.aggregates)
        self.members = members  # live epoch clients at the start (not persisted)
        self._view: RoundView | None = None
        self._dict: dict[str, Any] | None = None

    def changed(self) -> None:
        self._view = None
        self._dict = None

    def as_dict(self) -> dict[str, Any]:
        """:func:`round_to_dict` of the view, cached like it (treat it as read-only)."""
        if self._dict is None:
            self._dict = round_to_dict(self.view())
        return self._dict

    def view(self) -> RoundView:
        if self._view is None:
            self._view = RoundView(
                round=self.round,
                epoch=self.epoch,
                seed=self.seed,
                train_set=self.train_set,
                witnesses=self.witnesses,
                quorum=self.quorum,
                started=self.started,
                ended=self.ended,
                outcome=self.outcome,
                commits=dict(self.commits),
                attestations={w: dict(a) for w, a in self.attestations.items()},
                accepted=dict(self.accepted),
                aggregates=dict(self.aggregates),
            )
        return self._view
