"""Mutation check: does the suite notice when a promise breaks?

Each fault below is a deliberate bug written as a text patch (``old`` -> ``new``, each ``old``
found exactly once). For every fault the tree is copied to a temporary directory, the patch is
applied to the copy, and the fault's tests run against the copy; the fault is *caught* when at
least one of them fails. A baseline run of every listed test on an unpatched copy comes first,
so a test that fails anyway cannot pass for a catch.

    .venv/bin/python tests/mutation_check.py            # every fault
    .venv/bin/python tests/mutation_check.py --list     # the faults and their tests
    .venv/bin/python tests/mutation_check.py ack-before-reply no-dedup --no-baseline

Needs the same RabbitMQ and Redis as the integration tests. Exit status 0 only when every fault
was caught and the baseline passed; a test failing in the baseline is named, and its failures
under a fault do not count as catches.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What a copy of the tree leaves out: nothing the tests read lives there.
SKIP = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache",
                              ".pytest_cache", "*.egg-info", "results", "node_modules")
RUN_TIMEOUT = 900.0  # seconds for one fault's tests


@dataclass(frozen=True)
class Edit:
    path: str  # file in the tree
    old: str
    new: str


@dataclass(frozen=True)
class Fault:
    name: str
    what: str
    edits: tuple[Edit, ...]
    tests: tuple[str, ...]  # pytest files or node ids


def fault(name: str, what: str, path: str, old: str, new: str, tests: tuple[str, ...],
          *more: Edit) -> Fault:
    """A fault of one edit (``path``: ``old`` -> ``new``), and any ``more``."""
    return Fault(name, what, (Edit(path, old, new), *more), tests)


FAULTS = [
    fault(
        "ack-before-reply", "the worker acks a delivery before it has replied",
        "worker/consumer.py",
        "            try:\n                result = await self._run(delivery, ctx)\n",
        "            try:\n                await delivery.ack()\n"
        "                result = await self._run(delivery, ctx)\n",
        ("tests/integration/test_graceful_shutdown.py",
         "tests/integration/test_exactly_once.py::"
         "test_worker_sigkilled_mid_stream_loses_and_doubles_nothing"),
    ),
    fault(
        "no-dedup", "a callback already answered is answered again",
        "worker/consumer.py",
        "        if claim.status is Status.DONE:\n            return DUPLICATE\n",
        "        if False:\n            return DUPLICATE\n",
        ("tests/integration/test_exactly_once.py::"
         "test_duplicates_posted_across_three_workers_get_one_reply_each",
         "tests/integration/test_dead_letters.py::"
         "test_replaying_an_already_answered_callback_sends_nothing"),
    ),
    fault(
        "no-confirm-wait", "the ingress answers 200 without waiting for the broker's confirm",
        "shared/broker.py",
        "            await self._batcher.publish(underlay, exchange.name, routing_key, body, "
        "properties)\n",
        "            asyncio.ensure_future(self._batcher.publish(\n"
        "                underlay, exchange.name, routing_key, body, properties))\n",
        ("tests/integration/test_ingress_shutdown.py",
         "tests/integration/test_back_pressure.py"),
    ),
    fault(
        "swallow-publish-error", "a refused publish is answered 200 queued",
        "ingress/callback.py",
        "    except PUBLISH_ERRORS as exc:\n",
        "    except PUBLISH_ERRORS as exc:\n"
        "        state.metrics.queued.inc()\n"
        "        return _json(200, {\"status\": \"queued\", \"id\": callback.dedup_key})\n",
        ("tests/integration/test_back_pressure.py",),
    ),
    fault(
        "ignore-retry-after", "the reply client's own wait before its next attempt is its "
        "backoff, whatever the API asked",
        "worker/reply_client.py",
        "            return min(exc.retry_after, MAX_RETRY_AFTER)\n",
        "            return float(self.backoff(state))\n",
        ("tests/worker/test_reply_client.py",
         "tests/integration/test_reply_api_answers.py"),
    ),
    fault(
        "retry-after-not-read", "the reply client never reads Retry-After or X-RateLimit-Reset "
        "(neither its own wait nor the rate limiter's pause sees them)",
        "worker/reply_client.py",
        "                retry_after = retry_after_seconds(resp.headers)\n",
        "                retry_after = None\n",
        ("tests/worker/test_reply_client.py",
         "tests/integration/test_reply_api_answers.py"),
    ),
    fault(
        "reply-to-sender-in-group", "a reply to a group message goes to its sender",
        "shared/model.py",
        "        if self.is_group:\n            return self.receiver, \"group\"\n",
        "        if self.is_group:\n            return self.sender, \"user\"\n",
        ("tests/worker/test_reply_kinds.py",
         "tests/integration/test_pipeline.py::"
         "test_every_fixture_and_1000_callbacks_get_exactly_one_correct_reply"),
    ),
    fault(
        "no-claim-release", "a failed attempt keeps its dedup claim until the lease expires",
        "worker/consumer.py",
        "            with contextlib.suppress(DedupUnavailable):\n"
        "                await self.dedup.release(key, claim.token, unsure=unsure, pen=ctx.pen)\n",
        "            pass\n",
        ("tests/integration/test_graceful_shutdown.py",
         "tests/integration/test_retry_semantics.py"),
    ),
    fault(
        "publish-before-auth", "the ingress publishes a callback before checking credentials",
        "ingress/callback.py",
        "    settings = state.settings\n"
        "    owners = state.access.authenticate(request.headers.get(\"Authorization\"))\n",
        "    settings = state.settings\n"
        "    await state.broker.publish_callback(await request.read(), \"inbound\", "
        "message_id=\"unchecked\", headers={}, timeout=settings.publish_timeout)\n"
        "    owners = state.access.authenticate(request.headers.get(\"Authorization\"))\n",
        ("tests/ingress/test_auth_hostile.py",),
    ),
    # The gaps issue 18 closed: each test below failed to notice its fault before.
    fault(
        "limiter-too-fast", "the shared outbound rate limiter lets twice its rate through",
        "worker/rate_limit.py",
        "  app_step = app_iv / f\n",
        "  app_step = app_iv / f / 2\n",
        ("tests/integration/test_outbound_rate_limit.py",),
    ),
    fault(
        "408-not-retried", "a 408 from the reply API is taken as a permanent refusal",
        "worker/reply_client.py",
        "_RETRY_STATUSES = frozenset({408, 429})\n",
        "_RETRY_STATUSES = frozenset({429})\n",
        ("tests/integration/test_reply_api_answers.py",),
    ),
    fault(
        "replay-keeps-attempts", "a replayed letter keeps its attempt count",
        "worker/dlq.py",
        "        headers[ATTEMPT] = 1\n",
        "",
        ("tests/integration/test_replay_attempts.py",),
    ),
    fault(
        "replay-unmarked", "a replayed letter does not carry x-botrelay-replayed",
        "worker/dlq.py",
        "        headers[REPLAYED] = int(time.time() * 1000)\n",
        "",
        ("tests/integration/test_replay_attempts.py",),
    ),
    fault(
        "worker-ready-while-stopping", "the worker's /readyz stays 200 while it shuts down",
        "worker/service.py",
        "        ready = self.broker.ready and not self._stopped.is_set()\n",
        "        ready = self.broker.ready\n",
        ("tests/integration/test_worker_health.py",),
    ),
    fault(
        # (0.01 s, not 0: aiohttp reads a timeout of 0 as no timeout at all.)
        "ingress-drops-in-flight", "the ingress cancels the requests in flight at SIGTERM",
        "botrelay/cli.py",
        "shutdown_timeout=settings.shutdown_grace,",
        "shutdown_timeout=0.01,",
        ("tests/integration/test_ingress_shutdown.py",),
    ),
    fault(
        "transient-callbacks", "callbacks wait as transient messages in classic queues",
        "shared/topology.py",
        '    return {**arguments, **extra}\n',
        # (without the quorum-only arguments, which a classic queue refuses)
        '    quorum_only = ("x-dead-letter-strategy", "x-quorum-initial-group-size",\n'
        '                   "x-queue-leader-locator")\n'
        '    return {**{k: v for k, v in {**arguments, **extra}.items() if k not in quorum_only},\n'
        '            "x-queue-type": "classic"}\n',
        ("tests/integration/test_broker_restart.py",),
        Edit("shared/broker.py", "delivery_mode=DeliveryMode.PERSISTENT.value,",
             "delivery_mode=DeliveryMode.NOT_PERSISTENT.value,"),
    ),
    fault(
        "stream-forgives-refusals", "the chaos stream's reckoning forgets callbacks answered "
        "4xx or still unanswered at its deadline",
        "tests/chaos/stream.py",
        "    figures.lost += refused + unanswered\n",
        "",
        ("tests/chaos/test_stream_reckoning.py",),
    ),
    fault(
        "no-delivery-limit", "the inbound queues have no delivery limit: a message handed "
        "back joins the tail, behind its conversation's later messages",
        "shared/topology.py",
        '            "x-delivery-limit": settings.delivery_limit,\n',
        "",
        ("tests/integration/test_requeue_order.py",),
    ),
]


def copy_tree(into: Path) -> Path:
    """The working tree (symlinks kept: ``botrelay/{ingress,worker,shared}`` point into it)."""
    target = into / "tree"
    shutil.copytree(ROOT, target, symlinks=True, ignore=SKIP)
    return target


def apply(tree: Path, fault: Fault) -> None:
    for edit in fault.edits:
        path = tree / edit.path
        text = path.read_text()
        found = text.count(edit.old)
        if found != 1:
            raise SystemExit(f"{fault.name}: the patch's text is in {edit.path} {found} times "
                             "(expected once): update the fault to the code")
        path.write_text(text.replace(edit.old, edit.new))


@dataclass
class Run:
    failed: list[str]
    passed: int
    errors: list[str]
    seconds: float
    returncode: int
    output: str = ""  # pytest's output, for a baseline that fails


def run_tests(tree: Path, tests: tuple[str, ...]) -> Run:
    """pytest on the copy, importing the copy's code (its root first on the path)."""
    report = tree / "mutation-report.xml"
    env = {**_clean_env(), "PYTHONPATH": str(tree)}
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             f"--junitxml={report}", *tests],
            cwd=tree, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
        code, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired:
        code, output = -1, f"timed out after {RUN_TIMEOUT:g}s"
    failed: list[str] = []
    errors: list[str] = []
    passed = 0
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            node = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
            if case.find("failure") is not None:
                failed.append(node)
            elif case.find("error") is not None:
                errors.append(node)
            elif case.find("skipped") is None:
                passed += 1
    return Run(failed, passed, errors, time.monotonic() - started, code, output)


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}


def check_imports(tree: Path) -> None:
    """The copy's tests must import the copy's code, not the installed checkout's."""
    out = subprocess.run(
        [sys.executable, "-c", "import botrelay.worker.consumer as m; print(m.__file__)"],
        cwd=tree, env={**_clean_env(), "PYTHONPATH": str(tree)}, capture_output=True,
        text=True, timeout=60, check=True).stdout.strip()
    if not Path(out).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"the copy imports botrelay from {out}, not from {tree}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("faults", nargs="*", help="fault names (default: all)")
    parser.add_argument("--list", action="store_true", help="list the faults and exit")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the run on the unpatched copy")
    args = parser.parse_args(argv)
    chosen = [f for f in FAULTS if not args.faults or f.name in args.faults]
    unknown = set(args.faults) - {f.name for f in FAULTS}
    if unknown:
        parser.error(f"unknown faults: {sorted(unknown)}")
    if args.list:
        for one in chosen:
            print(f"{one.name}: {one.what} "
                  f"({', '.join(sorted({e.path for e in one.edits}))})")
            for test in one.tests:
                print(f"    {test}")
        return 0

    ok = True
    unreliable: set[str] = set()  # tests failing unpatched: their failures prove nothing
    with tempfile.TemporaryDirectory(prefix="botrelay-mutation-") as tmp:
        if not args.no_baseline:
            tree = copy_tree(Path(tmp) / "baseline")
            check_imports(tree)
            tests = tuple(dict.fromkeys(t for f in chosen for t in f.tests))
            base = run_tests(tree, tests)
            print(f"baseline: {base.passed} passed, {len(base.failed)} failed, "
                  f"{len(base.errors)} errors in {base.seconds:.0f}s", flush=True)
            unreliable = set(base.failed + base.errors)
            for node in sorted(unreliable):
                print(f"    fails unpatched (not counted as a catch): {node}")
            if base.returncode not in (0, 1) or (base.returncode == 1 and not unreliable):
                print("\n".join(base.output.splitlines()[-40:]))
                print("the baseline run itself broke: fix that first", flush=True)
                return 2
            ok = not unreliable
            shutil.rmtree(tree)
        for one in chosen:
            tree = copy_tree(Path(tmp) / one.name)
            apply(tree, one)
            run = run_tests(tree, one.tests)
            catches = [n for n in run.failed + run.errors if n not in unreliable]
            caught = bool(catches) or (run.returncode not in (0, 1, 5))
            ok &= caught
            verdict = "CAUGHT" if caught else "MISSED"
            print(f"{verdict:<7} {one.name:<28} {len(run.failed)} failed, {run.passed} "
                  f"passed in {run.seconds:.0f}s  ({one.what})", flush=True)
            for node in catches:
                print(f"    caught by {node}", flush=True)
            for node in sorted(set(run.failed + run.errors) - set(catches)):
                print(f"    failed, but fails unpatched too: {node}", flush=True)
            if caught and not catches:
                print(f"    pytest exited {run.returncode} (no test report)", flush=True)
            shutil.rmtree(tree)
    print("every fault caught" if ok else
          "some faults were not caught, or the baseline did not pass", flush=True)
    return 0 if ok else 1

if __name__ == "__main__":
    sys.exit(main())
