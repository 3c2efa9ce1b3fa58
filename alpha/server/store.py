"""The dashboard's storage: one SQLite file in WAL mode, schema versioned in code.

Migrations are a list of SQL scripts; ``PRAGMA user_version`` records how many have run, and each
pending one runs in its own transaction. Writes go through one writer connection and are committed
with ``synchronous=FULL`` before the method returns, so an HTTP 2xx means the data is on disk;
writes that arrive together share one transaction and one fsync (group commit, ``_submit``).
Readers use their own connections (one per thread), which WAL lets run while a write is in
progress.

Rules that fix the reference's data loss (reference/ops.md §9.2): ``latest_step`` only grows,
``best_val_loss`` only shrinks, a resumed run keeps its progress, a re-sent step replaces the old
row (idempotent, and a rolled-back run shows what it actually trained), samples are keyed by
(run, step, index) so every batch is kept, and events carrying a client id are stored once.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from alpha.events import utc_now_iso
from alpha.server.protocol import (
    FAILURE_KINDS,
    METRIC_COLUMNS,
    METRIC_FIELDS,
    OUTCOME_STATUS,
    EventRow,
    SampleBatch,
    metric_to_wire,
)


def _metric_column_sql() -> str:
    types = {"real": "REAL", "int": "INTEGER", "text": "TEXT", "json": "TEXT"}
    return ",\n  ".join(f"{column} {types[kind]}" for _, column, kind in METRIC_FIELDS)


MIGRATIONS: list[str] = [
    # 1: the whole schema
    f"""
CREATE TABLE runs (
  id TEXT PRIMARY KEY,
  domain TEXT NOT NULL DEFAULT 'unknown',
  status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'completed', 'stale', 'failed')),
  outcome TEXT,
  status_reason TEXT,
  model_config TEXT NOT NULL DEFAULT '{{}}',
  train_config TEXT NOT NULL DEFAULT '{{}}',
  total_params INTEGER,
  total_iters INTEGER,
  infra TEXT,
  extra TEXT,
  latest_step INTEGER NOT NULL DEFAULT 0,
  last_loss REAL,
  best_val_loss REAL,
  symbio INTEGER NOT NULL DEFAULT 0,
  symbio_mode TEXT,
  ffn_activation TEXT,
  symbio_generation INTEGER,
  symbio_winner TEXT,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  last_ingest REAL NOT NULL
);
CREATE INDEX runs_created ON runs (created_at DESC);

CREATE TABLE metrics (
  run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
  step INTEGER NOT NULL,
  {_metric_column_sql()},
  extra TEXT,
  PRIMARY KEY (run_id, step)
) WITHOUT ROWID;

CREATE TABLE samples (
  run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
  step INTEGER NOT NULL,
  idx INTEGER NOT NULL,
  prompt TEXT NOT NULL,
  output TEXT NOT NULL,
  created_at TEXT NOT NULL,
  PRIMARY KEY (run_id, step, idx)
) WITHOUT ROWID;

CREATE TABLE sample_batches (
  run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
  step INTEGER NOT NULL,
  trend TEXT,
  created_at TEXT NOT NULL,
  PRIMARY KEY (run_id, step)
) WITHOUT ROWID;

CREATE TABLE events (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
  client_id TEXT,
  step INTEGER,
  level TEXT NOT NULL DEFAULT 'info' CHECK (level IN ('debug', 'info', 'warn', 'error')),
  kind TEXT NOT NULL,
  message TEXT NOT NULL,
  payload_json TEXT,
  created_at TEXT NOT NULL
);
CREATE UNIQUE INDEX events_client_id ON events (run_id, client_id);
CREATE INDEX events_run_kind ON events (run_id, kind, id);
CREATE INDEX events_run_level ON events (run_id, level, id);

CREATE TABLE checkpoints (
  run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
  filename TEXT NOT NULL,
  step INTEGER NOT NULL,
  path TEXT NOT NULL,
  bytes INTEGER NOT NULL,
  sha256 TEXT NOT NULL,
  upload_sha256 TEXT,
  created_at TEXT NOT NULL,
  PRIMARY KEY (run_id, filename)
) WITHOUT ROWID;
""",
]

SCHEMA_VERSION = len(MIGRATIONS)

# What the charts draw; the downsampler keeps these columns.
CHART_COLUMNS = (
    "step",
    "loss",
    "val_loss",
    "lr",
    "grad_norm",
    "tokens_per_sec",
    "ms_per_iter",
    "symbio_candidate_name",
)
RUN_JSON_COLUMNS = ("model_config", "train_config", "infra", "extra", "symbio_winner")


class StorageError(RuntimeError):
    """The database could not store or read something (the HTTP layer answers 503)."""


T = TypeVar("T")
MAX_GROUP = 256  # jobs per group commit


class _Job:
    """One queued write: the function, then its result or error once its group committed."""

    __slots__ = ("done", "error", "fn", "result")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False


def _num(value: Any) -> int | float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class Store:
    """All reads and writes of the dashboard's data. Thread-safe; writes are serialized."""

    def __init__(self, path: str | Path, stale_after_s: float = 180.0, busy_timeout_ms: int = 2000) -> None:
        self.path = Path(path)
        self.stale_after_s = stale_after_s
        self.busy_timeout_ms = busy_timeout_ms
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write_lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending: list[_Job] = []
        self._local = threading.local()
        self._writer = self._connect()
        self._migrate()

    # -- connections ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")  # a commit is on disk before we answer 2xx
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def _submit(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a write transaction and return once it is committed (group commit).

        Writers that arrive while another transaction runs queue up; the next one to get the
        write lock runs every queued job in one transaction, each in its own savepoint (a failing
        job is rolled back alone), and commits once. Every job's caller returns after that
        commit, so a 2xx still means "on disk", at one fsync per group instead of per request.
        """
        job = _Job(fn)
        with self._pending_lock:
            self._pending.append(job)
        with self._write_lock:
            if not job.done:
                with self._pending_lock:
                    batch = self._pending[:MAX_GROUP]
                    del self._pending[:MAX_GROUP]
                self._run_group(batch)
        if job.error is not None:
            raise job.error
        return job.result

    def _run_group(self, batch: list[_Job]) -> None:
        conn = self._writer
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._fail(batch, StorageError(f"database unavailable: {exc}"))
            return
        try:
            for job in batch:
                conn.execute("SAVEPOINT job")
                try:
                    job.result = job.fn(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO job")
                    job.error = (
                        StorageError(f"write failed: {exc}") if isinstance(exc, sqlite3.Error) else exc
                    )
                conn.execute("RELEASE job")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback(conn)
            self._fail(batch, StorageError(f"write failed: {exc}"))
            return
        for job in batch:
            job.done = True

    @staticmethod
    def _fail(batch: list[_Job], error: StorageError) -> None:
        for job in batch:
            job.result = None
            if job.error is None:
                job.error = error
            job.done = True

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")

    def _read(self, sql: str, params: tuple | list = ()) -> list[sqlite3.Row]:
        try:
            return self._reader().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"read failed: {exc}") from exc

    def _migrate(self) -> None:
        version = self._writer.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"{self.path} has schema version {version}, newer than this alpha ({SCHEMA_VERSION})"
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):

            def job(conn: sqlite3.Connection, number: int = number) -> None:
                for statement in MIGRATIONS[number - 1].split(";\n"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")

            self._submit(job)  # each migration in its own transaction

    def schema_version(self) -> int:
        return int(self._read("PRAGMA user_version")[0][0])

    def close(self) -> None:
        with self._write_lock:
            self._writer.close()

    # -- writes --------------------------------------------------------------------------------

    @staticmethod
    def _ensure_run(conn: sqlite3.Connection, run_id: str, now_iso: str, now: float) -> None:
        """Data for a run we have not seen a run_start for is kept: the row is made now."""
        conn.execute(
            "INSERT OR IGNORE INTO runs (id, created_at, updated_at, last_ingest) VALUES (?, ?, ?, ?)",
            (run_id, now_iso, now_iso, now),
        )

    @staticmethod
    def _touch(conn: sqlite3.Connection, run_id: str, step: int | None, now_iso: str, now: float) -> None:
        conn.execute(
            "UPDATE runs SET latest_step = MAX(latest_step, COALESCE(?, 0)), updated_at = ?, last_ingest = ?"
            " WHERE id = ?",
            (step, now_iso, now, run_id),
        )

    def run_start(self, run_id: str, body: dict[str, Any]) -> None:
        """Create or update a run. A resume reopens it but never resets its progress."""
        model = body.get("modelConfig") if isinstance(body.get("modelConfig"), dict) else {}
        train = body.get("trainConfig") if isinstance(body.get("trainConfig"), dict) else {}
        infra = body.get("infra") if isinstance(body.get("infra"), dict) else None
        known = {"type", "runId", "domain", "modelConfig", "trainConfig", "totalParams", "infra"}
        extra = {k: v for k, v in body.items() if k not in known}
        symbio_config = train.get("symbioConfig") if isinstance(train.get("symbioConfig"), dict) else None
        symbio = bool(train.get("symbio")) or symbio_config is not None
        symbio_mode = (symbio_config or {}).get("searchMode", "ffn-activation-search") if symbio else None
        domain = body.get("domain") if isinstance(body.get("domain"), str) and body.get("domain") else None
        now, now_iso = time.time(), utc_now_iso()
        values = (
            domain,
            json.dumps(model),
            json.dumps(train),
            _num(body.get("totalParams")),
            _num(train.get("iters")),
            json.dumps(infra) if infra else None,
            json.dumps(extra) if extra else None,
            int(symbio),
            symbio_mode,
            model.get("ffnActivation") if isinstance(model.get("ffnActivation"), str) else None,
            now_iso,
            now,
            run_id,
        )

        def job(conn: sqlite3.Connection) -> Any:
            self._ensure_run(conn, run_id, now_iso, now)
            conn.execute(
                """UPDATE runs SET domain = COALESCE(?, domain), model_config = ?, train_config = ?,
                   total_params = COALESCE(?, total_params), total_iters = COALESCE(?, total_iters),
                   infra = COALESCE(?, infra), extra = COALESCE(?, extra), symbio = MAX(symbio, ?),
                   symbio_mode = COALESCE(?, symbio_mode), ffn_activation = COALESCE(?, ffn_activation),
                   status = 'active', outcome = NULL, status_reason = NULL, updated_at = ?, last_ingest = ?
                   WHERE id = ?""",
                values,
            )

        self._submit(job)

    def add_metrics(self, run_id: str, rows: list[dict[str, Any]]) -> int:
        """Upsert step rows (same step again replaces it) and move the run's progress forward."""
        if not rows:
            return 0
        columns = ("run_id", *METRIC_COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in METRIC_COLUMNS if c != "step")
        sql = (
            f"INSERT INTO metrics ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
            f" ON CONFLICT (run_id, step) DO UPDATE SET {updates}"
        )
        last = max(rows, key=lambda r: r["step"])
        val_losses = [r["val_loss"] for r in rows if r["val_loss"] is not None]
        best_val = min(val_losses) if val_losses else None
        now, now_iso = time.time(), utc_now_iso()

        def job(conn: sqlite3.Connection) -> Any:
            self._ensure_run(conn, run_id, now_iso, now)
            conn.executemany(sql, [(run_id, *(r[c] for c in METRIC_COLUMNS)) for r in rows])
            conn.execute(
                """UPDATE runs SET
                   last_loss = CASE WHEN ? >= latest_step AND ? IS NOT NULL THEN ? ELSE last_loss END,
                   latest_step = MAX(latest_step, ?),
                   best_val_loss = CASE WHEN ? IS NULL THEN best_val_loss
                                        WHEN best_val_loss IS NULL THEN ? ELSE MIN(best_val_loss, ?) END,
                   updated_at = ?, last_ingest = ? WHERE id = ?""",
                (
                    last["step"],
                    last["loss"],
                    last["loss"],
                    last["step"],
                    best_val,
                    best_val,
                    best_val,
                    now_iso,
                    now,
                    run_id,
                ),
            )

        self._submit(job)
        return len(rows)

    def heartbeat(self, run_id: str, step: int | None) -> None:
        now, now_iso = time.time(), utc_now_iso()

        def job(conn: sqlite3.Connection) -> Any:
            self._ensure_run(conn, run_id, now_iso, now)
            self._touch(conn, run_id, step, now_iso, now)

        self._submit(job)

    def add_samples(self, run_id: str, batch: SampleBatch) -> int:
        """Store one sample batch under its step (the run's latest step when none is given)."""
        now, now_iso = time.time(), utc_now_iso()

        def job(conn: sqlite3.Connection) -> Any:
            self._ensure_run(conn, run_id, now_iso, now)
            step = batch.step
            if step is None:
                step = conn.execute("SELECT latest_step FROM runs WHERE id = ?", (run_id,)).fetchone()[0]
            conn.executemany(
                "INSERT INTO samples (run_id, step, idx, prompt, output, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (run_id, step, idx) DO UPDATE SET prompt = excluded.prompt,"
                " output = excluded.output",
                [(run_id, step, i, p, o, now_iso) for i, (p, o) in enumerate(batch.samples)],
            )
            conn.execute(
                "INSERT INTO sample_batches (run_id, step, trend, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (run_id, step) DO UPDATE SET trend = COALESCE(excluded.trend, trend)",
                (run_id, step, batch.trend_json, now_iso),
            )
            self._touch(conn, run_id, batch.step, now_iso, now)
            return step

        return self._submit(job)

    def add_events(self, run_id: str, events: list[EventRow]) -> list[EventRow]:
        """Insert events (those whose client id is already stored are skipped); apply their effects.

        Returns the events actually inserted. Effects: progress, the symbio winner (the winner
        of the latest generation), and the run's end status from training_complete.
        """
        now, now_iso = time.time(), utc_now_iso()

        def job(conn: sqlite3.Connection) -> list[EventRow]:
            inserted: list[EventRow] = []
            self._ensure_run(conn, run_id, now_iso, now)
            for ev in events:
                cursor = conn.execute(
                    "INSERT INTO events (run_id, client_id, step, level, kind, message, payload_json,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, client_id) DO NOTHING",
                    (
                        run_id,
                        ev.client_id,
                        ev.step,
                        ev.level,
                        ev.kind,
                        ev.message,
                        ev.payload_json,
                        ev.created_at,
                    ),
                )
                if cursor.rowcount == 1:
                    inserted.append(ev)
                    self._apply_event(conn, run_id, ev)
            steps = [ev.step for ev in events if ev.step is not None]
            self._touch(conn, run_id, max(steps) if steps else None, now_iso, now)
            return inserted

        return self._submit(job)

    def _apply_event(self, conn: sqlite3.Connection, run_id: str, ev: EventRow) -> None:
        payload = ev.payload or {}
        if ev.kind == "symbio_generation":
            generation = payload.get("generation")
            winner = payload.get("winner")
            if isinstance(generation, int) and isinstance(winner, dict):
                conn.execute(
                    "UPDATE runs SET symbio = 1, symbio_winner = ?, symbio_generation = ?"
                    " WHERE id = ? AND (symbio_generation IS NULL OR symbio_generation <= ?)",
                    (json.dumps(winner), generation, run_id, generation),
                )
        elif ev.kind == "training_complete":
            outcome = payload.get("status") if payload.get("status") in OUTCOME_STATUS else "completed"
            final = payload.get("finalStep", ev.step)
            reason = payload.get("reason") if isinstance(payload.get("reason"), str) else None
            self._finish(conn, run_id, final if isinstance(final, int) else None, outcome, reason)
        elif ev.kind in FAILURE_KINDS:
            self._finish(conn, run_id, ev.step, "failed", ev.message)

    @staticmethod
    def _finish(
        conn: sqlite3.Connection, run_id: str, step: int | None, outcome: str, reason: str | None
    ) -> None:
        conn.execute(
            "UPDATE runs SET status = ?, outcome = ?, status_reason = ?,"
            " latest_step = MAX(latest_step, COALESCE(?, 0)) WHERE id = ?",
            (OUTCOME_STATUS[outcome], outcome, reason or None, step, run_id),
        )

    def complete(self, run_id: str, final_step: int, outcome: str, reason: str | None) -> str:
        """``POST /api/ingest/complete``: the run ended; returns its new status."""
        now, now_iso = time.time(), utc_now_iso()

        def job(conn: sqlite3.Connection) -> Any:
            self._ensure_run(conn, run_id, now_iso, now)
            self._finish(conn, run_id, final_step, outcome, reason)
            conn.execute(
                "UPDATE runs SET updated_at = ?, last_ingest = ? WHERE id = ?", (now_iso, now, run_id)
            )

        self._submit(job)
        return OUTCOME_STATUS[outcome]

    def add_checkpoint(
        self,
        run_id: str,
        step: int,
        filename: str,
        path: str,
        size: int,
        sha256: str,
        upload_sha256: str | None,
        config: dict[str, Any] | None,
    ) -> None:
        """Record an uploaded checkpoint; a run known only from its upload gets a row too."""
        now, now_iso = time.time(), utc_now_iso()

        def job(conn: sqlite3.Connection) -> Any:
            exists = conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone()
            if not exists:
                given = config or {}
                conn.execute(
                    "INSERT INTO runs (id, domain, status, model_config, train_config, latest_step,"
                    " created_at, updated_at, last_ingest) VALUES (?, ?, 'completed', ?, ?, ?, ?, ?, ?)",
                    (
                        run_id,
                        str(given.get("domain") or "unknown"),
                        json.dumps(given.get("modelConfig") or {}),
                        json.dumps(given.get("trainConfig") or {}),
                        step,
                        now_iso,
                        now_iso,
                        now,
                    ),
                )
            conn.execute(
                "INSERT INTO checkpoints"
                " (run_id, filename, step, path, bytes, sha256, upload_sha256, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, filename) DO UPDATE SET"
                " step = excluded.step, path = excluded.path, bytes = excluded.bytes,"
                " sha256 = excluded.sha256, upload_sha256 = excluded.upload_sha256,"
                " created_at = excluded.created_at",
                (run_id, filename, step, path, size, sha256, upload_sha256, now_iso),
            )

        self._submit(job)

    # -- reads ---------------------------------------------------------------------------------

    def _status_sql(self) -> str:
        return "CASE WHEN r.status = 'active' AND r.last_ingest < ? THEN 'stale' ELSE r.status END"

    def _run_rows(self, where: str, params: list[Any], limit: int) -> list[dict[str, Any]]:
        sql = f"""SELECT r.*, {self._status_sql()} AS live_status,
              (SELECT COUNT(*) FROM metrics m WHERE m.run_id = r.id) AS metric_count,
              (SELECT COUNT(*) FROM checkpoints c WHERE c.run_id = r.id) AS checkpoint_count,
              (SELECT MAX(step) FROM checkpoints c WHERE c.run_id = r.id) AS latest_checkpoint_step
              FROM runs r {where} ORDER BY r.created_at DESC, r.id LIMIT ?"""
        rows = self._read(sql, [time.time() - self.stale_after_s, *params, limit])
        return [self._run_dict(row) for row in rows]

    @staticmethod
    def _run_dict(row: sqlite3.Row) -> dict[str, Any]:
        run = dict(row)
        run["status"] = run.pop("live_status")
        for column in RUN_JSON_COLUMNS:
            if run.get(column) is not None:
                with contextlib.suppress(ValueError):
                    run[column] = json.loads(run[column])
        run["symbio"] = bool(run["symbio"])
        return run

    def list_runs(self, status: str | None = None, domain: str | None = None, limit: int = 500) -> list[dict]:
        clauses, params = [], []
        if status:
            clauses.append(f"{self._status_sql()} = ?")
            params += [time.time() - self.stale_after_s, status]
        if domain:
            clauses.append("r.domain = ?")
            params.append(domain)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return self._run_rows(where, params, limit)

    def status_counts(self) -> dict[str, int]:
        rows = self._read(
            f"SELECT {self._status_sql()} AS s, COUNT(*) FROM runs r GROUP BY s",
            [time.time() - self.stale_after_s],
        )
        return {row[0]: row[1] for row in rows}

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        rows = self._run_rows("WHERE r.id = ?", [run_id], 1)
        return rows[0] if rows else None

    def metrics(
        self, run_id: str, after_step: int | None = None, limit: int = 10_000, last: int | None = None
    ) -> list[dict[str, Any]]:
        """Full step records in step order: after a step (incremental polling) or the newest ``last``."""
        if last is not None:
            rows = self._read(
                "SELECT * FROM (SELECT * FROM metrics WHERE run_id = ? ORDER BY step DESC LIMIT ?)"
                " ORDER BY step",
                (run_id, last),
            )
        else:
            rows = self._read(
                "SELECT * FROM metrics WHERE run_id = ? AND step > ? ORDER BY step LIMIT ?",
                (run_id, -1 if after_step is None else after_step, limit),
            )
        return [metric_to_wire(dict(row)) for row in rows]

    def chart_series(self, run_id: str, max_points: int = 2000) -> dict[str, Any]:
        """The whole run for the charts, at most about ``max_points`` rows.

        Long runs are cut into step buckets; each bucket keeps its lowest- and highest-loss rows
        (so spikes survive), the newest ``max_points // 5`` steps are kept as they are, and eval
        rows (val_loss) are kept with their own stride. The newest step is always included.
        """
        cols = ", ".join(CHART_COLUMNS)
        total = self._read("SELECT COUNT(*), MIN(step), MAX(step) FROM metrics WHERE run_id = ?", (run_id,))[
            0
        ]
        count, first = total[0], total[1]
        if count <= max_points:
            rows = self._read(f"SELECT {cols} FROM metrics WHERE run_id = ? ORDER BY step", (run_id,))
            return {"total": count, "downsampled": False, "rows": [dict(r) for r in rows]}
        tail_n = max(1, max_points // 5)
        tail = self._read(
            f"SELECT {cols} FROM metrics WHERE run_id = ? ORDER BY step DESC LIMIT ?", (run_id, tail_n)
        )
        tail_start = min(r["step"] for r in tail)
        buckets = max(1, (max_points - tail_n) // 2)
        span = max(1, tail_start - first)
        picked: dict[int, dict[str, Any]] = {}
        for agg in ("MIN", "MAX"):
            # SQLite returns the other columns from the row holding the MIN/MAX.
            rows = self._read(
                f"SELECT {agg}(loss) AS _agg, {cols} FROM metrics WHERE run_id = ? AND step < ?"
                f" GROUP BY ((step - ?) * ?) / ?",
                (run_id, tail_start, first, buckets, span),
            )
            for row in rows:
                data = dict(row)
                data.pop("_agg")
                picked[data["step"]] = data
        evals = self._read(
            f"SELECT {cols} FROM metrics WHERE run_id = ? AND val_loss IS NOT NULL AND step < ?"
            " ORDER BY step",
            (run_id, tail_start),
        )
        stride = max(1, len(evals) // max(1, max_points // 4))
        for i, row in enumerate(evals):
            if i % stride == 0 or i == len(evals) - 1:
                picked[row["step"]] = dict(row)
        for row in tail:
            picked[row["step"]] = dict(row)
        return {"total": count, "downsampled": True, "rows": [picked[s] for s in sorted(picked)]}

    def sample_batches(self, run_id: str, step: int | None = None) -> list[dict[str, Any]]:
        """Every sample batch of a run, newest step first (or just one step's)."""
        params: list[Any] = [run_id]
        where = "s.run_id = ?"
        if step is not None:
            where += " AND s.step = ?"
            params.append(step)
        rows = self._read(
            f"SELECT s.step, s.idx, s.prompt, s.output, s.created_at, b.trend FROM samples s"
            f" LEFT JOIN sample_batches b ON b.run_id = s.run_id AND b.step = s.step"
            f" WHERE {where} ORDER BY s.step DESC, s.idx",
            params,
        )
        batches: dict[int, dict[str, Any]] = {}
        for row in rows:
            batch = batches.setdefault(
                row["step"],
                {
                    "step": row["step"],
                    "created_at": row["created_at"],
                    "trend": json.loads(row["trend"]) if row["trend"] else None,
                    "samples": [],
                },
            )
            batch["samples"].append({"prompt": row["prompt"], "output": row["output"]})
        return list(batches.values())

    def events(
        self,
        run_id: str,
        from_id: int = 0,
        kind: str | None = None,
        level: str | None = None,
        limit: int = 500,
        last: int | None = None,
    ) -> list[dict[str, Any]]:
        clauses, params = ["run_id = ?", "id > ?"], [run_id, from_id]
        if kind:
            clauses.append("kind = ?")
            params.append(kind)
        if level:
            clauses.append("level = ?")
            params.append(level)
        where = " AND ".join(clauses)
        if last is not None:
            sql = f"SELECT * FROM (SELECT * FROM events WHERE {where} ORDER BY id DESC LIMIT ?) ORDER BY id"
            params.append(last)
        else:
            sql = f"SELECT * FROM events WHERE {where} ORDER BY id LIMIT ?"
            params.append(limit)
        out = []
        for row in self._read(sql, params):
            event = dict(row)
            raw = event.pop("payload_json")
            try:
                event["payload"] = json.loads(raw) if raw else None
            except ValueError:
                event["payload"] = None
            out.append(event)
        return out

    def checkpoints(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._read("SELECT * FROM checkpoints WHERE run_id = ? ORDER BY step DESC", (run_id,))
        return [dict(row) for row in rows]

    def live_snapshot(self, recent_s: float = 900.0, metrics_per_run: int = 500) -> list[dict[str, Any]]:
        """What ``/training`` shows on connect: runs with ingest in the last ``recent_s`` seconds,
        each with its newest step records, latest sample batch and recent alerts."""
        rows = self._run_rows("WHERE r.last_ingest >= ?", [time.time() - recent_s], 50)
        rows.sort(key=lambda run: (run["status"] != "active", -run["last_ingest"]))
        for run in rows:
            run["metrics"] = self.metrics(run["id"], last=metrics_per_run)
            batches = self._read("SELECT MAX(step) FROM samples WHERE run_id = ?", (run["id"],))[0][0]
            run["samples"] = self.sample_batches(run["id"], batches) if batches is not None else []
            run["alerts"] = [e for e in self.events(run["id"], last=20) if e["level"] in ("warn", "error")]
        return rows

    def symbio_generations(self, run_id: str) -> list[dict[str, Any]]:
        """The payloads of a run's symbio_generation events, one per generation (the latest sent)."""
        by_generation: dict[int, dict[str, Any]] = {}
        for event in self.events(run_id, kind="symbio_generation", limit=1_000_000):
            payload = event["payload"]
            if isinstance(payload, dict) and isinstance(payload.get("generation"), int):
                by_generation[payload["generation"]] = payload
        return [by_generation[g] for g in sorted(by_generation)]
