"""Run deploy/nginx/nginx.conf on this machine: the production config with local ports,
a throw-away certificate and local upstreams substituted, nothing else changed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF = ROOT / "deploy" / "nginx" / "nginx.conf"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def nginx_binary() -> str:
    binary = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    if binary is None:
        if IN_CI:
            pytest.fail("nginx is not installed: CI=true requires it (apt-get install nginx-light)")
        pytest.skip(
            "!!! nginx is not installed: skipping (runs in CI; apt-get install nginx-light)"
        )
    return binary


def nginx_version(binary: str) -> tuple[int, ...]:
    output = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False).stderr
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", output)
    return tuple(int(part) for part in match.groups()) if match else (0, 0, 0)


def make_certificate(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(directory / "tls.key"), "-out", str(directory / "tls.crt"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return directory / "tls.crt"


def local_config(
    binary: str,
    workdir: Path,
    *,
    upstreams: list[str],
    http_port: int = 8080,
    https_port: int = 8443,
    single_worker: bool = False,
) -> Path:
    """Write the deploy config adapted to this machine; returns its path."""
    certs = workdir / "certs"
    make_certificate(certs)
    source = NGINX_CONF.read_text()
    source = source.replace("/tmp/", f"{workdir}/")  # pid and temp files
    source = source.replace("/etc/nginx/certs/", f"{certs}/")
    source = source.replace("/dev/stdout", str(workdir / "access.log"))
    source = source.replace("/dev/stderr", str(workdir / "error.log"))
    servers = "\n        ".join(
        f"server {address} max_fails=3 fail_timeout=10s;" for address in upstreams
    )
    source = re.sub(r"server api:8000[^;]*;", servers, source)
    source = source.replace("listen 8080", f"listen {http_port}").replace(
        "listen [::]:8080", f"listen [::]:{http_port}"
    )
    source = source.replace("listen 8443", f"listen {https_port}").replace(
        "listen [::]:8443", f"listen [::]:{https_port}"
    )
    if single_worker:  # round robin state is per worker process
        source = source.replace("worker_processes auto;", "worker_processes 1;")
    if nginx_version(binary) < (1, 25, 1):
        source = source.replace("http2 on;", "")  # the directive is newer than this nginx
    for name in ("client_temp", "proxy_temp", "fastcgi_temp", "uwsgi_temp", "scgi_temp"):
        (workdir / name).mkdir(parents=True, exist_ok=True)
        os.chmod(workdir / name, 0o777)  # noqa: S103 - nginx workers drop root privileges
    conf = workdir / "nginx.conf"
    conf.write_text(source, "utf-8")
    return conf
