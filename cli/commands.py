"""The client commands of ``crunchql``: login, submit, watch, list, cancel, logout.

Exit codes: 0 SUCCEEDED (or done), 1 FAILED or refused by the API (NOT_FOUND, CONFLICT,
FORBIDDEN, RATE_LIMITED), 2 usage errors (BAD_USER_INPUT included), 3 CANCELLED,
4 connection or authentication errors. With ``--json`` stdout holds one JSON document
and nothing else; progress and messages go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from crunchql.cli import config
from crunchql.cli.client import CALCULATION_FIELDS, ApiClient, ClientError, ConnectionFailed

EXIT_STATUS = {"SUCCEEDED": 0, "FAILED": 1, "CANCELLED": 3}
EXIT_USAGE, EXIT_CONNECTION = 2, 4
STATUSES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")

GET = f"query($id: ID!) {{ calculation(id: $id) {{ {CALCULATION_FIELDS} }} }}"
UPDATES = f"subscription($id: ID!) {{ calculationUpdates(id: $id) {{ {CALCULATION_FIELDS} }} }}"
SUBMIT = (
    f"mutation($i: CalculationInput!) {{ submitCalculation(input: $i) {{ {CALCULATION_FIELDS} }} }}"
)
CANCEL = f"mutation($id: ID!) {{ cancelCalculation(id: $id) {{ {CALCULATION_FIELDS} }} }}"
LIST = """query($first: Int, $status: CalculationStatus) {
  calculations(first: $first, status: $status) {
    edges { node { id kind status progress createdAt finishedAt } } }
  calculationCount(status: $status) }"""
AUTH = """mutation($e: String!, $p: String!) {{ {field}(email: $e, password: $p)
  {{ accessToken refreshToken user {{ email role }} }} }}"""

stderr = Console(stderr=True)


class UsageError(Exception):
    pass


# ---------------------------------------------------------------------------- helpers


def _client(args: argparse.Namespace, *, need_login: bool = True) -> ApiClient:
    stored = config.load()
    url = config.resolve_url(args.url, stored)
    credentials = stored if stored is not None and stored.url == url else None
    if need_login and (credentials is None or not credentials.access_token):
        raise ClientError(f"Not logged in to {url}: run `crunchql login`.", "UNAUTHENTICATED")
    try:
        return ApiClient(url, credentials, on_tokens=config.save)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _estimate(calculation: dict[str, Any]) -> str:
    """The running (or final) estimate with twice its standard error, as text."""
    value = calculation.get("result") or calculation.get("partialResult") or {}
    kind = value.get("__typename")
    if kind == "MonteCarloPiResult":
        return f"π ≈ {value['estimate']:.6f} ± {2 * value['standardError']:.1e}"
    if kind == "OptionPricingResult":
        return f"price ≈ {value['price']:.4f} ± {2 * value['standardError']:.1e}"
    if kind == "PrimeCountResult":
        return f"π({value['limit']}) = {value['count']}"
    if kind == "MandelbrotResult":
        return f"{value['width']}x{value['height']}, inside {value['insideFraction']:.2%}"
    if kind == "NBodyResult":
        return f"relative energy error {value['relativeEnergyError']:.2e}"
    if kind == "KMeansResult":
        return (
            f"k={value['k']}, {value['iterations']} iterations, inertia {value['inertia']:.4g}, "
            f"{value['recoveredFraction']:.1%} recovered"
        )
    return ""


class ProgressView:
    """A Rich progress bar on stderr when it is a terminal; otherwise a line at each
    status change and every 10 % (a log or a CI job reads it too)."""

    def __init__(self, label: str) -> None:
        self.live = stderr.is_terminal
        self.label = label
        self.last_line: tuple[str, int] | None = None
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        if self.live:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[status]}"),
                TextColumn("{task.fields[estimate]}"),
                TimeElapsedColumn(),
                console=stderr,
            )
            self.task = self.progress.add_task(label, total=100, status="", estimate="")
            self.progress.start()

    def update(self, calculation: dict[str, Any]) -> None:
        percent = float(calculation["progress"]) * 100
        status, estimate = calculation["status"], _estimate(calculation)
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=percent, status=status, estimate=estimate)
            return
        line = (status, int(percent // 10))
        if line != self.last_line:
            self.last_line = line
            stderr.print(f"{self.label} {status} {percent:5.1f}% {estimate}".rstrip())

    def note(self, message: str) -> None:
        stderr.print(f"[yellow]{message}[/yellow]" if self.live else message)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _print_result(calculation: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(calculation) + "\n")
        return
    out = Console()
    out.print(f"{calculation['id']}  {calculation['kind']}  [bold]{calculation['status']}[/bold]")
    if calculation.get("error"):
        out.print(f"error: {calculation['error']}")
    result = calculation.get("result")
    if result:
        shown = {k: v for k, v in result.items() if k not in {"__typename", "png"}}
        if "png" in result:
            shown["png"] = f"<{len(result['png'])} base64 characters>"
        out.print(_estimate(calculation))
        out.print_json(json.dumps(shown))


def _exit_code(calculation: dict[str, Any]) -> int:
    return EXIT_STATUS.get(calculation["status"], 0)


async def follow(
    api: ApiClient, calculation_id: str, view: ProgressView, *, reconnect_for: float
) -> dict[str, Any]:
    """Follow a calculation to its end over ``calculationUpdates``; after a dropped
    connection, query it again and subscribe again (for up to ``reconnect_for`` s)."""
    offline_since: float | None = None
    delay = 0.5
    while True:
        try:
            async for data in api.subscribe(UPDATES, {"id": calculation_id}):
                calculation: dict[str, Any] = data["calculationUpdates"]
                offline_since, delay = None, 0.5
                view.update(calculation)
                if calculation["status"] in EXIT_STATUS:
                    return calculation
            continue  # completed early (the server's lifetime cap): subscribe again
        except ClientError as error:
            if error.code == "UNAUTHENTICATED" and await api.refresh():
                continue
            raise
        except ConnectionFailed:
            now = time.monotonic()
            offline_since = offline_since or now
            if now - offline_since > reconnect_for:
                raise
            view.note(f"connection lost; reconnecting in {delay:.1f} s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)
        try:
            current: dict[str, Any] | None = (await api.execute(GET, {"id": calculation_id}))[
                "calculation"
            ]
        except ConnectionFailed:
            continue
        if current is None:
            raise ClientError("Calculation not found.", "NOT_FOUND")
        view.update(current)
        if current["status"] in EXIT_STATUS:
            return current


async def _follow_and_report(api: ApiClient, calculation: dict[str, Any], args: Any) -> int:
    view = ProgressView(f"{calculation['kind']} {calculation['id'][:8]}")
    try:
        final = await follow(api, calculation["id"], view, reconnect_for=args.reconnect_for)
    finally:
        view.close()
    _print_result(final, args.json)
    return _exit_code(final)


def parse_fields(pairs: list[str], base: str | None) -> dict[str, Any]:
    """``--input JSON`` overlaid with ``field=value`` pairs; a value is read as JSON when
    it parses (numbers, true, null), else as a string (enum names such as CALL)."""
    fields: dict[str, Any] = {}
    if base:
        try:
            fields = json.loads(base)
        except ValueError as error:
            raise UsageError(f"--input is not JSON: {error}") from None
        if not isinstance(fields, dict):
            raise UsageError("--input must be a JSON object")
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name.isidentifier():
            raise UsageError(f"expected field=value, got {pair!r}")
        try:
            fields[name] = json.loads(raw)
        except ValueError:
            fields[name] = raw
    return fields


# --------------------------------------------------------------------------- commands


def _read_password() -> str:
    if sys.stdin.isatty():
        return getpass.getpass("Password: ")
    return sys.stdin.readline().rstrip("\n")


async def _login(args: argparse.Namespace) -> int:
    stored = config.load()
    url = config.resolve_url(args.url, stored)
    try:
        api = ApiClient(url)
    except ValueError as error:
        raise UsageError(str(error)) from None
    password = _read_password()
    field = "register" if args.create else "login"
    data = await api.execute(
        AUTH.format(field=field), {"e": args.email, "p": password}, refresh=False
    )
    payload = data[field]
    path = config.save(
        config.Credentials(
            url=url,
            email=payload["user"]["email"],
            access_token=payload["accessToken"],
            refresh_token=payload["refreshToken"],
        )
    )
    stderr.print(f"Logged in to {url} as {payload['user']['email']} (saved in {path}).")
    return 0


async def _logout(args: argparse.Namespace) -> int:
    stored = config.load()
    if stored is None:
        stderr.print("Not logged in.")
        return 0
    if stored.refresh_token:
        api = ApiClient(stored.url, stored)
        try:
            # Ends the session on the server where it knows sessions (accounts issue).
            await api.execute(
                "mutation($t: String!) { logout(refreshToken: $t) }",
                {"t": stored.refresh_token},
                refresh=False,
            )
        except ClientError as error:
            if error.code not in {None, "GRAPHQL_VALIDATION_FAILED", "UNAUTHENTICATED"}:
                stderr.print(f"The server did not end the session: {error.message}")
        except ConnectionFailed as error:
            stderr.print(f"The server could not be reached ({error}); forgetting the tokens.")
    config.clear()
    stderr.print(f"Logged out of {stored.url}.")
    return 0


async def _submit(args: argparse.Namespace) -> int:
    fields = parse_fields(args.fields, args.input)
    api = _client(args)
    calculation = (await api.execute(SUBMIT, {"i": {args.kind: fields}}))["submitCalculation"]
    if args.follow:
        return await _follow_and_report(api, calculation, args)
    if args.json:
        _print_result(calculation, True)
    else:
        print(calculation["id"])
        stderr.print(f"Submitted; follow it with `crunchql watch {calculation['id']}`.")
    return 0


async def _watch(args: argparse.Namespace) -> int:
    api = _client(args)
    calculation = (await api.execute(GET, {"id": args.id}))["calculation"]
    if calculation is None:
        raise ClientError("Calculation not found.", "NOT_FOUND")
    return await _follow_and_report(api, calculation, args)


async def _list(args: argparse.Namespace) -> int:
    api = _client(args)
    data = await api.execute(LIST, {"first": args.first, "status": args.status})
    rows = [edge["node"] for edge in data["calculations"]["edges"]]
    if args.json:
        sys.stdout.write(json.dumps(rows) + "\n")
        return 0
    table = Table("id", "kind", "status", "progress", "created")
    for row in rows:
        table.add_row(
            row["id"], row["kind"], row["status"], f"{row['progress']:.0%}", row["createdAt"]
        )
    Console(width=160).print(table)
    stderr.print(f"{len(rows)} of {data['calculationCount']} calculations, newest first.")
    return 0


async def _cancel(args: argparse.Namespace) -> int:
    api = _client(args)
    calculation = (await api.execute(CANCEL, {"id": args.id}))["cancelCalculation"]
    _print_result(calculation, args.json)
    return 0


def _run(command: Callable[[argparse.Namespace], Coroutine[Any, Any, int]]) -> Callable[..., int]:
    def handler(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(command(args))
        except UsageError as error:
            stderr.print(f"crunchql: {error}", style="red", highlight=False)
            return EXIT_USAGE
        except ConnectionFailed as error:
            stderr.print(f"crunchql: cannot reach the server: {error}", highlight=False)
            return EXIT_CONNECTION
        except ClientError as error:
            where = f" ({error.field})" if error.field else ""
            stderr.print(f"crunchql: {error.message}{where}", style="red", highlight=False)
            if error.code == "UNAUTHENTICATED":
                return EXIT_CONNECTION
            return EXIT_USAGE if error.code == "BAD_USER_INPUT" else 1
        except KeyboardInterrupt:
            return 130

    return handler


def add_client_commands(commands: Any) -> None:
    """Add the client's sub-commands to the ``crunchql`` parser."""

    def command(name: str, help_text: str, run: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, help=help_text)
        parser.add_argument(
            "--url", help=f"server URL (default: ${config.URL_VARIABLE}, else the last login's)"
        )
        parser.set_defaults(handler=_run(run))
        return parser

    def following(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="print one JSON document")
        parser.add_argument(
            "--reconnect-for",
            type=float,
            default=120.0,
            metavar="SECONDS",
            help="keep trying to reconnect this long after a dropped connection",
        )

    login = command("login", "log in (password from a prompt, or stdin when piped)", _login)
    login.add_argument("--email", required=True)
    login.add_argument("--create", action="store_true", help="create the account first")
    command("logout", "end the session and forget the stored tokens", _logout)
    submit = command("submit", "submit a calculation: KIND field=value ...", _submit)
    submit.add_argument("kind", metavar="KIND", help="e.g. monteCarloPi, mandelbrot")
    submit.add_argument("fields", nargs="*", metavar="field=value")
    submit.add_argument("--input", metavar="JSON", help="the kind's input as a JSON object")
    submit.add_argument("--follow", "-f", action="store_true", help="show progress to the end")
    following(submit)
    watch = command("watch", "follow a calculation to its end", _watch)
    watch.add_argument("id")
    following(watch)
    listing = command("list", "your calculations, newest first", _list)
    listing.add_argument("--status", choices=STATUSES)
    listing.add_argument("--first", type=int, default=20)
    listing.add_argument("--json", action="store_true")
    cancel = command("cancel", "cancel a calculation", _cancel)
    cancel.add_argument("id")
    cancel.add_argument("--json", action="store_true")
