"""What an API process costs on the production path: start-up time, resident memory and
whether numba/llvmlite got mapped.

Starts ``crunchql serve`` with ``DATABASE_URL`` (PostgreSQL) and ``REDIS_URL`` set, times
the start until ``/healthz`` answers 200, registers a user and submits one calculation
(which validates its input), then reads ``VmRSS`` from ``/proc/<pid>/status`` and looks
for numba/llvmlite libraries in ``/proc/<pid>/maps``. Repeats ``--reps`` times and prints
the medians::

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


def measure(env: dict[str, str]) -> tuple[float, float, float, bool]:
    """(seconds to /healthz, RSS MiB at /healthz, RSS MiB after a submission, heavy mapped)."""
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
            return started, rss_start, rss_mib(process.pid), bool(heavy_libraries(process.pid))
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
    print(f"{'start-up to /healthz (s)':<32}{'RSS at /healthz (MiB)':>24}"
          f"{'RSS after submit (MiB)':>25}{'numba/llvmlite mapped':>24}")  # fmt: skip
    print(
        f"{statistics.median(r[0] for r in runs):<32.2f}"
        f"{statistics.median(r[1] for r in runs):>24.1f}"
        f"{statistics.median(r[2] for r in runs):>25.1f}"
        f"{'yes' if any(r[3] for r in runs) else 'no':>24}"
    )
    print(f"(medians of {args.reps} runs)")


if __name__ == "__main__":
    main()
