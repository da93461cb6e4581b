"""The etcd records of the routing table every host follows (see
:mod:`gitorch.apply.followers`): the leader's last table under ``dataplane/table``, and
what each member record says of its host's copy. Plain data: the table itself is packed
and read by the follower; status reads only the id and the place."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: The key (in the namespace) of the table the leader published last.
TABLE_KEY = "dataplane/table"
#: A member record's fields: whether the daemon follows, and which table its host took.
FOLLOWS_FIELD = "followsTable"
TAKEN_FIELD = "table"


@dataclass(frozen=True)
class Place:
    """Where a data plane runs (host, runtime directory): daemons of one place share
    one proxy."""

    host: str
    runtime_dir: str

    @staticmethod
    def of(record: Mapping[str, Any]) -> Place:
        """The place of a member record (or of a daemon's own info)."""
        return Place(str(record.get("host", "")), str(record.get("runtimeDir", "")))

    @staticmethod
    def from_json(data: Any) -> Place:
        return Place(str(data[0]), str(data[1]))

    def to_json(self) -> list[str]:
        return [self.host, self.runtime_dir]


def taken(record: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """What a member record says its host took: (table id, error)."""
    value = record.get(TAKEN_FIELD)
    if not isinstance(value, Mapping):
        return None, None
    ident, error = value.get("id"), value.get("error")
    return (str(ident) if ident else None), (str(error) if error else None)


def table_state(member: Mapping[str, Any], leader: str | None, stored: Any) -> str:
    """How ``member``'s host serves the leader's table, for status: ``drives`` (the
    leader), ``shares`` (one place with the leader: its proxy), ``follows`` (took the
    last table), ``behind`` (has not yet), ``refused: WHY`` (took it, with what its
    host could not serve), ``no`` (does not follow: `gitorch apply`)."""
    if member.get("name") == leader:
        return "drives"
    if not member.get(FOLLOWS_FIELD):
        return "no"
    ident = stored.get("id") if isinstance(stored, Mapping) else None
    place = stored.get("place") if isinstance(stored, Mapping) else None
    try:
        if place is not None and Place.from_json(place) == Place.of(member):
            return "shares"
    except (IndexError, TypeError, KeyError):
        pass
    if ident is None:
        return "follows"  # nothing stored yet: nothing to be behind on
    took, error = taken(member)
    if took != ident:
        return "behind"
    return f"refused: {error}" if error else "follows"
