"""Medians over repeated runs, ratios against the baselines, the goals, and the outputs: a table
on stdout, a JSON file and a PNG chart under ``bench/results/``."""

from __future__ import annotations

import math
import statistics
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

NUMERIC = ("throughput", "p50_ms", "p90_ms", "p99_ms", "max_ms", "replies", "requests",
           "errors", "sent_rate", "queue_depth_max", "queue_depth_first_half_max",
           "queue_depth_second_half_max", "accepted", "sent", "ingress_p99_ms",
           "worker_cpu_us_per_msg", "server_cpu_us_per_request")


def medians(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (scenario, contender): the median of each figure over the repeats."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in runs:
        groups[(row["scenario"], row["contender"])].append(row)
    out = []
    for rows in groups.values():
        merged = dict(rows[-1])
        for name in NUMERIC:
            values = [r[name] for r in rows if isinstance(r.get(name), int | float)
                      and not math.isnan(r[name])]
            if values:
                merged[name] = statistics.median(values)
        merged["runs"] = len(rows)
        merged["throughput_by_run"] = {r.get("run", i + 1): r.get("throughput", 0.0)
                                       for i, r in enumerate(rows)}
        out.append(merged)
    return out


def _find(rows: list[dict[str, Any]], scenario: str, contender: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["scenario"] == scenario
                 and r["contender"].startswith(contender)), None)


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
    """The median over the suite's repeats of a's throughput / b's in the same repeat (the two
    ran minutes apart, not hours), else the ratio of the medians."""
    if a is None or b is None or not b.get("throughput"):
        return None
    mine, theirs = a.get("throughput_by_run") or {}, b.get("throughput_by_run") or {}
    paired = [mine[k] / theirs[k] for k in mine if theirs.get(k)]
    if paired:
        return float(statistics.median(paired))
    return float(a["throughput"]) / float(b["throughput"])


def goals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each goal with its measured value and whether it is met (None: not measured)."""
    ingress_b = _find(rows, "ingress", "baseline")
    ingress = _find(rows, "ingress", "botrelay (auth, validation, metrics), ordering=none")
    ingress_conv = _find(rows, "ingress",
                         "botrelay (auth, validation, metrics), ordering=conversation")
    base2 = _find(rows, "drain", "baseline (2)")
    fast = _find(rows, "drain", "baseline (3)")
    mem = _find(rows, "drain", "botrelay, memory dedup")
    red = _find(rows, "drain", "botrelay, Redis dedup")
    red2 = _find(rows, "scaling", "botrelay, Redis dedup, 2 workers")
    ordered = _find(rows, "ordering", "botrelay, Redis dedup, ordering=conversation")
    e500 = _find(rows, "e2e 500/s", "botrelay")
    e2000 = _find(rows, "e2e 2000/s", "botrelay")
    e500_b = _find(rows, "e2e 500/s", "baselines")
    e2000_b = _find(rows, "e2e 2000/s", "baselines")
    out = []

    def ratio_goal(name: str, value: float | None, target: float) -> None:
        out.append({"goal": name, "target": f">= {target:g}x", "value": value,
                    "shown": "n/a" if value is None else f"{value:.2f}x",
                    "met": None if value is None else value >= target})

    ratio_goal("ingress vs baseline (1), one quorum queue each", _ratio(ingress, ingress_b), 1.0)
    conv = _ratio(ingress_conv, ingress_b)
    out.append({"goal": "ingress, 16 partition queues vs baseline (1)", "target": "(reported)",
                "value": conv, "met": None, "shown": "n/a" if conv is None else f"{conv:.2f}x"})
    ratio_goal("drain, memory dedup vs baseline (2)", _ratio(mem, base2), 0.9)
    ratio_goal("drain, Redis dedup vs baseline (2)", _ratio(red, base2), 0.75)
    ratio_goal("drain, Redis dedup vs FastStream (3)", _ratio(red, fast), 1.0)
    ratio_goal("ordering=conversation vs none (Redis dedup)", _ratio(ordered, red), 0.8)
    out.append({"goal": "scaling 1 -> 2 workers (Redis dedup)", "target": "(reported)",
                "value": _ratio(red2, red), "met": None,
                "shown": "n/a" if _ratio(red2, red) is None else f"{_ratio(red2, red):.2f}x"})
    if e500 is not None:
        p99 = e500["p99_ms"]
        out.append({"goal": "e2e p99 at 500/s, Redis dedup", "target": "< 25 ms", "value": p99,
                    "shown": f"{p99:.1f} ms", "met": p99 < 25.0})
    if e500_b is not None:
        out.append({"goal": "e2e p99 at 500/s, baselines (1)+(2)", "target": "(reported)",
                    "value": e500_b["p99_ms"], "shown": f"{e500_b['p99_ms']:.1f} ms",
                    "met": None})
    if e2000 is not None:
        keeps_up = e2000["throughput"] >= 0.97 * e2000["offered_rate"] and \
            e2000["replies"] >= e2000["accepted"]
        flat = e2000["queue_depth_second_half_max"] <= max(
            e2000["queue_depth_first_half_max"], 0.25 * e2000["offered_rate"])
        out.append({"goal": "no queue growth at 2000/s, 2 workers", "target": "flat depth",
                    "value": e2000["queue_depth_max"],
                    "shown": f"max depth {e2000['queue_depth_max']:.0f}, "
                             f"{e2000['throughput']:.0f} replies/s",
                    "met": keeps_up and flat})
    if e2000_b is not None:
        out.append({"goal": "replies/s at 2000/s offered, baselines (1)+(2)",
                    "target": "(reported)", "value": e2000_b["throughput"],
                    "shown": f"{e2000_b['throughput']:.0f} replies/s, max depth "
                             f"{e2000_b['queue_depth_max']:.0f}", "met": None})
    return out


def reference(rows: list[dict[str, Any]], row: dict[str, Any]) -> str:
    """The ratio shown beside a row: against the baseline of its scenario."""
    base = {"ingress": _find(rows, "ingress", "baseline"),
            "drain": _find(rows, "drain", "baseline (2)"),
            "scaling": _find(rows, "drain", "botrelay, Redis dedup"),
            "ordering": _find(rows, "drain", "botrelay, Redis dedup"),
            "e2e 500/s": _find(rows, "e2e 500/s", "baselines"),
            "e2e 2000/s": _find(rows, "e2e 2000/s", "baselines")}.get(row["scenario"])
    if base is None or base is row:
        return ""
    value = _ratio(row, base)
    return "" if value is None else f"{value:.2f}x"


def _ms(row: dict[str, Any], name: str) -> str:
    value = row.get(name)
    return f"{value:.1f}" if isinstance(value, int | float) and not math.isnan(value) else "-"


def _cpu(row: dict[str, Any]) -> str:
    """CPU time of the measured process per request (ingress) or per message (workers)."""
    value = row.get("server_cpu_us_per_request", row.get("worker_cpu_us_per_msg"))
    return f"{value:.0f}" if isinstance(value, int | float) and not math.isnan(value) else "-"


def table(rows: list[dict[str, Any]], goal_rows: list[dict[str, Any]]) -> str:
    head = (f"{'scenario':<12} {'contender':<58} {'per s':>8} {'ratio':>6} {'p50 ms':>7} "
            f"{'p99 ms':>7} {'max ms':>7} {'cpu us':>6} {'runs':>4}")
    lines = [head, "-" * len(head)]
    for row in rows:
        lines.append(f"{row['scenario']:<12} {row['contender']:<58} "
                     f"{row.get('throughput', 0.0):>8.0f} {reference(rows, row):>6} "
                     f"{_ms(row, 'p50_ms'):>7} {_ms(row, 'p99_ms'):>7} {_ms(row, 'max_ms'):>7} "
                     f"{_cpu(row):>6} {row.get('runs', 1):>4}")
    lines += ["", f"{'goal':<50} {'target':<12} {'measured':<34} met"]
    for g in goal_rows:
        met = {True: "yes", False: "NO", None: "-"}[g["met"]]
        lines.append(f"{g['goal']:<50} {g['target']:<12} {g['shown']:<34} {met}")
    return "\n".join(lines)


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))


def chart(path: Path, rows: list[dict[str, Any]]) -> bool:
    """Throughput per scenario and contender, and latency percentiles; False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 10))
    labels = [f"{r['scenario']}\n{r['contender']}" for r in rows]
    top.barh(range(len(rows)), [r.get("throughput", 0.0) for r in rows], color="#4878a8")
    top.set_yticks(range(len(rows)), labels, fontsize=7)
    top.invert_yaxis()
    top.set_xlabel("per second (requests, replies)")
    top.set_title("Throughput")
    lat = [r for r in rows if isinstance(r.get("p99_ms"), int | float)]
    width = 0.27
    for k, (name, colour) in enumerate((("p50_ms", "#6aa36a"), ("p99_ms", "#d9a441"),
                                        ("max_ms", "#c0504d"))):
        bottom.bar([i + (k - 1) * width for i in range(len(lat))],
                   [r.get(name) or 0.0 for r in lat], width, label=name[:-3], color=colour)
    bottom.set_xticks(range(len(lat)), [f"{r['scenario']}\n" + "\n".join(
        textwrap.wrap(r["contender"], 24)) for r in lat], fontsize=7)
    bottom.set_ylabel("ms")
    bottom.set_yscale("log")
    bottom.set_title("Latency (ingress: HTTP answer; e2e: send to reply accepted)")
    bottom.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
