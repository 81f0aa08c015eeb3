"""The console's HTML, rendered on the server; every value is escaped."""

from __future__ import annotations

import html
from collections.abc import Sequence
from urllib.parse import quote, urlencode

import orjson

from botrelay.worker.console.flow import series
from botrelay.worker.console.overview import Overview
from botrelay.worker.dlq import DeadLetter

STYLE = """
body{font:14px system-ui,sans-serif;margin:0;color:#222}
nav{background:#1f2d3d;padding:10px 16px}nav a{color:#fff;margin-right:16px;text-decoration:none}
main{padding:16px}table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f3f5f7}.num{text-align:right}.permanent{color:#a00}.transient{color:#a60}
.card{display:inline-block;border:1px solid #ccc;border-radius:6px;padding:8px 14px;
margin:0 8px 8px 0}
.card b{font-size:22px;display:block}pre{background:#f6f8fa;padding:8px;overflow:auto}
button{margin-right:6px}figure{display:inline-block;margin:0 16px 8px 0}
figcaption{font-size:12px;color:#555}.notice{background:#eef6ee;border:1px solid #9c9;padding:8px}
"""

SELECT_ALL = """
document.addEventListener('DOMContentLoaded', () => {
  const all = document.getElementById('select-all');
  if (all) all.addEventListener('change', () => {
    document.querySelectorAll('input[name=id]').forEach(box => { box.checked = all.checked; });
  });
});
"""


def e(value: object) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)} - botrelay"
            f"</title><style>{STYLE}</style><script>{SELECT_ALL}</script></head><body>"
            "<nav><a href='/'>Overview</a><a href='/dead'>Dead letters</a></nav>"
            f"<main><h1>{e(title)}</h1>{body}</main></body></html>")


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


Series = Sequence[float | None]
COLOURS = ("#2a6ebb", "#c0392b")


def _polylines(lines: Sequence[Series], top: float, step: float) -> str:
    """One polyline per run of known values: a gap (a sample that could not be read) stays a
    gap instead of being drawn as zero."""
    out = []
    for colour, values in zip(COLOURS, lines, strict=False):
        runs: list[list[str]] = [[]]
        for i, v in enumerate(values):
            if v is None:
                runs.append([])
            else:
                runs[-1].append(f"{i * step:.1f},{60 - 56 * v / top:.1f}")
        for run in runs:
            if len(run) > 1:
                out.append(f"<polyline fill='none' stroke='{colour}' stroke-width='2' "
                           f"points='{' '.join(run)}'/>")
            elif run:  # a lone value between gaps: a dot, or it would not show at all
                x, y = run[0].split(",")
                out.append(f"<circle cx='{x}' cy='{y}' r='2' fill='{colour}'/>")
    return "".join(out)


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:.1f}{unit}"


def _last(values: Series) -> float | None:
    """The latest known value: an idle last interval has no latency, the one before may."""
    return next((v for v in reversed(values) if v is not None), None)


def chart(label: str, lines: Sequence[Series], names: Sequence[str] = ("",),
          unit: str = "") -> str:
    """A small inline SVG line chart of the last samples (no charting library, no build step);
    the caption gives each line's last value and the top of the scale."""
    known = [v for values in lines for v in values if v is not None]
    if len(lines[0]) < 2 or not known:
        return (f"<figure data-chart='{e(label)}'><figcaption>{e(label)}: collecting"
                "</figcaption></figure>")
    top = max(max(known), 1e-9)
    step = 300 / (len(lines[0]) - 1)
    last = ", ".join(
        f"<span style='color:{colour}'>{e(name)} {e(_fmt(_last(values), unit))}</span>"
        for colour, name, values in zip(COLOURS, names, lines, strict=False))
    return (f"<figure data-chart='{e(label)}'><svg width='300' height='62' role='img' "
            f"aria-label='{e(label)}'><rect width='300' height='62' fill='#fafbfc'/>"
            f"{_polylines(lines, top, step)}</svg><figcaption>{e(label)}: {last} "
            f"(top {e(_fmt(top, unit))})</figcaption></figure>")


def sparkline(values: Sequence[int], label: str) -> str:
    return chart(label, [[float(v) for v in values]])


def _workers(view: Overview) -> str:
    if view.workers is None:
        return ("<h2>Workers</h2><p id='workers'>No BOTRELAY_REDIS_URL: the partition leases "
                "live in Redis, so which worker holds which partition is not known here (a "
                "single worker without Redis holds them all). The consumers column below "
                "counts each queue's subscribers.</p>")
    rows = "".join(
        f"<tr data-worker='{e(w.id)}'><td>{e(w.id)}</td><td>{'live' if w.live else 'gone'}"
        f"</td><td class='num'>{len(w.partitions)}</td>"
        f"<td data-partitions='{' '.join(map(str, w.partitions))}'>"
        f"{e(', '.join(map(str, w.partitions)) or '-')}</td></tr>" for w in view.workers)
    return ("<h2>Workers</h2><p>From the workers' partition leases in Redis.</p>"
            "<table id='workers'><tr><th>worker</th><th>state</th><th class='num'>partitions"
            f"</th><th>holds</th></tr>{rows}</table>")


def _flow(view: Overview) -> str:
    if not view.metrics_urls:
        return ("<p id='flow'>Callbacks/s and reply latency: start the console with "
                "<code>--metrics-url</code> for each ingress and worker <code>/metrics</code>."
                "</p>")
    points = view.flow
    reached = f"{points[-1].reached}/{points[-1].urls}" if points else "-"
    return (f"<div id='flow' data-reached='{e(reached)}'>"
            + chart("callbacks/s", [series(points, "callbacks_per_s")], ("",), "/s")
            + chart("replies/s", [series(points, "replies_per_s")], ("",), "/s")
            + chart("reply latency", [series(points, "p50"), series(points, "p99")],
                    ("p50", "p99"), "s")
            + f"<p>metrics endpoints answering: {e(reached)}</p></div>")


def overview(view: Overview) -> str:
    shot, past = view.queues, view.depths
    cards = "".join(
        f"<div class='card' data-depth='{role}'><b>{shot.depth(role)}</b>{label}</div>"
        for role, label in (("inbound", "shared inbound"), ("partition", "in partitions"),
                            ("retry", "waiting to retry")))
    cards += (f"<div class='card' data-dead-count='{shot.dead}'><b>{shot.dead}</b>"
              "<a href='/dead'>dead letters</a></div>")
    spool = view.flow[-1].spool if view.flow else None
    if spool is not None:  # an ingress spools: what it holds on disk for the broker
        depth, size, oldest = spool
        cards += (f"<div class='card' data-spool='{int(depth)}'><b>{int(depth)}</b>spooled at "
                  f"the ingress ({size / 1024:.0f} KiB, oldest {oldest:.0f}s)</div>")
    charts = _flow(view) + sparkline(
        [s.depth("inbound") + s.depth("partition") for s in past], "callbacks waiting"
    ) + sparkline([s.dead for s in past], "dead letters")
    rows = "".join(
        f"<tr data-queue='{e(q.name)}'><td>{e(q.name)}</td><td>{e(q.role)}</td>"
        f"<td class='num'>{q.messages}</td><td class='num'>{q.consumers}</td></tr>"
        for q in shot.queues)
    table = ("<h2>Queues</h2><p>Consumers per queue: a partition queue is read by one worker at "
             "a time (single active consumer), so its consumers are the workers ready to hold it."
             "</p><table><tr><th>queue</th><th>role</th><th class='num'>messages</th>"
             f"<th class='num'>consumers</th></tr>{rows}</table>")
    return page("Overview", cards + charts + _workers(view) + table)


def _filters(q: str, kind: str) -> str:
    options = "".join(f"<option value='{v}'{' selected' if v == kind else ''}>{label}</option>"
                      for v, label in (("", "any kind"), ("permanent", "permanent"),
                                       ("transient", "transient")))
    return ("<form method='get' action='/dead' id='filter'>"
            f"<input type='search' name='q' value='{e(q)}' placeholder='text, id, conversation'>"
            f"<select name='kind'>{options}</select> <button type='submit'>Search</button></form>")


def dead_letters(letters: Sequence[DeadLetter], q: str, kind: str, token: str,
                 notice: str = "") -> str:
    rows = "".join(
        f"<tr data-dead-letter='{e(x.id)}'><td><input type='checkbox' name='id' value='{e(x.id)}'"
        f" form='act'></td><td><a href='/dead/{quote(x.id, safe='')}'>{e(x.text or '(no text)')}"
        f"</a></td><td>{e(x.trigger)}</td><td>{e(x.app)}</td><td>{e(x.conversation)}</td>"
        f"<td>{e(x.error)}</td><td class='{e(x.error_kind)}'>{e(x.error_kind)}</td>"
        f"<td class='num'>{x.attempts}</td><td class='num'>{_age(x.age_seconds)}</td></tr>"
        for x in letters)
    hidden = (f"<input type='hidden' name='csrf' value='{e(token)}'>"
              f"<input type='hidden' name='q' value='{e(q)}'>"
              f"<input type='hidden' name='kind' value='{e(kind)}'>")
    buttons = "".join(
        f"<button type='submit' name='op' value='{op}-{scope}'>{label}</button>"
        for op, scope, label in (("replay", "selected", "Replay"), ("purge", "selected", "Purge"),
                                 ("replay", "matching", "Replay all matching"),
                                 ("purge", "matching", "Purge all matching")))
    form = f"<form method='post' action='/dead/preview' id='act'>{hidden}{buttons}</form>"
    head = ("<tr><th><input type='checkbox' id='select-all' title='select all'></th>"
            "<th>message</th><th>trigger</th><th>app</th><th>conversation</th><th>error</th>"
            "<th>kind</th><th class='num'>attempts</th><th class='num'>age</th></tr>")
    shown = f"<p id='shown'>{len(letters)} dead letter(s) shown</p>"
    notice_html = f"<p class='notice' id='notice'>{e(notice)}</p>" if notice else ""
    return page("Dead letters", notice_html + _filters(q, kind) + form + shown
                + f"<table>{head}{rows}</table>")


def preview(op: str, scope: str, ids: Sequence[str], q: str, kind: str, count: int,
            token: str) -> str:
    """The dry run's count, and the button that really does it."""
    verb = "replay" if op == "replay" else "purge"
    what = f"the {len(ids)} selected" if scope == "selected" else "every matching"
    hidden = "".join(f"<input type='hidden' name='id' value='{e(i)}'>" for i in ids)
    hidden += (f"<input type='hidden' name='csrf' value='{e(token)}'>"
               f"<input type='hidden' name='op' value='{e(op)}-{e(scope)}'>"
               f"<input type='hidden' name='q' value='{e(q)}'>"
               f"<input type='hidden' name='kind' value='{e(kind)}'>")
    warning = " Purged letters are gone for good." if op == "purge" else ""
    # Purging cannot be undone: the form does not go until this box is ticked (the browser
    # enforces ``required``; no script, no dialog to be auto-answered).
    ask = ("<label><input type='checkbox' name='understood' id='understood' required> "
           "I understand purged letters cannot be recovered</label><br>"
           if op == "purge" else "")
    back = "/dead?" + urlencode({"q": q, "kind": kind})
    body = (f"<p id='dry-run' data-count='{count}'>Dry run: {count} dead letter(s) would be "
            f"{'replayed' if op == 'replay' else 'purged'} ({what}).{warning}</p>"
            f"<form method='post' action='/dead/apply'>{hidden}{ask}"
            f"<button type='submit' id='confirm'>Confirm {verb} of {count}</button> "
            f"<a href='{e(back)}'>Cancel</a></form>")
    return page(f"Confirm {verb}", body)


def detail(letter: DeadLetter, token: str) -> str:
    try:
        payload = orjson.dumps(orjson.loads(letter.body), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:
        payload = letter.body.decode("utf-8", "replace")
    headers = orjson.dumps(letter.headers, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS,
                           default=str).decode()
    actions = "".join(
        f"<form method='post' action='/dead/preview' style='display:inline'>"
        f"<input type='hidden' name='csrf' value='{e(token)}'>"
        f"<input type='hidden' name='id' value='{e(letter.id)}'>"
        f"<button type='submit' name='op' value='{op}-selected'>{label}</button></form>"
        for op, label in (("replay", "Replay"), ("purge", "Purge")))
    facts = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in (
        ("id", letter.id), ("text", letter.text), ("trigger", letter.trigger),
        ("app", letter.app), ("conversation", letter.conversation), ("error", letter.error),
        ("kind", letter.error_kind), ("attempts", letter.attempts),
        ("failed in", letter.queue), ("age", _age(letter.age_seconds))))
    return page("Dead letter", f"<table id='facts'>{facts}</table>{actions}"
                f"<h2>Payload</h2><pre id='payload'>{e(payload)}</pre>"
                f"<h2>Headers</h2><pre id='headers'>{e(headers)}</pre>")
