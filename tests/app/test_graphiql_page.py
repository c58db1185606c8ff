"""The GraphiQL page: local assets only; subscriptions over WebSocket with Headers as params."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from crunchql.app.graphiql import (
    ASSETS_DIR,
    DEFAULT_QUERY,
    SCRIPTS,
    STYLESHEETS,
    content_security_policy,
    graphiql_html,
)


class _Refs(HTMLParser):
    """Collects every URL the page makes the browser load."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts: list[str] = []
        self._in_inline_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("src", "href"):
            if values.get(name):
                self.urls.append(values[name] or "")
        self._in_inline_script = tag == "script" and "src" not in values

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_inline_script = False

    def handle_data(self, data: str) -> None:
        if self._in_inline_script and data.strip():
            self.inline_scripts.append(data)


def _refs(page: str) -> _Refs:
    parser = _Refs()
    parser.feed(page)
    return parser


def _asset_urls(page: str) -> list[str]:
    # the favicon is an empty data: URL, there only so browsers do not ask for /favicon.ico
    return [url for url in _refs(page).urls if not url.startswith("data:")]


def test_page_loads_nothing_from_another_host() -> None:
    page = graphiql_html()
    # no absolute URL at all (a host name after the scheme), so no CDN either
    assert re.search(r"(?i)\b(?:https?|wss?)://\w", page) is None
    urls = _refs(page).urls
    assert urls
    for url in urls:
        assert url == "data:," or url.startswith("/graphiql-assets/"), url
        assert not url.startswith("//"), url


def test_every_referenced_asset_is_shipped_and_non_empty() -> None:
    urls = _asset_urls(graphiql_html())
    assert sorted(urls) == sorted(f"/graphiql-assets/{name}" for name in SCRIPTS + STYLESHEETS)
    for url in urls:
        path = ASSETS_DIR / url.removeprefix("/graphiql-assets/")
        assert path.is_file(), path
        assert path.stat().st_size > 0, path


def test_scripts_load_react_before_graphiql() -> None:
    page = graphiql_html()
    positions = [page.index(f'src="/graphiql-assets/{name}"') for name in SCRIPTS]
    assert positions == sorted(positions)
    assert SCRIPTS[-1] == "graphiql.min.js"
    assert page.index("graphiql.min.js") < page.index("createFetcher")


def test_custom_assets_prefix_and_endpoint() -> None:
    page = graphiql_html(endpoint="/api/graphql", assets_prefix="/static/giql/")
    urls = _asset_urls(page)
    assert urls
    assert all(url.startswith("/static/giql/") and "//" not in url for url in urls)
    assert 'var endpoint = "/api/graphql";' in page


def test_page_wires_subscription_url_and_headers_into_connection_params() -> None:
    page = graphiql_html()
    assert 'var endpoint = "/graphql";' in page
    # the WebSocket URL is derived from the page's own location: wss under https, ws otherwise
    assert 'window.location.protocol === "https:" ? "wss:" : "ws:"' in page
    assert "subscriptionUrl: subscriptionUrl.href" in page
    # the Headers pane (opts.headers) becomes the connection_init payload
    assert "var headers = (opts && opts.headers) || {};" in page
    assert "wsConnectionParams: headers" in page
    assert "isHeadersEditorEnabled: true" in page


def test_default_query_explains_register_token_me() -> None:
    assert "mutation Register" in DEFAULT_QUERY
    assert "accessToken" in DEFAULT_QUERY
    assert '{"Authorization": "Bearer <accessToken>"}' in DEFAULT_QUERY
    assert "query Me" in DEFAULT_QUERY
    assert "subscription Watch" in DEFAULT_QUERY
    # every line is a comment or GraphQL; the text reaches the page as one JS string literal
    assert (
        json.dumps(DEFAULT_QUERY, ensure_ascii=False)[1:-1]
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        in graphiql_html()
    )


def test_endpoint_cannot_break_out_of_the_script() -> None:
    page = graphiql_html(endpoint='/g"</script><script>alert(1)</script>')
    assert "<script>alert(1)" not in page
    assert len(_refs(page).inline_scripts) == 1


def test_versions_file_lists_every_shipped_file() -> None:
    versions = (ASSETS_DIR / "VERSIONS.txt").read_text(encoding="utf-8")
    for path in ASSETS_DIR.iterdir():
        if path.name != "VERSIONS.txt":
            assert path.name in versions, path.name
    for package in ("react 18.", "react-dom 18.", "graphiql 3."):
        assert package in versions
    assert "MIT" in versions


def test_content_security_policy_allows_only_the_inline_bootstrap() -> None:
    page = graphiql_html()
    (script,) = _refs(page).inline_scripts
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    policy = content_security_policy(page)
    assert f"script-src 'self' 'sha256-{digest}';" in policy
    assert "unsafe-eval" not in policy
    assert "connect-src 'self'" in policy


async def test_assets_are_served_by_a_static_files_mount() -> None:
    async def page(_: object) -> HTMLResponse:
        return HTMLResponse(graphiql_html())

    app = Starlette(
        routes=[
            Route("/graphql", page),
            Mount("/graphiql-assets", StaticFiles(directory=ASSETS_DIR)),
        ]
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/graphql", headers={"accept": "text/html"})
        assert response.status_code == 200
        for url in _asset_urls(response.text):
            asset = await client.get(url)
            assert asset.status_code == 200, url
            assert asset.content == (ASSETS_DIR / url.rsplit("/", 1)[1]).read_bytes()
            expected = "text/css" if url.endswith(".css") else "javascript"
            assert expected in asset.headers["content-type"], url


# The bootstrap run in Node against stand-ins for the browser, React and GraphiQL: which URLs
# and connectionParams does it hand to GraphiQL's fetcher factory?
_NODE_HARNESS = r"""
const vm = require("vm");
const {script, href, headers} = JSON.parse(require("fs").readFileSync(0, "utf8"));
const created = [];
let rendered = null;
const sandbox = {
  URL,
  window: {location: new URL(href)},
  document: {getElementById: (id) => ({id})},
  React: {createElement: (type, props) => ({type, props})},
  ReactDOM: {createRoot: () => ({render: (el) => { rendered = el; }})},
  GraphiQL: Object.assign(function GraphiQL() {}, {
    createFetcher: (options) => { created.push(options); return (params, opts) => "fetched"; },
  }),
};
vm.runInNewContext(script, sandbox);
const props = rendered.props;
const out = props.fetcher({query: "subscription { x }"}, {headers});
process.stdout.write(JSON.stringify({
  out, created,
  isHeadersEditorEnabled: props.isHeadersEditorEnabled,
  defaultEditorToolsVisibility: props.defaultEditorToolsVisibility,
  defaultQuery: props.defaultQuery,
}));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
@pytest.mark.parametrize(
    ("href", "http_url", "ws_url"),
    [
        (
            "http://127.0.0.1:8000/graphql",
            "http://127.0.0.1:8000/graphql",
            "ws://127.0.0.1:8000/graphql",
        ),
        (
            "https://crunch.example/graphql?x=1",
            "https://crunch.example/graphql",
            "wss://crunch.example/graphql",
        ),
    ],
)
def test_bootstrap_builds_fetcher_with_ws_url_and_headers(
    href: str, http_url: str, ws_url: str
) -> None:
    (script,) = _refs(graphiql_html()).inline_scripts
    headers = {"Authorization": "Bearer abc.def.ghi"}
    completed = subprocess.run(
        ["node", "-e", _NODE_HARNESS],
        input=json.dumps({"script": script, "href": href, "headers": headers}),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result = json.loads(completed.stdout)
    assert result["out"] == "fetched"
    assert result["created"] == [
        {"url": http_url, "subscriptionUrl": ws_url, "wsConnectionParams": headers}
    ]
    assert result["isHeadersEditorEnabled"] is True
    assert result["defaultEditorToolsVisibility"] == "headers"
    assert result["defaultQuery"] == DEFAULT_QUERY
