"""The FastAPI application: ingest, checkpoint uploads, read APIs, live SSE and the pages.

``create_app(settings)`` builds one app over one store, one live hub and one upload area. Route
functions stay small: they check auth, parse with ``protocol``, store with ``store`` (on a worker
thread: SQLite blocks), then publish to live viewers. Errors are JSON ``{"error": reason}``: 400 for
a malformed message, 401 for a wrong secret, 413 for a body over its limit, 503 when storage
failed (so clients retry); 2xx only after the data is committed.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from alpha.server import protocol, views
from alpha.server.auth import READ_COOKIE, grants_read, may_read, may_write
from alpha.server.live import LiveHub, sse_message
from alpha.server.protocol import ProtocolError
from alpha.server.store import StorageError, Store
from alpha.server.uploads import UploadError, UploadLimits, Uploads

HERE = Path(__file__).parent
MIB = 1024 * 1024


@dataclass
class ServerSettings:
    db_path: Path
    data_dir: Path
    write_secret: str | None = None
    read_secret: str | None = None
    stale_after_s: float = 180.0
    max_ingest_bytes: int = 32 * MIB
    max_assemble_bytes: int = 256 * MIB
    upload_limits: UploadLimits = field(default_factory=UploadLimits)
    keepalive_s: float = 15.0


class ApiError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class LoginRequired(Exception):
    """A page was asked for without the read secret: answer with the login form."""


async def read_limited(request: Request, limit: int, what: str = "body") -> bytes:
    """The raw request body, refused with 413 as soon as it is known to pass ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"{what} is larger than {limit} bytes")
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise ApiError(413, f"{what} is larger than {limit} bytes")
        parts.append(part)
    return b"".join(parts)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (before or after gunzip)."""
    body = await read_limited(request, limit)
    if request.headers.get("content-encoding", "").lower() == "gzip":
        inflater = zlib.decompressobj(wbits=31)
        try:
            body = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            raise ApiError(400, f"body is not valid gzip: {exc}") from None
        if len(body) > limit:
            raise ApiError(413, f"body decompresses to more than {limit} bytes")
    return body


async def read_json(request: Request, limit: int) -> Any:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(415, "Content-Type must be application/json")
    body = await read_body(request, limit)
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}") from None


def create_app(settings: ServerSettings) -> FastAPI:
    store = Store(settings.db_path, stale_after_s=settings.stale_after_s)
    uploads = Uploads(settings.data_dir, settings.upload_limits)
    hub = LiveHub()
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters.update(
        num=views.fmt_num,
        params=views.fmt_params,
        nbytes=views.fmt_bytes,
        ago=views.fmt_ago,
        winner=views.winner_name,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        hub.bind(asyncio.get_running_loop())
        await run_in_threadpool(uploads.purge_stale)
        yield
        hub.close_all()
        store.close()

    app = FastAPI(title="alpha dashboard", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.store, app.state.hub, app.state.uploads = store, hub, uploads
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    # -- errors and auth -----------------------------------------------------------------------

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.reason}, status_code=exc.status)

    @app.exception_handler(ProtocolError)
    async def _protocol_error(request: Request, exc: ProtocolError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError) -> JSONResponse:
        return JSONResponse({"error": exc.reason}, status_code=exc.status)

    @app.exception_handler(StorageError)
    async def _storage_error(request: Request, exc: StorageError) -> JSONResponse:
        return JSONResponse({"error": f"storage failure: {exc}"}, status_code=503)

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, exc: LoginRequired) -> HTMLResponse:
        return templates.TemplateResponse(
            request, "login.html", {"next": request.url.path, "error": None}, status_code=401
        )

    def require_write(request: Request) -> None:
        if not may_write(request, settings.write_secret):
            raise ApiError(401, "Unauthorized")

    def require_read(request: Request, page: bool = False) -> None:
        if not may_read(request, settings.read_secret, settings.write_secret):
            if page:
                raise LoginRequired()
            raise ApiError(401, "Unauthorized")

    # -- ingest --------------------------------------------------------------------------------

    async def ingest_body(request: Request, shape: str) -> dict[str, Any]:
        """An authorized ingest request's JSON object; ``shape`` names what 400 says it must be."""
        require_write(request)
        body = await read_json(request, settings.max_ingest_bytes)
        if not isinstance(body, dict):
            raise ProtocolError(f"body must be a JSON object {shape}")
        return body

    @app.post("/api/ingest")
    async def ingest(request: Request) -> dict[str, Any]:
        body = await ingest_body(request, "with a type")
        kind = body.get("type")
        if kind not in ("run_start", "metrics", "heartbeat", "samples", "event", "events"):
            raise ProtocolError("Unknown ingest type" if kind is not None else "type is required")
        run_id = protocol.run_id_of(body)

        if kind == "run_start":
            await run_in_threadpool(store.run_start, run_id, body)
            hub.publish(
                "run_start",
                {
                    "runId": run_id,
                    "domain": body.get("domain"),
                    "modelConfig": body.get("modelConfig"),
                    "trainConfig": body.get("trainConfig"),
                    "totalParams": body.get("totalParams"),
                },
            )
            return {"ok": True}

        if kind == "metrics":
            records = protocol.batch_of(body, "metrics")
            rows = [protocol.normalize_metric(r, f"metrics[{i}]") for i, r in enumerate(records)]
            stored = await run_in_threadpool(store.add_metrics, run_id, rows)
            if hub.viewers:  # building the wire records costs as much as validating them
                hub.publish(
                    "metrics", {"runId": run_id, "metrics": [protocol.metric_to_wire(r) for r in rows]}
                )
            return {"ok": True, "stored": stored}

        if kind == "heartbeat":
            step = protocol.step_of("step", body.get("step"), required=False)
            await run_in_threadpool(store.heartbeat, run_id, step)
            hub.publish("heartbeat", {"runId": run_id, "step": step})
            return {"ok": True}

        if kind == "samples":
            batch = protocol.normalize_samples(body)
            step = await run_in_threadpool(store.add_samples, run_id, batch)
            hub.publish(
                "samples",
                {
                    "runId": run_id,
                    "step": step,
                    "trend": body.get("trend"),
                    "samples": [{"prompt": p, "output": o} for p, o in batch.samples],
                },
            )
            return {"ok": True, "step": step}

        raw_events = [body.get("event")] if kind == "event" else protocol.batch_of(body, "events")
        where = "event" if kind == "event" else "events[{}]"
        events = [protocol.normalize_event(e, where.format(i)) for i, e in enumerate(raw_events)]
        inserted = await run_in_threadpool(store.add_events, run_id, events)
        if inserted:
            records = [_event_record(e) for e in inserted]
            if kind == "event":
                hub.publish("event", {"runId": run_id, "event": records[0]})
            else:
                hub.publish("events", {"runId": run_id, "events": records})
            if any(e.kind == "training_complete" or e.kind in protocol.FAILURE_KINDS for e in inserted):
                run = await run_in_threadpool(store.get_run, run_id)
                if run:
                    hub.publish(
                        "run_complete",
                        {
                            "runId": run_id,
                            "finalStep": run["latest_step"],
                            "status": run["status"],
                            "outcome": run["outcome"],
                        },
                    )
        return {"ok": True, "stored": len(inserted), "duplicates": len(events) - len(inserted)}

    @app.post("/api/ingest/complete")
    async def ingest_complete(request: Request) -> dict[str, Any]:
        body = await ingest_body(request, "{runId, finalStep}")
        run_id = protocol.run_id_of(body)
        final_step = protocol.step_of("finalStep", body.get("finalStep"))
        outcome = protocol.outcome_of(body.get("status"))
        reason = body.get("reason") if isinstance(body.get("reason"), str) else None
        status = await run_in_threadpool(store.complete, run_id, final_step, outcome, reason)
        hub.publish(
            "run_complete",
            {
                "runId": run_id,
                "finalStep": final_step,
                "status": status,
                "outcome": outcome,
                "reason": reason,
            },
        )
        return {"ok": True, "status": status}

    # -- checkpoint uploads --------------------------------------------------------------------

    @app.post("/api/upload/chunk")
    async def upload_chunk(request: Request) -> dict[str, Any]:
        require_write(request)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/octet-stream":
            raise ApiError(415, "Content-Type must be application/octet-stream")
        h = request.headers
        upload_id, index, total, sha = uploads.check_chunk_headers(
            h.get("x-upload-id"), h.get("x-chunk-index"), h.get("x-total-chunks"), h.get("x-chunk-sha256")
        )
        body = await read_limited(request, settings.upload_limits.max_chunk_bytes, "chunk")
        received = await run_in_threadpool(uploads.save_chunk, upload_id, index, total, sha, body)
        return {"ok": True, "uploadId": upload_id, "chunk": index, "received": len(received), "total": total}

    @app.get("/api/upload/status")
    async def upload_status(request: Request, uploadId: str = "") -> dict[str, Any]:  # noqa: N803
        require_write(request)
        received = await run_in_threadpool(uploads.received, uploadId)
        return {"uploadId": uploadId, "received": received}

    @app.post("/api/upload/assemble")
    async def upload_assemble(request: Request) -> dict[str, Any]:
        require_write(request)
        body = await read_json(request, settings.max_assemble_bytes)
        done = await run_in_threadpool(uploads.assemble, body)
        config = body.get("config") if isinstance(body.get("config"), dict) else None
        await run_in_threadpool(
            store.add_checkpoint,
            done.run_id,
            done.step,
            done.filename,
            done.relative_path,
            done.size,
            done.sha256,
            done.upload_sha256,
            config,
        )
        hub.publish(
            "checkpoint",
            {"runId": done.run_id, "step": done.step, "filename": done.filename, "bytes": done.size},
        )
        return {
            "ok": True,
            "name": done.run_id,
            "step": done.step,
            "path": done.relative_path,
            "bytes": done.size,
            "sha256": done.upload_sha256,
            "fileSha256": done.sha256,
        }

    # -- read APIs -----------------------------------------------------------------------------

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        return {"ok": True, "schemaVersion": store.schema_version(), "viewers": hub.viewers}

    @app.get("/api/runs")
    async def api_runs(
        request: Request, status: str | None = None, domain: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        require_read(request)
        return await run_in_threadpool(store.list_runs, status, domain, max(1, min(limit, 5000)))

    async def _run_or_404(run_id: str) -> dict[str, Any]:
        run = await run_in_threadpool(store.get_run, run_id)
        if run is None:
            raise ApiError(404, f"no run {run_id}")
        return run

    @app.get("/api/runs/{run_id}")
    async def api_run(request: Request, run_id: str) -> dict[str, Any]:
        require_read(request)
        return await _run_or_404(run_id)

    @app.get("/api/runs/{run_id}/metrics")
    async def api_metrics(
        request: Request,
        run_id: str,
        after_step: int | None = None,
        limit: int = 10_000,
        last: int | None = None,
        max_points: int | None = None,
    ) -> Any:
        require_read(request)
        if max_points is not None:
            return await run_in_threadpool(store.chart_series, run_id, max(10, min(max_points, 50_000)))
        return await run_in_threadpool(
            store.metrics,
            run_id,
            after_step,
            max(1, min(limit, 100_000)),
            None if last is None else max(1, min(last, 100_000)),
        )

    @app.get("/api/runs/{run_id}/samples")
    async def api_samples(request: Request, run_id: str, step: int | None = None) -> list[dict[str, Any]]:
        require_read(request)
        return await run_in_threadpool(store.sample_batches, run_id, step)

    @app.get("/api/runs/{run_id}/events")
    async def api_events(
        request: Request,
        run_id: str,
        from_id: int = 0,
        kind: str | None = None,
        level: str | None = None,
        limit: int = 500,
        last: int | None = None,
    ) -> Any:
        require_read(request)
        return await run_in_threadpool(
            store.events,
            run_id,
            from_id,
            kind,
            level,
            max(1, min(limit, 5000)),
            None if last is None else max(1, min(last, 5000)),
        )

    @app.get("/api/runs/{run_id}/checkpoints")
    async def api_checkpoints(request: Request, run_id: str) -> list[dict[str, Any]]:
        require_read(request)
        return await run_in_threadpool(store.checkpoints, run_id)

    @app.get("/api/runs/{run_id}/symbio")
    async def api_symbio(request: Request, run_id: str) -> dict[str, Any]:
        require_read(request)
        generations = await run_in_threadpool(store.symbio_generations, run_id)
        view = views.symbio_view(generations) or {"candidates": [], "generations": [], "winner": None}
        view.pop("tree", None)
        return view

    @app.get("/api/runs/{run_id}/download/{filename}")
    async def api_download(request: Request, run_id: str, filename: str) -> FileResponse:
        require_read(request)
        path = uploads.run_file(run_id, filename)
        return FileResponse(path, filename=path.name, media_type="application/octet-stream")

    @app.get("/api/training/live")
    async def live(request: Request) -> StreamingResponse:
        require_read(request)
        subscriber = hub.subscribe()
        try:
            snapshot = await run_in_threadpool(store.live_snapshot)
        except BaseException:
            hub.unsubscribe(subscriber)
            raise

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 2000\n\n" + sse_message("snapshot", snapshot)
                while True:
                    try:
                        message = await asyncio.wait_for(subscriber.queue.get(), settings.keepalive_s)
                    except asyncio.TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if message is None:
                        return
                    yield message
                    if subscriber.dropped and subscriber.queue.empty():
                        return  # fell behind: the browser reconnects and gets a fresh snapshot
            finally:
                hub.unsubscribe(subscriber)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # -- pages ---------------------------------------------------------------------------------

    @app.get("/")
    async def index() -> RedirectResponse:
        return RedirectResponse("/runs")

    @app.get("/login", response_class=HTMLResponse)
    async def login_form(request: Request, next: str = "/runs") -> HTMLResponse:  # noqa: A002
        return templates.TemplateResponse(request, "login.html", {"next": _local_path(next), "error": None})

    @app.post("/login")
    async def login(request: Request) -> Any:
        # A two-field urlencoded form: parsed here rather than adding python-multipart.
        form = parse_qs((await read_body(request, 8192)).decode("utf-8", "replace"))
        token = form.get("token", [""])[0]
        target = _local_path(form.get("next", ["/runs"])[0])
        if not grants_read(token, settings.read_secret, settings.write_secret):
            return templates.TemplateResponse(
                request, "login.html", {"next": target, "error": "wrong secret"}, status_code=401
            )
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(READ_COOKIE, token, httponly=True, samesite="strict")
        return response

    @app.get("/training", response_class=HTMLResponse)
    async def training_page(request: Request) -> HTMLResponse:
        require_read(request, page=True)
        return templates.TemplateResponse(request, "training.html", {"page": "training"})

    @app.get("/runs", response_class=HTMLResponse)
    async def runs_page(request: Request, status: str | None = None) -> HTMLResponse:
        require_read(request, page=True)
        runs = await run_in_threadpool(store.list_runs, status or None, None, 500)
        counts = await run_in_threadpool(store.status_counts)
        return templates.TemplateResponse(
            request, "runs.html", {"page": "runs", "runs": runs, "counts": counts, "status": status}
        )

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    async def run_page(request: Request, run_id: str) -> HTMLResponse:
        require_read(request, page=True)
        run = await run_in_threadpool(store.get_run, run_id)
        if run is None:
            return templates.TemplateResponse(
                request, "notfound.html", {"page": "runs", "run_id": run_id}, status_code=404
            )
        series = await run_in_threadpool(store.chart_series, run_id, 2000)
        samples = await run_in_threadpool(store.sample_batches, run_id)
        events = await run_in_threadpool(store.events, run_id, 0, None, None, 1000, 1000)
        checkpoints = await run_in_threadpool(store.checkpoints, run_id)
        generations = await run_in_threadpool(store.symbio_generations, run_id)
        return templates.TemplateResponse(
            request,
            "run.html",
            {
                "page": "runs",
                "run": run,
                "series": series,
                "samples": samples,
                "events": list(reversed(events)),
                "checkpoints": checkpoints,
                "symbio": views.symbio_view(generations),
            },
        )

    return app


def _local_path(target: str) -> str:
    """Only same-site paths after login (no open redirect)."""
    return target if target.startswith("/") and not target.startswith("//") else "/runs"


def _event_record(event: protocol.EventRow) -> dict[str, Any]:
    return {
        "id": event.client_id,
        "step": event.step,
        "level": event.level,
        "kind": event.kind,
        "message": event.message,
        "payload": json.loads(event.payload_json) if event.payload_json else None,
        "timestamp": event.created_at,
    }
