"""HTTP from the worker's web server: JSON ops queries, the dashboard, the sizes timer.

Every JSON view runs a query of :mod:`streams.queries` (the CLI runs the same
ones) on a sync Redis client in a thread. A bad parameter is a 400 with
``{"error": ...}``, an unknown customer a 404, Redis away a 503 — never a 500
for something the caller can fix.

| path | returns |
|---|---|
| ``/dashboard`` | the HTML dashboard (``?customer=ID`` looks one up on load) |
| ``/customers/{id}?history=N`` | features, segments, churn propensity, last N changes |
| ``/segments`` | segment sizes per segmentation |
| ``/segments/{name}/members?limit=N&segmentation=S`` | members (SSCAN) |
| ``/flows?since=1h`` | transition counts per segmentation |
| ``/sizes?since=1h`` | recorded segment sizes and change rate over time |
| ``/healthz`` | ``{"ok": true}`` |
| ``/metrics`` | Prometheus text: counters, lag, deadline backlog, outbox, latencies (streams/metrics.py) |
| ``/status`` | this worker's lag, backlog, outbox, apply rate and verdict (streams/status.py) |
| ``/dashboard/preview`` | the preview page: edit a candidate segments config, see what it would do |
| ``/preview/config`` | ``{"yaml": ...}``: the segments config this worker runs, to start a candidate from |
| ``POST /preview`` | body: a candidate segments YAML; ``segflow preview --json``'s view (400 naming the line of a bad one, 409 while another preview runs) |
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import faust
from redis.exceptions import RedisError

from segmenter.config import default_config_text, read_config_text
from streams import queries
from streams.metrics import CONTENT_TYPE_LATEST
from streams.queries import QueryError
from streams.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Callable

    import redis

    from streams.metrics import WorkerMetrics
    from streams.status import Status

log = logging.getLogger("segflow.web")

STATIC_DIR = Path(__file__).parent / "static"
# Served by name only (no paths from the request reach the file system).
STATIC_TYPES = {".js": "application/javascript", ".css": "text/css", ".html": "text/html", ".txt": "text/plain"}


def static_files() -> dict[str, Path]:
    return {p.name: p for p in STATIC_DIR.iterdir() if p.is_file() and p.suffix in STATIC_TYPES}


class _Redis:
    """One sync client per worker, made on first use (redis-py's pool is thread-safe)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._client: redis.Redis | redis.cluster.RedisCluster | None = None

    def __call__(self) -> redis.Redis | redis.cluster.RedisCluster:
        if self._client is None:
            from streams.redis_clients import sync_client

            self._client = sync_client(
                self.settings.redis_url.get_secret_value(),
                cluster=self.settings.redis_cluster,
                decode_responses=True,
                socket_connect_timeout=3,
                socket_timeout=10,
            )
        return self._client


def add_web_views(app: faust.App, settings: Settings) -> None:
    """Register the JSON views and the dashboard on ``app``'s web server."""
    client = _Redis(settings)
    catalogue = queries.segment_catalogue(settings)
    files = static_files()
    live_yaml = read_config_text(settings.segments_config) if settings.segments_config else default_config_text()

    async def answer(web, fn, *args, **kwargs):
        try:
            return web.json(await asyncio.to_thread(fn, client(), *args, **kwargs))
        except QueryError as exc:
            return web.json({"error": str(exc)}, status=400)
        except RedisError as exc:
            log.warning("web query failed: %s", exc)
            return web.json({"error": f"redis unavailable: {exc.__class__.__name__}"}, status=503)

    def bad(web, exc: QueryError):
        return web.json({"error": str(exc)}, status=400)

    @app.page("/customers/{customer_id}")
    async def get_customer(web, request, customer_id: str):
        try:
            history = queries.int_param(request.query.get("history"), "history", 10, 0, settings.history_cap)
        except QueryError as exc:
            return bad(web, exc)
        try:
            view = await asyncio.to_thread(queries.customer_view, client(), customer_id, settings, history)
        except RedisError as exc:
            return web.json({"error": f"redis unavailable: {exc.__class__.__name__}"}, status=503)
        if view is None:
            return web.json({"error": f"unknown customer {customer_id!r}: no event from it has been applied", "customer_id": customer_id}, status=404)
        return web.json(view)

    @app.page("/segments")
    async def get_segments(web, request):
        return await answer(web, queries.configured_sizes, settings.layout, catalogue)

    @app.page("/segments/{name}/members")
    async def get_members(web, request, name: str):
        try:
            limit = queries.int_param(request.query.get("limit"), "limit", 100, 1, queries.MAX_MEMBERS)
        except QueryError as exc:
            return bad(web, exc)
        return await answer(web, queries.segment_members, settings.layout, catalogue, name, request.query.get("segmentation") or None, limit)

    @app.page("/flows")
    async def get_flows(web, request):
        try:
            since = queries.parse_duration(request.query.get("since", "1h"), maximum_s=queries.FLOWS_KEPT_S)
        except QueryError as exc:
            return bad(web, exc)
        return await answer(web, queries.flows, settings.layout, since)

    @app.page("/sizes")
    async def get_sizes(web, request):
        try:
            since = queries.parse_duration(request.query.get("since", "1h"))
        except QueryError as exc:
            return bad(web, exc)
        return await answer(web, queries.sizes_series, catalogue, since)

    @app.page("/dashboard")
    async def dashboard(web, request):
        return web.html((STATIC_DIR / "dashboard.html").read_text())

    @app.page("/dashboard/preview")
    async def preview_page(web, request):
        return web.html((STATIC_DIR / "preview.html").read_text())

    @app.page("/preview/config")
    async def preview_config(web, request):
        return web.json({"yaml": live_yaml, "source": str(settings.segments_config or "the shipped default")})

    running = asyncio.Lock()  # a preview reads every customer: one at a time per worker

    @app.page("/preview")
    class Preview(faust.web.View):
        async def post(self, request):
            from segmenter.config import ConfigError, parse_config
            from streams.preview import live_snapshot, run_preview

            text = await request.text()
            try:
                candidate = parse_config(text, "candidate")
            except ConfigError as exc:
                return self.json({"error": str(exc)}, status=400)
            if running.locked():
                return self.json({"error": "another preview is running on this worker; try again when it is done"}, status=409)
            async with running:
                try:
                    view = await asyncio.to_thread(lambda: run_preview(client(), settings, candidate, live_snapshot(settings), candidate_name="candidate"))
                except RedisError as exc:
                    return self.json({"error": f"redis unavailable: {exc.__class__.__name__}"}, status=503)
            return self.json(view)

    @app.page("/static/{name}")
    async def static(web, request, name: str):
        path = files.get(name)
        if path is None:
            return web.json({"error": f"no static file {name!r}"}, status=404)
        return web.bytes(path.read_bytes(), content_type=STATIC_TYPES[path.suffix], headers={"Cache-Control": "max-age=300"})

    @app.page("/healthz")
    async def healthz(web, request):
        return web.json({"ok": True})


def add_status_views(app: faust.App, metrics: WorkerMetrics, status: Callable[[], Status | None]) -> None:
    """``/metrics`` and ``/status``: read from memory, no Redis call (a scrape must not add load)."""

    @app.page("/metrics")
    async def get_metrics(web, request):
        return web.bytes(metrics.render(), content_type=CONTENT_TYPE_LATEST.split(";")[0], headers={"Cache-Control": "no-store"})

    @app.page("/status")
    async def get_status(web, request):
        s = status()
        if s is None:
            return web.json({"error": "starting: no status measured yet"}, status=503)
        return web.json(s.as_dict())


def add_sizes_recorder(app: faust.App, settings: Settings) -> None:
    """Timer: every ``sizes_interval_seconds`` append segment sizes to ``segflow:sizes``."""
    client = _Redis(settings)
    catalogue = queries.segment_catalogue(settings)

    @app.timer(settings.sizes_interval_seconds)
    async def record_segment_sizes():
        try:
            await asyncio.to_thread(queries.record_sizes, client(), settings.layout, catalogue, settings.sizes_interval_seconds, settings.sizes_history_len)
        except RedisError as exc:  # Redis away: the next tick tries again
            log.warning("could not record segment sizes: %s", exc)
