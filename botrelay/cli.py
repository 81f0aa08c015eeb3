"""The ``botrelay`` command. Exit codes: 0 success, 1 failure, 2 usage error.

Expected problems (broker unreachable, bad setting, unknown app) print one clear line, no
traceback. Each command imports only what it runs, so ``botrelay ingress`` never loads the bot.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from botrelay.shared import logs
from botrelay.shared.errors import BotrelayError, SettingsError
from botrelay.shared.settings import Settings, unknown_names

if TYPE_CHECKING:
    from botrelay.worker.bot import Bot

log = logging.getLogger("botrelay")

DEFAULT_APP = "botrelay.echo_bot:bot"


class UsageError(BotrelayError):
    """A command-line mistake: exit code 2."""


def load_bot(spec: str) -> Bot:
    """Import ``MODULE:ATTR`` (from the current directory too) and check it is a ``Bot``."""
    from botrelay.worker.bot import Bot

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageError(f"--app must look like MODULE:ATTR (e.g. {DEFAULT_APP}), not {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise BotrelayError(f"unknown app {spec!r}: cannot import {exc.name!r}") from None
    bot = getattr(module, attr, None)
    if not isinstance(bot, Bot):
        raise BotrelayError(
            f"unknown app {spec!r}: {attr!r} in {module_name} is not a botrelay.Bot")
    return bot


def _install_loop(settings: Settings) -> None:
    if settings.uvloop:
        try:
            import uvloop
        except ImportError:
            return
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _run(coro: Coroutine[Any, Any, None], settings: Settings) -> None:
    _install_loop(settings)
    asyncio.run(coro)


def _freeze_heap() -> None:
    """Once started: move everything allocated so far (modules, app, connections) out of the
    cyclic collector's reach, so its full passes, which pause the event loop, walk only what
    the traffic allocates and not the whole started service."""
    gc.collect()
    gc.freeze()


async def _first(*aws: Coroutine[Any, Any, None]) -> None:
    """Wait for the first of ``aws`` to finish (raising what it raised); cancel the others."""
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()


async def _until_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


# --- commands ---------------------------------------------------------------------------------

async def run_ingress(settings: Settings) -> None:
    from aiohttp import web

    from botrelay.ingress.app import make_app, make_metrics_app
    from botrelay.ingress.state import STATE
    from botrelay.shared.broker import BrokerLink

    app = make_app(settings)
    # An AppRunner keeps an idle connection, or one whose headers never end, for an hour by
    # default; 75 s is what aiohttp's own run_app uses.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.shutdown_grace,
                           keepalive_timeout=75.0)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port, backlog=1024).start()
    log.info("ingress listening on http://%s:%d/callback", settings.host, settings.port)
    metrics_runner = None
    if settings.metrics_port:
        metrics_runner = web.AppRunner(make_metrics_app(app), access_log=None)
        await metrics_runner.setup()
        await web.TCPSite(metrics_runner, settings.host, settings.metrics_port).start()
    _freeze_heap()
    link = app[STATE].broker
    assert isinstance(link, BrokerLink)
    try:
        # Until a signal, or until the broker link gives up for good (queues that exist with
        # other arguments than the settings ask for): then exit with that one line, not 503s.
        await _first(_until_signal(), link.stopped())
    finally:
        # Readiness goes 503 at once; then the listener closes, requests in flight finish
        # (their publishes are confirmed) within the grace, and the broker link closes last.
        app[STATE].closing = True
        log.info("ingress shutting down")
        await runner.cleanup()
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        log.info("ingress stopped")


async def run_worker(settings: Settings, bot: Bot) -> None:
    from botrelay.worker.service import Worker

    worker = Worker(settings, bot)
    await asyncio.wait_for(worker.start(), timeout=30)
    if settings.metrics_port:
        await worker.serve_metrics(settings.metrics_port)
    _freeze_heap()
    try:
        await _until_signal()
    finally:
        log.info("worker shutting down")
        await worker.stop()


async def run_dev_command(settings: Settings, bot: Bot) -> None:
    from botrelay.dev import run_dev

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run_dev(settings, bot, stop)


async def run_fake(port: int, host: str, config: dict[str, Any]) -> None:
    from aiohttp import web

    from botrelay.shared.fake_cometchat import FakeCometChat, FakeConfig

    fake = FakeCometChat(FakeConfig(**config), echo=True)
    runner = web.AppRunner(fake.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"fake CometChat reply API on http://{host}:{port}; set "
          f"BOTRELAY_COMETCHAT_API_BASE=http://{host}:{port}/{{appId}}/v3", flush=True)
    try:
        await _until_signal()
    finally:
        await runner.cleanup()


async def run_dlq(settings: Settings, args: argparse.Namespace) -> None:
    from botrelay.worker import dlq

    if args.dlq_command == "list":
        letters = await dlq.list_letters(settings, args.limit)
        if args.json:
            print(orjson.dumps([x.as_json() for x in letters]).decode())
            return
        if not letters:
            print("the dead-letter queue is empty")
            return
        print(f"{'ID':<44} {'TRIGGER':<14} {'CONVERSATION':<30} {'TRIES':>5} {'AGE':>7}  ERROR")
        for x in letters:
            print(f"{x.id:<44} {x.trigger:<14} {x.conversation:<30} {x.attempts:>5} "
                  f"{x.age_seconds:>6.0f}s  {x.error}")
        print(f"{len(letters)} dead letter(s)")
        return
    selection = dlq.Selection(ids=frozenset(args.id or ()), trigger=args.trigger,
                              error=args.error, everything=getattr(args, "all", False))
    if args.dlq_command == "replay":
        if not (selection.everything or selection.ids or args.trigger or args.error):
            raise UsageError("say what to replay: --all, --id ID, --trigger T or --error SUBSTR")
        report = await dlq.replay(settings, selection, limit=args.limit, dry_run=args.dry_run)
        verb = "would replay" if args.dry_run else "replayed"
    else:
        if not (selection.ids or args.yes):
            raise UsageError("purging every dead letter needs --yes (or pick some with --id)")
        if not selection.ids:
            selection = dlq.Selection(everything=True, trigger=args.trigger, error=args.error)
        report = await dlq.purge(settings, selection, dry_run=args.dry_run)
        verb = "would purge" if args.dry_run else "purged"
    if args.json:
        print(orjson.dumps({"matched": [x.as_json() for x in report.matched],
                            "moved": report.moved, "dry_run": args.dry_run}).decode())
    else:
        print(f"{verb} {len(report.matched) if args.dry_run else report.moved} of "
              f"{report.seen} dead letter(s) examined")


async def run_drain(settings: Settings, old_partitions: int, delete: bool) -> None:
    from botrelay.worker.drain import drain

    report = await drain(settings, old_partitions, delete=delete)
    for name, moved in report.moved.items():
        print(f"{name}: moved {moved}")
    print(f"moved {report.total} callback(s) to the current routing "
          f"(ordering {settings.ordering}, {settings.partitions} partitions)")


async def run_migrate(settings: Settings, dry_run: bool) -> None:
    from botrelay.worker.migrate import migrate

    report = await migrate(settings, dry_run=dry_run)
    if not report.changes:
        print("nothing to migrate: every queue matches the settings")
        return
    if dry_run:
        for change in report.changes:
            print(f"would move {change.queue}: {change.line()}")
        print(f"{len(report.changes)} queue(s) to move; run `botrelay migrate` with the workers "
              "stopped")
        return
    for name, moved in report.moved.items():
        print(f"{name}: recreated, {moved} callback(s) kept")


async def run_console(settings: Settings, host: str, port: int, metrics_urls: list[str],
                      sample_seconds: float) -> None:
    from aiohttp import web

    from botrelay.worker.console.app import make_console
    from botrelay.worker.console.guard import check_auth_settings

    check_auth_settings(settings)
    app = make_console(settings, metrics_urls=metrics_urls, sample_every=sample_seconds)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("console on http://%s:%d/", host, port)
    try:
        await _until_signal()
    finally:
        await runner.cleanup()


# --- argument parsing -------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="botrelay", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingress", help="the HTTP ingress")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--metrics-port", type=int, help="0 disables the metrics server")

    p = sub.add_parser("worker", help="a worker running a bot")
    # Required: a production worker silently running the echo bot would answer real users.
    p.add_argument("--app", required=True,
                   help="MODULE:ATTR of a botrelay.Bot, e.g. examples.echo_bot:bot")
    p.add_argument("--concurrency", type=int)
    p.add_argument("--metrics-port", type=int, help="0 disables the metrics server")

    p = sub.add_parser("dev", help="ingress and worker in one process on an in-memory broker")
    p.add_argument("--app", default=DEFAULT_APP,
                   help=f"MODULE:ATTR of a botrelay.Bot (default {DEFAULT_APP})")
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1: dev mode has no auth")
    p.add_argument("--port", type=int)
    p.add_argument("--log-format", choices=("text", "json"), default="text")

    p = sub.add_parser("fake-cometchat", help="a local stand-in for the reply API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--fail-rate", type=float, default=0.0)
    p.add_argument("--fail-status", type=int, default=500)
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--rate-limit", type=int, default=0, help="requests/s per app")

    p = sub.add_parser("drain", help="move callbacks out of partition queues no longer used")
    p.add_argument("--from-partitions", type=int, required=True, metavar="N",
                   help="the BOTRELAY_PARTITIONS in force before the change")
    p.add_argument("--delete", action="store_true", help="delete the emptied queues")

    p = sub.add_parser("migrate", help="recreate queues whose arguments the settings changed")
    p.add_argument("--dry-run", action="store_true", help="only say which queues would move")

    p = sub.add_parser("console", help="the operator's console: dead letters, queue depths")
    p.add_argument("--host", dest="console_host", default="127.0.0.1")
    p.add_argument("--port", dest="console_port", type=int, default=8090)
    p.add_argument("--metrics-url", dest="metrics_urls", action="append", default=[],
                   metavar="URL", help="an ingress or worker /metrics page for the flow charts "
                   "(repeat for each process)")
    p.add_argument("--sample-seconds", type=float, default=5.0,
                   help="how often depths and metrics are sampled for the charts (default 5)")

    dlq = sub.add_parser("dlq", help="inspect, replay and purge dead letters")
    dsub = dlq.add_subparsers(dest="dlq_command", required=True)
    p = dsub.add_parser("list", help="dead letters with id, trigger, attempts, error, age")
    p.add_argument("--limit", type=int)
    p.add_argument("--json", action="store_true")
    for name, text in (("replay", "move dead letters back to the inbound queue"),
                       ("purge", "drop dead letters")):
        p = dsub.add_parser(name, help=text)
        if name == "replay":
            p.add_argument("--all", action="store_true")
            p.add_argument("--limit", type=int)
        else:
            p.add_argument("--yes", action="store_true", help="confirm purging")
        p.add_argument("--id", action="append", metavar="ID")
        p.add_argument("--trigger")
        p.add_argument("--error", metavar="SUBSTR")
        p.add_argument("--dry-run", action="store_true")
        p.add_argument("--json", action="store_true")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    flags = {name: getattr(args, name, None) for name in
             ("host", "port", "concurrency", "metrics_port")}
    return Settings.from_env(**flags)


def _command(args: argparse.Namespace, settings: Settings) -> Coroutine[Any, Any, None]:
    """The coroutine that runs the parsed command."""
    if args.command == "ingress":
        return run_ingress(settings)
    if args.command == "worker":
        return run_worker(settings, load_bot(args.app))
    if args.command == "dev":
        return run_dev_command(settings, load_bot(args.app))
    if args.command == "fake-cometchat":
        config = {"fail_rate": args.fail_rate, "fail_status": args.fail_status,
                  "latency": args.latency, "rate_limit": args.rate_limit}
        return run_fake(args.port, args.host, config)
    if args.command == "console":
        return run_console(settings, args.console_host, args.console_port, args.metrics_urls,
                           args.sample_seconds)
    if args.command == "drain":
        return run_drain(settings, args.from_partitions, args.delete)
    if args.command == "migrate":
        return run_migrate(settings, args.dry_run)
    return run_dlq(settings, args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = _settings(args)
        if args.command == "dev":
            settings = settings.replace(log_format=args.log_format)
        logs.configure(settings)
        for line in unknown_names():
            log.warning(line)
        if args.command == "ingress":
            settings.check_ingress()
        elif args.command == "worker":
            settings.check_replies()
        _run(_command(args, settings), settings)
    except UsageError as exc:
        print(f"botrelay: {exc}", file=sys.stderr)
        return 2
    except SettingsError as exc:
        print(f"botrelay: bad setting: {exc}", file=sys.stderr)
        return 2
    except BotrelayError as exc:
        print(f"botrelay: {exc}", file=sys.stderr)
        return 1
    except (OSError, TimeoutError) as exc:
        print(f"botrelay: cannot connect: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
