"""Each service's rollout record, and the promote/abort requests on it (table ``rollouts``)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from gitorch.state import rows
from gitorch.state.records import RolloutRecord
from gitorch.state.repositories import check_request

if TYPE_CHECKING:
    from gitorch.state.sqlite.database import Database

#: The column of each request ``gitorch promote`` / ``gitorch abort`` can make.
_REQUEST_COLUMNS = {"promote": "promote_requested", "abort": "abort_requested"}


class Rollouts:
    def __init__(self, db: Database) -> None:
        self.db = db

    def upsert(self, record: RolloutRecord, *, reset_requests: bool) -> RolloutRecord:
        now = self.db.clock()
        stored = replace(record, started_at=record.started_at or now, updated_at=now)
        with self.db.transaction():
            cursor = self.db.execute(
                "INSERT INTO rollouts (service, revision, spec_digest, strategy, phase, step,"
                " weight, started_at, updated_at, last_error, previous_revision,"
                " previous_digest, spec, previous_spec, failed_digest, available,"
                " progress_at, message, reached_healthy, step_started_at, promote_requested,"
                " abort_requested, converged_replicas, failed_revision)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (service) DO UPDATE SET"
                " revision = excluded.revision, spec_digest = excluded.spec_digest,"
                " strategy = excluded.strategy, phase = excluded.phase,"
                " step = excluded.step, weight = excluded.weight,"
                " started_at = excluded.started_at, updated_at = excluded.updated_at,"
                " last_error = excluded.last_error,"
                " previous_revision = excluded.previous_revision,"
                " previous_digest = excluded.previous_digest,"
                " spec = excluded.spec, previous_spec = excluded.previous_spec,"
                " failed_digest = excluded.failed_digest, available = excluded.available,"
                " progress_at = excluded.progress_at, message = excluded.message,"
                " reached_healthy = excluded.reached_healthy,"
                " step_started_at = excluded.step_started_at,"
                " converged_replicas = excluded.converged_replicas,"
                " failed_revision = excluded.failed_revision,"
                # Not excluded.*: the stored flags stay unless this save starts a rollout.
                " promote_requested = CASE WHEN ? THEN 0 ELSE promote_requested END,"
                " abort_requested = CASE WHEN ? THEN 0 ELSE abort_requested END"
                " RETURNING promote_requested, abort_requested",
                (
                    stored.service,
                    stored.revision,
                    stored.spec_digest,
                    stored.strategy,
                    stored.phase.value,
                    stored.step,
                    stored.weight,
                    stored.started_at,
                    stored.updated_at,
                    stored.last_error,
                    stored.previous_revision,
                    stored.previous_digest,
                    rows.dump_json(stored.spec),
                    None if stored.previous_spec is None else rows.dump_json(stored.previous_spec),
                    stored.failed_digest,
                    stored.available,
                    stored.progress_at,
                    stored.message,
                    int(stored.reached_healthy),
                    stored.step_started_at,
                    int(stored.promote_requested and not reset_requests),
                    int(stored.abort_requested and not reset_requests),
                    stored.converged_replicas,
                    stored.failed_revision,
                    int(reset_requests),
                    int(reset_requests),
                ),
            )
            flags = cursor.fetchone()
        return replace(
            stored,
            promote_requested=bool(flags["promote_requested"]),
            abort_requested=bool(flags["abort_requested"]),
        )

    def request(self, service: str, what: str) -> bool:
        column = _REQUEST_COLUMNS[check_request(what)]
        with self.db.transaction():
            cursor = self.db.execute(
                f"UPDATE rollouts SET {column} = 1 WHERE service = ?",  # noqa: S608 - fixed map
                (service,),
            )
        return cursor.rowcount > 0

    def consume_request(self, service: str, what: str) -> bool:
        column = _REQUEST_COLUMNS[check_request(what)]
        with self.db.transaction():
            cursor = self.db.execute(
                f"UPDATE rollouts SET {column} = 0 WHERE service = ? AND {column} = 1",  # noqa: S608
                (service,),
            )
        return cursor.rowcount > 0

    def get(self, service: str) -> RolloutRecord | None:
        row = self.db.query_one("SELECT * FROM rollouts WHERE service = ?", (service,))
        return None if row is None else rows.rollout(row)

    def list(self) -> list[RolloutRecord]:
        return [
            rows.rollout(row) for row in self.db.query("SELECT * FROM rollouts ORDER BY service")
        ]

    def delete(self, service: str) -> bool:
        with self.db.transaction():
            cursor = self.db.execute("DELETE FROM rollouts WHERE service = ?", (service,))
        return cursor.rowcount > 0
