"""Analysis runs and their measurements (tables ``analysis_runs``, ``measurements``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gitorch.state import rows
from gitorch.state.errors import RecordNotFound
from gitorch.state.records import (
    AnalysisRunPhase,
    AnalysisRunRecord,
    Measurement,
    MeasurementPhase,
)

if TYPE_CHECKING:
    from gitorch.state.sqlite.database import Database


class Analysis:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add_measurement(
        self,
        service: str,
        revision: str,
        phase: MeasurementPhase,
        *,
        analysis: str,
        value: Mapping[str, Any] | None,
        message: str,
        at: float | None,
        run_id: int | None,
    ) -> Measurement:
        taken_at = self.db.now(at)
        with self.db.transaction():
            cursor = self.db.execute(
                "INSERT INTO measurements (service, revision, analysis, taken_at, phase,"
                " value, message, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    service,
                    revision,
                    analysis,
                    taken_at,
                    MeasurementPhase(phase).value,
                    rows.dump_json(value),
                    message,
                    run_id,
                ),
            )
        assert cursor.lastrowid is not None
        return Measurement(
            id=cursor.lastrowid,
            service=service,
            revision=revision,
            analysis=analysis,
            taken_at=taken_at,
            phase=MeasurementPhase(phase),
            value=dict(value or {}),
            message=message,
            run_id=run_id,
        )

    def list_measurements(
        self,
        service: str | None,
        *,
        revision: str | None,
        analysis: str | None,
        run_id: int | None,
        limit: int | None,
    ) -> list[Measurement]:
        sql = "SELECT * FROM measurements WHERE (? IS NULL OR service = ?)"
        params: list[Any] = [service, service]
        if revision is not None:
            sql += " AND revision = ?"
            params.append(revision)
        if analysis is not None:
            sql += " AND analysis = ?"
            params.append(analysis)
        if run_id is not None:
            sql += " AND run_id = ?"
            params.append(run_id)
        # The newest `limit`, returned oldest first.
        sql = f"SELECT * FROM ({sql} ORDER BY id DESC LIMIT ?) ORDER BY id"
        params.append(-1 if limit is None else limit)
        return [rows.measurement(row) for row in self.db.query(sql, params)]

    def open_run(
        self,
        service: str,
        revision: str,
        analysis: str,
        step_started_at: float,
        *,
        at: float | None,
    ) -> AnalysisRunRecord:
        identity = (service, revision, analysis, step_started_at)
        with self.db.transaction():
            self.db.execute(
                "INSERT INTO analysis_runs (service, revision, analysis, step_started_at,"
                " started_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (service, revision, analysis, step_started_at) DO NOTHING",
                (*identity, self.db.now(at)),
            )
            row = self.db.query_one(
                "SELECT * FROM analysis_runs WHERE service = ? AND revision = ?"
                " AND analysis = ? AND step_started_at = ?",
                identity,
            )
        assert row is not None  # inserted or found just above, in the same transaction
        return rows.analysis_run(row)

    def conclude_run(
        self, run_id: int, phase: AnalysisRunPhase, message: str, *, at: float | None
    ) -> AnalysisRunRecord:
        phase = AnalysisRunPhase(phase)
        with self.db.transaction():
            cursor = self.db.execute(
                "UPDATE analysis_runs SET phase = ?, message = ?,"
                " concluded_at = CASE WHEN ? = 'running' THEN NULL"
                " ELSE COALESCE(concluded_at, ?) END WHERE id = ?",
                (phase.value, message, phase.value, self.db.now(at), run_id),
            )
            if cursor.rowcount == 0:
                raise RecordNotFound(f"no analysis run with id {run_id}")
            row = self.db.query_one("SELECT * FROM analysis_runs WHERE id = ?", (run_id,))
        assert row is not None
        return rows.analysis_run(row)

    def list_runs(
        self, service: str | None, *, revision: str | None, step_started_at: float | None
    ) -> list[AnalysisRunRecord]:
        sql = "SELECT * FROM analysis_runs WHERE (? IS NULL OR service = ?)"
        params: list[Any] = [service, service]
        if revision is not None:
            sql += " AND revision = ?"
            params.append(revision)
        if step_started_at is not None:
            sql += " AND step_started_at = ?"
            params.append(step_started_at)
        return [rows.analysis_run(row) for row in self.db.query(sql + " ORDER BY id", params)]

    def set_window(self, run_id: int, figures: Mapping[str, Any]) -> None:
        with self.db.transaction():
            self.db.execute(
                "UPDATE analysis_runs SET window_figures = ? WHERE id = ?",
                (rows.dump_json(figures), run_id),
            )
