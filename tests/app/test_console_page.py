"""The web console's page and files: served from the package at /, under a strict CSP,
no inline script or style, everything it loads shipped (and licensed) in the repository,
and the bundled schema it falls back on current."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

from crunchql.app.console import CONSOLE_DIR, SCHEMA_JSON
from tests.conftest import make_settings, running_app

VENDOR = CONSOLE_DIR / "vendor"


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline_script = False
        self.current: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self.current = tag

    def handle_data(self, data: str) -> None:
        if self.current in {"script", "style"} and data.strip():
            self.inline_script = True


async def test_the_console_is_served_at_the_root_under_a_strict_csp(empty_sqlite_url: str) -> None:
    async with running_app(make_settings(database_url=empty_sqlite_url)) as (_, client):
        page = await client.http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        csp = dict(part.strip().split(" ", 1) for part in policy.split(";"))
        assert csp["default-src"] == "'self'"
        assert csp["script-src"] == "'self'" and csp["style-src"] == "'self'"
        assert csp["connect-src"] == "'self'" and csp["frame-ancestors"] == "'none'"
        assert "unsafe" not in policy
        parsed = Tags()
        parsed.feed(page.text)
        assert not parsed.inline_script
        assert not any("style" in attrs for _, attrs in parsed.tags)
        loaded = [
            attrs.get("src") or attrs.get("href")
            for tag, attrs in parsed.tags
            if tag in {"script", "link"} and attrs.get("rel") != "icon"
        ]
        assert all(url and url.startswith("/console/") for url in loaded), loaded
        for url in loaded:
            asset = await client.http.get(url)
            assert asset.status_code == 200, url
            assert asset.headers["content-security-policy"] == policy
            assert asset.headers["x-content-type-options"] == "nosniff"
        script = await client.http.get("/console/app.js")
        assert script.headers["content-type"].split(";")[0] in {
            "text/javascript",
            "application/javascript",
        }
        assert (await client.http.get("/console/../core/settings.py")).status_code == 404


def _imports(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    # import/export statements (not the words inside a string, as in an error message)
    statement = r"""(?:^|[;}\s])(?:import|export)\b[^;'"`]*?from\s*['"]([^'"]+)['"]"""
    return re.findall(statement, text, re.M)


def test_every_module_imports_by_relative_path_from_this_origin() -> None:
    modules = list(CONSOLE_DIR.glob("*.js")) + list(VENDOR.glob("*.js"))
    assert len(modules) >= 9
    for module in modules:
        for target in _imports(module):
            # No bare specifier (there is no import map: it would be an inline script)
            # and no URL of another origin.
            assert target.startswith("./"), (module.name, target)
            assert (module.parent / target).resolve().is_file(), (module.name, target)
        text = module.read_text(encoding="utf-8")
        assert "eval(" not in text and "new Function" not in text, module.name


def test_vendored_libraries_are_pinned_and_licensed() -> None:
    versions = (VENDOR / "VERSIONS.txt").read_text(encoding="utf-8")
    for library in ("preact", "htm", "graphql-ws", "uplot"):
        assert re.search(rf"^{library} \d+\.\d+\.\d+ ", versions, re.M), library
        assert (VENDOR / f"LICENSE-{library}.txt").stat().st_size > 500
    update = (VENDOR / "update.sh").read_text(encoding="utf-8")
    for name in re.findall(r"^(\w+)=(\d+\.\d+\.\d+)$", update, re.M):
        assert name[1] in versions  # the script and the record agree


def test_the_bundled_schema_is_current() -> None:
    from crunchql.schema.root import schema

    bundled = json.loads(SCHEMA_JSON.read_text(encoding="utf-8"))
    assert bundled == json.loads(json.dumps(schema.introspect())), (
        "app/static/console/schema.json is stale: run "
        "`crunchql export-schema --format introspection -o app/static/console/schema.json`"
    )
