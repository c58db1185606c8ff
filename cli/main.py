"""The ``crunchql`` command: serve, worker, scheduler, db upgrade, users (create-admin,
list, set-role, disable, enable), schema export; and the API's command-line client:
login, submit, watch, list, cancel, logout."""

from __future__ import annotations

import argparse
import asyncio
import gc
import getpass
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from crunchql.cli.commands import add_client_commands


def _quiet_idle_kernel_threads() -> None:
    """Kernel threads that sleep between parallel regions instead of spinning.

    numba's parallel kernels run on GNU OpenMP here, whose threads spin for a while after
    each region, waiting for the next. In a process that also runs an event loop (and
    between the chunks of a job, or many short jobs) that spin takes the CPU the loop
    needs: measured on the tiny-job flood of ``benchmarks.versus``, the worker's CPU per
    job fell from 13.8 to 11.5 ms with the spin off (docs/benchmarks.md). A chunk lasts
    tenths of a second, so waking the threads per region costs nothing measurable. Set
    before numba loads OpenMP; an operator's OMP_WAIT_POLICY wins."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# Allocations between two young-generation collections (CPython's default: 700).
GC_YOUNG_THRESHOLD = 50_000


def _fewer_garbage_collections() -> None:
    """An API process holds a few hundred long-lived objects per open subscription. With
    CPython's default thresholds their promotion through the generations triggered full
    collections, each walking all of them: with 10,000 subscriptions, 18 full collections
    in one fan-out run, up to 2.0 s each, the event loop stopped meanwhile (measured with
    gc.callbacks; docs/benchmarks.md). Young collections every 50,000 allocations instead
    of 700 promote far less: none went full in the same run, the longest pause was 0.7 s."""
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from crunchql.core.settings import get_settings

    _quiet_idle_kernel_threads()  # the embedded mode runs kernels in this process
    _fewer_garbage_collections()
    settings = get_settings()
    if args.workers > 1 and not settings.redis_url:
        print(
            "crunchql serve --workers > 1 needs REDIS_URL: the embedded queue and event bus "
            "live inside one process.",
            file=sys.stderr,
        )
        return 2
    uvicorn.run(
        "crunchql.app.factory:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers if not args.reload else None,
        reload=args.reload,
        proxy_headers=True,
        forwarded_allow_ips=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
        # Strawberry's graphql-transport-ws has no server ping: Uvicorn's WebSocket
        # pings find dead peers.
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        # A WebSocket message over this closes the socket (1009), as an HTTP body over
        # CRUNCHQL_MAX_REQUEST_BYTES is refused: Uvicorn's default would be 16 MiB.
        ws_max_size=settings.ws_max_message_bytes,
        ws_per_message_deflate=settings.ws_compression,
        log_config=None,
        timeout_graceful_shutdown=10,
    )
    return 0


def _worker(args: argparse.Namespace) -> int:
    from crunchql.core.settings import get_settings

    if not get_settings().redis_url:
        print("crunchql worker needs REDIS_URL.", file=sys.stderr)
        return 2
    if args.no_scheduler:
        os.environ["CRUNCHQL_RUN_SCHEDULER"] = "false"
    os.environ["CRUNCHQL_WORKER_DEVICE"] = args.device
    # Read again with the two settings above: the forked worker processes inherit this
    # process's cached Settings.
    get_settings.cache_clear()
    queue = "calculations"
    if args.device == "gpu":
        queue = "calculations.gpu"  # only: a GPU worker never takes CPU work
        problem = _gpu_problem()
        if problem:
            print(problem, file=sys.stderr)
            return 2
    # Prefetch no more than we can run: with Dramatiq's default (2 x threads) an idle
    # worker could watch a busy one sit on jobs.
    os.environ["dramatiq_queue_prefetch"] = str(args.threads)  # noqa: SIM112 - Dramatiq reads it lower-case
    # Processes x kernel threads must not oversubscribe the cores.
    cores = os.cpu_count() or 1
    _quiet_idle_kernel_threads()
    os.environ.setdefault("NUMBA_NUM_THREADS", str(max(1, cores // args.processes)))
    from dramatiq.cli import main as dramatiq_main

    argv = [
        "crunchql.workers.process",
        "--processes",
        str(args.processes),
        "--threads",
        str(args.threads),
        "--queues",
        queue,
        "--skip-logging",
        "--worker-shutdown-timeout",
        str(args.shutdown_timeout_ms),
    ]
    sys.argv = ["crunchql worker", *argv]
    return int(dramatiq_main() or 0)  # type: ignore[no-untyped-call]


def _gpu_problem() -> str | None:
    """Why a GPU worker cannot start here (None: it can), asked in a child process: CUDA
    must not be initialised in this one, which forks the worker processes."""
    probe = "from crunchql.workers.lifecycle import check_gpu\nprint(check_gpu())\n"
    done = subprocess.run(  # noqa: S603 - this interpreter, a fixed script
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=False
    )
    if done.returncode == 0:
        print(f"crunchql worker --device gpu: using {done.stdout.strip()}", file=sys.stderr)
        return None
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1] if lines else "crunchql worker --device gpu: no CUDA device."


def _scheduler(_args: argparse.Namespace) -> int:
    from crunchql.core.logging import configure_logging
    from crunchql.core.settings import get_settings
    from crunchql.observability.errors import init_error_reporting
    from crunchql.workers.scheduler import serve

    settings = get_settings()
    if not settings.redis_url:
        print(
            "crunchql scheduler needs REDIS_URL (it sends jobs to the workers); without it, "
            "`crunchql serve` fires schedules itself.",
            file=sys.stderr,
        )
        return 2
    configure_logging(settings)
    init_error_reporting(settings, component="scheduler")
    asyncio.run(serve(settings))
    return 0


def _db_upgrade(args: argparse.Namespace) -> int:
    from crunchql.core.settings import get_settings
    from crunchql.db.migrate import upgrade

    upgrade(get_settings().database_url, args.revision)
    print("database is at", args.revision)
    return 0


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != first:
            raise SystemExit("Passwords do not match.")
        return first
    return sys.stdin.readline().rstrip("\n")


def _create_admin(args: argparse.Namespace) -> int:
    from crunchql.core.errors import CrunchError
    from crunchql.core.settings import get_settings
    from crunchql.db.models import Role
    from crunchql.runtime import start_runtime
    from crunchql.services import users

    password = _read_password()

    async def run() -> None:
        runtime = await start_runtime(get_settings(), migrate=True, run_jobs=False)
        try:
            result = await users.register(
                runtime.services, args.email, password, client="cli", role=Role.ADMIN
            )
            print(f"created admin {result.user.email} ({result.user.id})")
        finally:
            await runtime.close()

    try:
        asyncio.run(run())
    except CrunchError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    return 0


def _run_admin_command(work: Callable[[Any], Awaitable[None]]) -> int:
    """Run ``work(services)`` against the configured database, without taking over a
    server's jobs; revocations it causes are announced on the bus (REDIS_URL) or, on the
    embedded path, seen by the server within CRUNCHQL_SESSION_RECHECK_SECONDS."""
    from crunchql.core.errors import CrunchError
    from crunchql.core.logging import configure_logging
    from crunchql.core.settings import get_settings
    from crunchql.runtime import start_runtime

    settings = get_settings()
    # Log lines (the audit records among them) go to stderr, as the server's do.
    configure_logging(settings)

    async def run() -> None:
        runtime = await start_runtime(settings, run_jobs=False)
        try:
            await work(runtime.services)
        finally:
            await runtime.close()

    try:
        asyncio.run(run())
    except CrunchError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    return 0


def _list_users(args: argparse.Namespace) -> int:
    from crunchql.services import admin

    async def work(services: Any) -> None:
        after: str | None = None
        shown = 0
        print(f"{'email':<40} {'role':<6} {'active':<6} {'last login':<25} id")
        while shown < args.limit:
            page = await admin.list_users(
                services, first=min(100, args.limit - shown), after=after, search=args.search
            )
            for user in page.items:
                last = (
                    user.last_login_at.isoformat(timespec="seconds") if user.last_login_at else "-"
                )
                active = "yes" if user.is_active else "no"
                print(f"{user.email:<40} {user.role:<6} {active:<6} {last:<25} {user.id}")
            shown += len(page.items)
            if not page.has_next_page or not page.items:
                break
            after = admin.encode_user_cursor(page.items[-1])

    return _run_admin_command(work)


def _change_user(args: argparse.Namespace) -> int:
    from crunchql.db.models import Role
    from crunchql.services import admin
    from crunchql.services.audit import CLI

    async def work(services: Any) -> None:
        user = await admin.find_user(services, args.email)
        if args.users_command == "set-role":
            changed = await admin.set_role(services, None, str(user.id), Role(args.role), CLI)
        else:
            active = args.users_command == "enable"
            changed = await admin.set_active(services, None, str(user.id), active, CLI)
        state = "active" if changed.is_active else "disabled"
        print(f"{changed.email}: {changed.role}, {state}")

    return _run_admin_command(work)


def _export_schema(args: argparse.Namespace) -> int:
    import json

    from strawberry.printer import print_schema

    from crunchql.schema.root import schema

    if args.format == "introspection":
        # What the web console builds its forms from where introspection is off
        # (app/static/console/schema.json; a test keeps it current).
        text = json.dumps(schema.introspect(), indent=1, sort_keys=True) + "\n"
    else:
        text = print_schema(schema) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crunchql", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the API (embedded queue without REDIS_URL)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="Uvicorn worker processes")
    serve.add_argument("--reload", action="store_true", help="restart on code changes")
    serve.set_defaults(handler=_serve)

    worker = commands.add_parser("worker", help="run Dramatiq worker processes (needs REDIS_URL)")
    worker.add_argument("--processes", type=int, default=1)
    worker.add_argument("--threads", type=int, default=4, help="concurrent jobs per process")
    worker.add_argument("--shutdown-timeout-ms", type=int, default=30_000)
    worker.add_argument(
        "--device",
        choices=("cpu", "gpu"),
        default="cpu",
        help="cpu: take the calculations queue; gpu: only calculations.gpu, on CUDA kernels "
        "(exits unless numba finds a CUDA GPU or NUMBA_ENABLE_CUDASIM=1)",
    )
    worker.add_argument(
        "--no-scheduler",
        action="store_true",
        help="do not contend for scheduler leadership in these processes",
    )
    worker.set_defaults(handler=_worker)

    scheduler = commands.add_parser(
        "scheduler",
        help="fire scheduled calculations (one leader among any number; needs REDIS_URL)",
    )
    scheduler.set_defaults(handler=_scheduler)

    database = commands.add_parser("db", help="database maintenance")
    db_commands = database.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser("upgrade", help="apply migrations")
    upgrade.add_argument("revision", nargs="?", default="head")
    upgrade.set_defaults(handler=_db_upgrade)

    users_parser = commands.add_parser("users", help="user administration")
    user_commands = users_parser.add_subparsers(dest="users_command", required=True)
    admin = user_commands.add_parser(
        "create-admin", help="create an ADMIN (password from a prompt, or stdin when piped)"
    )
    admin.add_argument("email")
    admin.set_defaults(handler=_create_admin)
    listing = user_commands.add_parser("list", help="list accounts by e-mail")
    listing.add_argument("--search", help="e-mail prefix")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (100)")
    listing.set_defaults(handler=_list_users)
    set_role = user_commands.add_parser(
        "set-role", help="change an account's role (ends its sessions)"
    )
    set_role.add_argument("email")
    set_role.add_argument("role", choices=["USER", "ADMIN"])
    set_role.set_defaults(handler=_change_user)
    disable = user_commands.add_parser("disable", help="disable an account (ends its sessions)")
    disable.add_argument("email")
    disable.set_defaults(handler=_change_user)
    enable = user_commands.add_parser("enable", help="enable a disabled account")
    enable.add_argument("email")
    enable.set_defaults(handler=_change_user)

    export = commands.add_parser("export-schema", help="print the GraphQL SDL")
    export.add_argument("--output", "-o", default="-")
    export.add_argument(
        "--format",
        choices=["sdl", "introspection"],
        default="sdl",
        help="SDL, or the introspection result as JSON (the console's bundled schema)",
    )
    export.set_defaults(handler=_export_schema)

    add_client_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # `submit KIND --input JSON a=1 b=2`: argparse stops the positional list at
        # the first option; field=value pairs after it belong to it too.
        if getattr(args, "fields", None) is None or any(item.startswith("-") for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.fields += extra
    from pydantic import ValidationError

    try:
        return int(args.handler(args))
    except ValidationError as error:
        # Settings refused at start: say what to fix, without a traceback.
        problems = "\n".join(
            f"  - {item['msg'].removeprefix('Value error, ')}" for item in error.errors()
        )
        print(f"crunchql: the configuration is not valid:\n{problems}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
