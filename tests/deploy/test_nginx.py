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
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in graphql
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


def test_limits_and_headers() -> None:
    source = text()
    assert "client_max_body_size 256k;" in source
    assert re.search(
        r"limit_req_zone \$graphql_post_key zone=graphql_post:\S+ rate=\d+r/s;", source
    )
    assert re.search(r"POST\s+\$binary_remote_addr;", source)
    assert "limit_req zone=graphql_post" in block(source, "location = /graphql")
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
