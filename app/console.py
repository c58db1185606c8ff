"""The web console: ``GET /`` serves its page, ``/console/`` its modules, from the package.

Everything it loads is in ``app/static/console`` (vendored libraries under ``vendor/``,
see ``vendor/VERSIONS.txt``), so it works on a machine without internet. The page runs
under a strict Content-Security-Policy: scripts and styles from this origin only (no
inline script, no inline style attribute, no eval), GraphQL over HTTP and WebSocket to
this origin only, images from this origin or ``data:`` (the Mandelbrot PNG).
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

CONSOLE_DIR: Path = Path(__file__).resolve().parent / "static" / "console"
SCHEMA_JSON: Path = CONSOLE_DIR / "schema.json"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        # 'self' covers ws:// and wss:// to this host (CSP Level 3).
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}


async def console_page(_request: Request) -> Response:
    response = FileResponse(CONSOLE_DIR / "index.html", media_type="text/html; charset=utf-8")
    response.headers.update(SECURITY_HEADERS)
    # The page is small and names its modules; a new release must be seen at once.
    response.headers["Cache-Control"] = "no-cache"
    return response


class ConsoleAssets(StaticFiles):
    """The console's modules and styles, with the same security headers as the page."""

    def __init__(self) -> None:
        super().__init__(directory=CONSOLE_DIR)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (name.lower().encode(), value.encode())
                    for name, value in SECURITY_HEADERS.items()
                ]
                headers.append((b"cache-control", b"no-cache"))
                message["headers"] = headers
            await send(message)

        await super().__call__(scope, receive, send_with_headers)
