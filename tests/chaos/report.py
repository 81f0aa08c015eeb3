"""Figures from the fault and fuzz tests, collected over a run and printed as one table at the end
(by ``tests/chaos/conftest.py``).

Each row is one fault or hostile input tried: callbacks sent, accepted (2xx queued), answered,
duplicated (answered more than once) and lost (accepted but never answered).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class Figures:
    name: str
    sent: int = 0
    accepted: int = 0
    answered: int = 0
    duplicated: int = 0
    lost: int = 0
    seconds: float = 0.0
    note: str = ""
    extra: dict[str, int] = field(default_factory=dict)

    def count_replies(self, accepted_texts: Iterable[str], reply_texts: Iterable[str]) -> None:
        """Fill answered/duplicated/lost from the texts accepted and the texts replied."""
        wanted = set(accepted_texts)
        got = Counter(reply_texts)
        self.accepted = len(wanted)
        self.answered = sum(1 for t in wanted if got[t] > 0)
        self.duplicated = sum(n - 1 for t, n in got.items() if n > 1)
        self.lost = sum(1 for t in wanted if got[t] == 0)


ROWS: list[Figures] = []


def record(figures: Figures) -> Figures:
    ROWS.append(figures)
    return figures


def table(rows: list[Figures]) -> list[str]:
    head = f"{'fault / hostile input':<46} {'sent':>6} {'accept':>6} {'answer':>6} " \
           f"{'dup':>4} {'lost':>4} {'secs':>5}  note"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.name[:46]:<46} {r.sent:>6} {r.accepted:>6} {r.answered:>6} "
                     f"{r.duplicated:>4} {r.lost:>4} {r.seconds:>5.1f}  {r.note}")
    return lines
