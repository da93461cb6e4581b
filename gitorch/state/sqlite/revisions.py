"""Applied revisions and their per-service results (tables ``revisions``, ``revision_services``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gitorch.state import rows
from gitorch.state.db import translate
from gitorch.state.errors import RecordNotFound
from gitorch.state.records import NOT_APPLIED, RevisionRecord, RevisionResult

if TYPE_CHECKING:
    from gitorch.state.sqlite.database import Database

# Every revisions query returns the per-service outcomes as one JSON object column, so a
# list of N revisions is one statement, not 1 + N.
_REVISION_COLUMNS = """
    r.id, r.sha, r.author, r.committed_at, r.signer, r.applied_at, r.result, r.reason,
    r.summary, r.trigger,
    (SELECT json_group_object(s.service, s.result) FROM revision_services s
      WHERE s.revision_id = r.id) AS service_results
"""


class Revisions:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(
        self,
        sha: str,
        *,
        author: str,
        committed_at: str | None,
        signer: str | None,
        services: Sequence[str],
        result: RevisionResult,
        reason: str,
        summary: Mapping[str, Any] | None,
        at: float | None,
        trigger: str,
    ) -> RevisionRecord:
        applied_at = self.db.now(at)
        with self.db.transaction():
            cursor = self.db.execute(
                "INSERT INTO revisions (sha, author, committed_at, signer, applied_at,"
                " result, reason, summary, trigger) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    sha,
                    author,
                    committed_at,
                    signer,
                    applied_at,
                    RevisionResult(result).value,
                    reason,
                    rows.dump_json(summary),
                    trigger,
                ),
            )
            revision_id = cursor.lastrowid
            assert revision_id is not None  # an INSERT into a rowid table always has one
            with translate(self.db.db_path):
                self.db.conn().executemany(
                    "INSERT INTO revision_services (revision_id, service, result) VALUES (?, ?, ?)",
                    [(revision_id, name, RevisionResult(result).value) for name in services],
                )
        return RevisionRecord(
            id=revision_id,
            sha=sha,
            author=author,
            committed_at=committed_at,
            signer=signer,
            applied_at=applied_at,
            result=RevisionResult(result),
            reason=reason,
            summary=dict(summary or {}),
            service_results={name: RevisionResult(result) for name in services},
            trigger=trigger,
        )

    def finish(
        self,
        revision_id: int,
        result: RevisionResult,
        *,
        reason: str,
        summary: Mapping[str, Any] | None,
        service_results: Mapping[str, RevisionResult] | None,
    ) -> RevisionRecord:
        with self.db.transaction():
            cursor = self.db.execute(
                "UPDATE revisions SET result = ?, reason = ?,"
                " summary = COALESCE(?, summary) WHERE id = ?",
                (
                    RevisionResult(result).value,
                    reason,
                    None if summary is None else rows.dump_json(summary),
                    revision_id,
                ),
            )
            if cursor.rowcount == 0:
                raise RecordNotFound(f"no applied revision with id {revision_id}")
            self.db.execute(
                "UPDATE revision_services SET result = ? WHERE revision_id = ?",
                (RevisionResult(result).value, revision_id),
            )
            for name, outcome in (service_results or {}).items():
                self.db.execute(
                    "INSERT INTO revision_services (revision_id, service, result)"
                    " VALUES (?, ?, ?) ON CONFLICT (revision_id, service)"
                    " DO UPDATE SET result = excluded.result",
                    (revision_id, name, RevisionResult(outcome).value),
                )
            record = self.get(revision_id)
        assert record is not None  # updated above, inside the same transaction
        return record

    def get(self, revision_id: int) -> RevisionRecord | None:
        row = self.db.query_one(
            f"SELECT {_REVISION_COLUMNS} FROM revisions r WHERE r.id = ?", (revision_id,)
        )
        return None if row is None else rows.revision(row)

    def list(
        self, *, service: str | None, limit: int | None, before_id: int | None
    ) -> list[RevisionRecord]:
        where: list[str] = []
        params: list[Any] = []
        if service is not None:
            where.append("r.id IN (SELECT revision_id FROM revision_services WHERE service = ?)")
            params.append(service)
        if before_id is not None:
            where.append("r.id < ?")
            params.append(before_id)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        params.append(-1 if limit is None else limit)
        found = self.db.query(
            f"SELECT {_REVISION_COLUMNS} FROM revisions r {clause} ORDER BY r.id DESC LIMIT ?",
            params,
        )
        return [rows.revision(row) for row in found]

    def last_applied(self) -> RevisionRecord | None:
        row = self.db.query_one(
            f"SELECT {_REVISION_COLUMNS} FROM revisions r WHERE r.result IN (?, ?)"
            " ORDER BY r.id DESC LIMIT 1",
            (RevisionResult.SUCCEEDED.value, RevisionResult.NO_CHANGES.value),
        )
        return None if row is None else rows.revision(row)

    def last_attempted(self) -> RevisionRecord | None:
        row = self.db.query_one(
            f"SELECT {_REVISION_COLUMNS} FROM revisions r ORDER BY r.id DESC LIMIT 1"
        )
        return None if row is None else rows.revision(row)

    def last_admitted(self) -> RevisionRecord | None:
        skipped = sorted(result.value for result in NOT_APPLIED)
        row = self.db.query_one(
            f"SELECT {_REVISION_COLUMNS} FROM revisions r"
            f" WHERE r.result NOT IN ({', '.join('?' for _ in skipped)})"
            " ORDER BY r.id DESC LIMIT 1",
            tuple(skipped),
        )
        return None if row is None else rows.revision(row)

    def last_successful(self, service: str) -> RevisionRecord | None:
        row = self.db.query_one(
            f"SELECT {_REVISION_COLUMNS} FROM revisions r WHERE r.id = ("
            " SELECT MAX(revision_id) FROM revision_services"
            " WHERE service = ? AND result = ?)",
            (service, RevisionResult.SUCCEEDED.value),
        )
        return None if row is None else rows.revision(row)

    def last_successful_per_service(self) -> dict[str, RevisionRecord]:
        found = self.db.query(
            f"SELECT best.service AS for_service, {_REVISION_COLUMNS}"
            " FROM (SELECT service, MAX(revision_id) AS revision_id FROM revision_services"
            "       WHERE result = ? GROUP BY service) AS best"
            " JOIN revisions r ON r.id = best.revision_id ORDER BY best.service",
            (RevisionResult.SUCCEEDED.value,),
        )
        return {row["for_service"]: rows.revision(row) for row in found}
