"""The dashboard's web app (Starlette, which Prefect's server brings along; Jinja2 templates).

Routes, all GET (the dashboard never writes):

    /                      campaigns (one row per store; a single store redirects to its page)
    /c/{id}                a campaign's page; its script draws every panel from ...
    /api/c/{id}/overview   ... the overview JSON (ETag: the page polls with If-None-Match and
                           redraws only when the store changed)
    /api/campaigns         the index rows as JSON
    /static/{name}         the page's own script and style, and plotly.js from the plotly
                           package: every asset is local (no CDN; login nodes have no internet)

Nothing else is served: ids are looked up in the table of found stores, never joined to a
path, and static names in a fixed table. Every response forbids inline and foreign scripts
(Content-Security-Policy), so a string from a store cannot run even if it slipped through the
escaping (Jinja2 autoescape, textContent in the script).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import plotly
import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from hifidata import __version__
from hifidata.dashboard.campaigns import Campaigns
from hifidata.errors import HifidataError

HERE = Path(__file__).parent
STATIC = {
    "dashboard.js": HERE / "static" / "dashboard.js",
    "dashboard.css": HERE / "static" / "dashboard.css",
    "plotly.min.js": Path(plotly.__file__).parent / "package_data" / "plotly.min.js",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; font-src 'self' data:; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]


def create_app(path: str | Path, refresh_seconds: float = 2.0,
               allowed_hosts: list[str] | None = None, prewarm: bool = False) -> Starlette:
    """The dashboard over ``path`` (a store, or a folder of stores).

    ``allowed_hosts``: Host headers answered (others get 400), which keeps a web page the
    user visits from reaching a loopback-bound dashboard through DNS rebinding; None: any.
    ``prewarm``: read every store once in a background thread at start, so the first visit
    finds its data ready (seconds for a store of 100,000 structures).
    """
    campaigns = Campaigns(path)
    if prewarm:
        threading.Thread(target=campaigns.prewarm, name="hifidata-prewarm", daemon=True).start()
    templates = Jinja2Templates(directory=HERE / "templates")  # autoescapes .html
    context = {"version": __version__, "refresh_ms": int(refresh_seconds * 1000)}

    def index(request: Request) -> Response:
        paths = campaigns.paths()
        if campaigns.single and len(paths) == 1:
            return RedirectResponse(request.url_for("campaign", cid=next(iter(paths))))
        return templates.TemplateResponse(request, "index.html", {
            **context, "root": campaigns.root.name, "rows": campaigns.summaries()})

    def campaign(request: Request) -> Response:
        cid = request.path_params["cid"]
        path = campaigns.path(cid)
        if path is None:
            return _not_found()
        return templates.TemplateResponse(request, "campaign.html", {
            **context, "cid": cid, "store": path.name, "single": campaigns.single})

    def overview(request: Request) -> Response:
        read = campaigns.overview(request.path_params["cid"])
        if read is None:
            return _not_found()
        etag, body = read
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(body, media_type="application/json", headers=headers)

    def campaign_list(request: Request) -> Response:
        return JSONResponse(campaigns.summaries(), headers={"Cache-Control": "no-cache"})

    def static(request: Request) -> Response:
        file = STATIC.get(request.path_params["name"])
        if file is None:
            return _not_found()
        return FileResponse(file, headers={"Cache-Control": "max-age=3600"})

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/c/{cid}", campaign, name="campaign"),
            Route("/api/c/{cid}/overview", overview),
            Route("/api/campaigns", campaign_list),
            Route("/static/{name}", static),
        ],
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or ["*"]),
                    Middleware(_SecurityHeaders)],
    )
    return app


class _SecurityHeaders:
    """Adds SECURITY_HEADERS to every HTTP response (plain ASGI middleware)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(SECURITY_HEADERS)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _not_found() -> Response:
    return JSONResponse({"error": "not found"}, status_code=404)


def serve(path: str | Path, host: str = "127.0.0.1", port: int = 8050,
          refresh_seconds: float = 2.0) -> None:
    """Serve the dashboard until interrupted (uvicorn, one process)."""
    uvicorn.run(_app_for(path, host, refresh_seconds), host=host, port=port,
                log_level="warning")


@contextmanager
def serving(path: str | Path, refresh_seconds: float = 2.0, host: str = "127.0.0.1",
            port: int = 0, prewarm: bool = True) -> Iterator[str]:
    """The dashboard served from a thread of this process (a notebook, a test); yields its
    URL. ``port=0`` takes a free one."""
    with socket.socket() as sock:
        sock.bind((host, port))
        port = sock.getsockname()[1]
    app = _app_for(path, host, refresh_seconds, prewarm)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="hifidata-dashboard", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise HifidataError(f"the dashboard did not start on {host}:{port}")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` keeps the dashboard to this machine."""
    return host in ("127.0.0.1", "localhost", "::1")


def _app_for(path: str | Path, host: str, refresh_seconds: float,
             prewarm: bool = True) -> Starlette:
    return create_app(path, refresh_seconds, LOOPBACK_HOSTS if is_loopback(host) else None,
                      prewarm)
