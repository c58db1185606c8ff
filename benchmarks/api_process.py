"""What an API process costs on the production path: start-up time, resident memory and
whether numba/llvmlite got mapped.

Starts ``crunchql serve`` with ``DATABASE_URL`` (PostgreSQL) and ``REDIS_URL`` set, times
the start until ``/healthz`` answers 200 (wall time and the process's CPU time), registers
a user and submits one calculation (which validates its input), then reads ``VmRSS`` from
``/proc/<pid>/status`` and looks for numba/llvmlite libraries in ``/proc/<pid>/maps``.
Repeats ``--reps`` times and prints the medians::

    python -m benchmarks.api_process --reps 5 --redis-url redis://127.0.0.1:6379/2 \
        --database-url postgresql+asyncpg://postgres@127.0.0.1/crunchql_bench

The database must exist; it is migrated (``crunchql db upgrade``) first.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid

import httpx

CRUNCHQL = [sys.executable, "-m", "crunchql"]
HEAVY = ("numba", "llvmlite")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(database_url: str, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRUNCHQL_", "DATABASE_URL"))}
    env.update(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "CRUNCHQL_JWT_SECRET": "bench-secret-" + "x" * 40,
            "CRUNCHQL_RATE_LIMITS": "off",
        }
    )
    return env


def heavy_libraries(pid: int) -> set[str]:
    """Paths of numba/llvmlite files mapped into process ``pid``."""
    with open(f"/proc/{pid}/maps") as maps:
        paths = {line.split()[-1] for line in maps if len(line.split()) >= 6}
    return {p for p in paths if any(name in p for name in HEAVY)}


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (less sensitive to a busy machine
    than wall time)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(env: dict[str, str]) -> tuple[float, float, float, float, bool]:
    """(seconds to /healthz, CPU seconds to /healthz, RSS MiB at /healthz, RSS MiB after a
    submission, numba/llvmlite mapped)."""
    port = _free_port()
    start = time.perf_counter()
    process = subprocess.Popen(
        [*CRUNCHQL, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=10) as http:
            while True:
                if process.poll() is not None:
                    raise RuntimeError("crunchql serve exited")
                try:
                    if http.get(f"{base}/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.01)
            started = time.perf_counter() - start
            cpu = cpu_seconds(process.pid)
            rss_start = rss_mib(process.pid)
            email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
            body = http.post(
                f"{base}/graphql",
                json={
                    "query": "mutation($e: String!) { register(email: $e, "
                    'password: "correct horse battery") { accessToken } }',
                    "variables": {"e": email},
                },
            ).json()
            token = body["data"]["register"]["accessToken"]
            body = http.post(
                f"{base}/graphql",
                headers={"Authorization": f"Bearer {token}"},
                json={
                    "query": "mutation { submitCalculation(input: "
                    "{ monteCarloPi: { samples: 1000, seed: 1 } }) { id } }"
                },
            ).json()
            if "errors" in body:
                raise RuntimeError(body)
            heavy = bool(heavy_libraries(process.pid))
            return started, cpu, rss_start, rss_mib(process.pid), heavy
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    env = _env(args.database_url, args.redis_url)
    subprocess.run([*CRUNCHQL, "db", "upgrade"], env=env, check=True, capture_output=True)
    runs = [measure(env) for _ in range(args.reps)]
    columns = (
        "start-up to /healthz (s)",
        "CPU to /healthz (s)",
        "RSS at /healthz (MiB)",
        "RSS after submit (MiB)",
        "numba/llvmlite mapped",
    )
    print(" | ".join(columns))
    print(
        " | ".join(
            [
                *(f"{statistics.median(r[i] for r in runs):.2f}" for i in (0, 1)),
                *(f"{statistics.median(r[i] for r in runs):.1f}" for i in (2, 3)),
                "yes" if any(r[4] for r in runs) else "no",
            ]
        )
    )
    print(f"(medians of {args.reps} runs)")


if __name__ == "__main__":
    main()
