"""The console's aiohttp application: routes, auth and CSRF checks, and the dead-letter actions.

Actions go in two steps: ``/dead/preview`` runs the operation as a dry run and shows the count,
``/dead/apply`` does it. Both are POSTs carrying the CSRF token; replay and purge are
``worker.dlq.replay`` and ``worker.dlq.purge``, the code behind ``botrelay dlq``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from urllib.parse import urlencode, urlsplit

import aiormq
from aiohttp import web

from botrelay.shared.settings import Settings
from botrelay.worker import dlq
from botrelay.worker.console import pages
from botrelay.worker.console.guard import Guard, check_auth_settings, unauthorized
from botrelay.worker.console.overview import History

SETTINGS = web.AppKey("settings", Settings)
GUARD = web.AppKey("guard", Guard)
HISTORY = web.AppKey("history", History)
LIST_LIMIT = 500  # letters shown per page; actions on "all matching" are not limited by it
KINDS = ("", "permanent", "transient")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, error: str, detail: str) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status)


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    guard = request.app[GUARD]
    user = guard.user(request)
    if user is None:
        return unauthorized()
    if request.method not in ("GET", "HEAD"):
        # A cross-site form post carries the browser's Basic credentials but not the token.
        origin = request.headers.get("Origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.host:
            return _error(403, "forbidden", "cross-origin request")
        form = await request.post()
        if not guard.token_ok(user, str(form.get("csrf", ""))):
            return _error(403, "forbidden", "missing or wrong CSRF token")
    return await handler(request)


@web.middleware
async def _broker_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A broker that does not answer is a clear 503, not a traceback page. The detail names the
    error class only: connection errors can carry the broker's URL."""
    try:
        return await handler(request)
    except (OSError, TimeoutError, aiormq.exceptions.AMQPError) as exc:
        return _error(503, "broker unavailable",
                      f"RabbitMQ did not answer ({type(exc).__name__}); try again")


def _token(request: web.Request) -> str:
    """The CSRF token for this request's user (the guard let it through, so it has one)."""
    guard = request.app[GUARD]
    return guard.token(guard.user(request) or "")


def _filters(source: web.Request | dict[str, str]) -> tuple[str, str]:
    get = source.query.get if isinstance(source, web.Request) else source.get
    q = (get("q") or "").strip()
    kind = get("kind") or ""
    if kind not in KINDS:
        raise web.HTTPBadRequest(text='{"error": "bad request", "detail": "kind must be '
                                 'permanent or transient"}', content_type="application/json")
    return q, kind


def _selection(q: str, kind: str) -> dlq.Selection | None:
    if not q and not kind:
        return None
    return dlq.Selection(query=q or None, kind=kind or None, everything=True)


async def overview(request: web.Request) -> web.Response:
    view = await request.app[HISTORY].overview()
    return web.Response(text=pages.overview(view), content_type="text/html")


async def dead_letters(request: web.Request) -> web.Response:
    q, kind = _filters(request)
    settings = request.app[SETTINGS]
    letters = await dlq.list_letters(settings, LIST_LIMIT, _selection(q, kind))
    token = _token(request)
    text = pages.dead_letters(letters, q, kind, token, request.query.get("done", ""))
    return web.Response(text=text, content_type="text/html")


async def detail(request: web.Request) -> web.Response:
    letter = await dlq.get_letter(request.app[SETTINGS], request.match_info["id"])
    if letter is None:
        return _error(404, "not found", "no dead letter with that id (replayed or purged?)")
    token = _token(request)
    return web.Response(text=pages.detail(letter, token), content_type="text/html")


async def _parse_action(request: web.Request) -> tuple[str, str, list[str], str, str,
                                                      dlq.Selection]:
    form = await request.post()
    op, _, scope = str(form.get("op", "")).partition("-")
    if op not in ("replay", "purge") or scope not in ("selected", "matching"):
        raise web.HTTPBadRequest(text='{"error": "bad request", "detail": "unknown action"}',
                                 content_type="application/json")
    q, kind = _filters({"q": str(form.get("q", "")), "kind": str(form.get("kind", ""))})
    ids = [str(x) for x in form.getall("id", [])]
    if scope == "selected":
        if not ids:
            raise web.HTTPBadRequest(text='{"error": "bad request", "detail": "select at least '
                                     'one dead letter"}', content_type="application/json")
        selection = dlq.Selection(ids=frozenset(ids))
    else:
        ids = []
        selection = _selection(q, kind) or dlq.Selection(everything=True)
    return op, scope, ids, q, kind, selection


async def _run(settings: Settings, op: str, selection: dlq.Selection,
               dry_run: bool) -> dlq.Report:
    if op == "replay":
        return await dlq.replay(settings, selection, dry_run=dry_run)
    return await dlq.purge(settings, selection, dry_run=dry_run)


async def preview(request: web.Request) -> web.Response:
    op, scope, ids, q, kind, selection = await _parse_action(request)
    report = await _run(request.app[SETTINGS], op, selection, dry_run=True)
    token = _token(request)
    text = pages.preview(op, scope, ids, q, kind, len(report.matched), token)
    return web.Response(text=text, content_type="text/html")


async def apply(request: web.Request) -> web.Response:
    op, _, _, q, kind, selection = await _parse_action(request)
    if op == "purge" and (await request.post()).get("understood") != "on":
        # The confirmation page's box; a client that skips the page must say so too.
        return _error(400, "bad request", "purging needs understood=on (the confirmation)")
    report = await _run(request.app[SETTINGS], op, selection, dry_run=False)
    done = f"{'replayed' if op == 'replay' else 'purged'} {report.moved}"
    raise web.HTTPSeeOther("/dead?" + urlencode({"q": q, "kind": kind, "done": done}))


async def _sampling(app: web.Application) -> AsyncIterator[None]:
    app[HISTORY].start()
    yield
    await app[HISTORY].stop()


def make_console(settings: Settings, *, metrics_urls: Sequence[str] = (),
                 sample_every: float = 5.0) -> web.Application:
    """The console; ``metrics_urls`` are the ingresses' and workers' ``/metrics`` pages the
    flow charts are drawn from. Refuses (SettingsError) to build without credentials unless
    ``BOTRELAY_CONSOLE_AUTH=none``."""
    check_auth_settings(settings)
    app = web.Application(middlewares=[_guard, _broker_errors], client_max_size=1024 * 1024)
    app[SETTINGS] = settings
    app[GUARD] = Guard(settings)
    app[HISTORY] = History(settings, sample_every, tuple(metrics_urls))
    app.cleanup_ctx.append(_sampling)
    app.router.add_get("/", overview)
    app.router.add_get("/dead", dead_letters)
    app.router.add_get("/dead/{id}", detail)
    app.router.add_post("/dead/preview", preview)
    app.router.add_post("/dead/apply", apply)
    return app
