"""deploy/nginx/nginx.conf: TLS, redirect, WebSocket upgrade, limits; `nginx -t`."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.deploy.conftest import DEPLOY
from tests.e2e.nginx import local_config, nginx_binary

CONF = DEPLOY / "nginx" / "nginx.conf"


def text() -> str:
    return CONF.read_text("utf-8")


def block(source: str, header: str) -> str:
    """The body of the first `header { ... }` block (braces balanced)."""
    start = source.index(header)
    depth = 0
    for index in range(source.index("{", start), len(source)):
        depth += {"{": 1, "}": -1}.get(source[index], 0)
        if depth == 0:
            return source[start : index + 1]
    raise AssertionError(f"unbalanced block {header}")


def test_graphql_websocket_upgrade() -> None:
    graphql = block(text(), "location = /graphql")
    assert "proxy_http_version 1.1;" in graphql
    assert "proxy_set_header Upgrade $http_upgrade;" in graphql
    assert "proxy_set_header Connection $connection_upgrade;" in graphql
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in graphql
    assert "proxy_set_header X-Forwarded-Proto $scheme;" in graphql
    timeout = re.search(r"proxy_read_timeout (\d+)s;", graphql)
    assert timeout and int(timeout.group(1)) >= 3600
    assert re.search(r"map \$http_upgrade \$connection_upgrade", text())


def test_tls_and_redirect() -> None:
    source = text()
    assert re.search(r"listen 8443 ssl", source)
    assert "ssl_certificate /etc/nginx/certs/tls.crt;" in source
    assert "ssl_certificate_key /etc/nginx/certs/tls.key;" in source
    assert "TLSv1.2 TLSv1.3" in source
    plain = block(source, "listen 8080")  # first server block
    assert "return 301 https://$host$request_uri;" in block(source, "server {")
    assert "ssl" not in plain.split("\n")[0]


def test_the_client_address_is_the_connection_s_own() -> None:
    """X-Forwarded-For is set to the address nginx saw, never appended to the client's
    own header (Uvicorn would otherwise find the client's words in it)."""
    source = text()
    assert "$proxy_add_x_forwarded_for" not in source
    assert "$http_x_forwarded_for" not in source
    for header in ("server {\n        listen 8443", "location = /graphql"):
        assert "proxy_set_header X-Forwarded-For $remote_addr;" in block(source, header)


def limit_zones(source: str) -> dict[str, str]:
    """zone name -> the key variable it counts."""
    return dict(
        (zone, key)
        for key, zone in re.findall(r"limit_req_zone \$(\w+) zone=(\w+):\S+ rate=\d+r/s;", source)
    )


def map_of(source: str, variable: str) -> dict[str, str]:
    """The entries of the ``map ... $variable { ... }`` block."""
    body = block(source, f"${variable} {{")
    entries = re.findall(r'^\s*("[^"]*"|\S+)\s+(\S+);', body, re.MULTILINE)
    return {name.strip('"'): value for name, value in entries}


def test_every_request_and_websocket_handshake_is_rate_limited() -> None:
    source = text()
    zones = limit_zones(source)
    graphql = block(source, "location = /graphql")
    limited = set(re.findall(r"limit_req zone=(\w+)", graphql))
    # Two budgets per address on /graphql: plain requests (POST and GET alike) and
    # WebSocket handshakes; between them every request counts in one.
    assert len(limited) == 2, limited
    keys = {zone: map_of(source, zones[zone]) for zone in limited}
    plain = next(zone for zone, entries in keys.items() if entries[""] != '""')
    upgrades = next(zone for zone in limited if zone != plain)
    assert keys[plain] == {"": "$binary_remote_addr", "default": '""'}
    assert keys[upgrades] == {"": '""', "default": "$binary_remote_addr"}
    for zone in limited:
        assert f"map $http_upgrade ${zones[zone]} {{" in source
    # No method is exempt (the old config counted only POSTs).
    assert not re.search(r"map \$request_method", source)
    # And everything else nginx proxies shares the plain budget.
    assert f"limit_req zone={plain}" in block(source, "location / {\n            limit_req")


def test_limits_and_headers() -> None:
    source = text()
    assert "client_max_body_size 256k;" in source
    assert "limit_req_status 429;" in source
    for header in (
        "Strict-Transport-Security",
        "X-Content-Type-Options",
        "X-Frame-Options",
        "frame-ancestors",
        "Referrer-Policy",
    ):
        assert re.search(rf'add_header {header}|"{header}', source), header
    upstream = block(source, "upstream crunchql_api")
    assert "server api:8000" in upstream and re.search(r"keepalive \d+;", upstream)
    assert "return 404;" in block(source, "location = /metrics")


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    binary = nginx_binary()
    conf = local_config(binary, tmp_path, upstreams=["127.0.0.1:8000"])
    result = subprocess.run(
        [binary, "-t", "-q", "-e", "stderr", "-p", str(tmp_path), "-c", str(conf)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
