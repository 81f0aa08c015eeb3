"""Queue arguments that cannot change in place, said in one line.

RabbitMQ refuses to declare an existing queue with other arguments (``PRECONDITION_FAILED -
inequivalent arg ...``) and closes the channel. Left alone, that is a traceback in the worker
and a 503 loop in the ingress. This module turns the broker's refusal into a ``QueueMismatch``
naming the queue, the argument, the setting behind it and the way out (``botrelay migrate``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from botrelay.shared.errors import SettingsError

# Which setting decides each argument botrelay gives its queues.
SETTING_OF_ARGUMENT = {
    "x-max-length": "BOTRELAY_INBOUND_MAX_LENGTH",
    "x-delivery-limit": "BOTRELAY_DELIVERY_LIMIT",
    "x-quorum-initial-group-size": "BOTRELAY_QUORUM_SIZE",
    "x-message-ttl": "BOTRELAY_RETRY_DELAYS",
    "x-queue-type": "the queue type (an older botrelay declared other queues)",
    "x-single-active-consumer": "BOTRELAY_ORDERING",
}

_REFUSAL = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for queue '(?P<queue>[^']+)' in vhost '[^']*': "
    r"received (?P<wanted>.+?) but current is (?P<current>.+)$")
_VALUE = re.compile(r"'([^']*)'")


def _value(text: str) -> str:
    """``'20'`` or ``the value '10' of type 'byte'`` -> ``20`` / ``10``; ``none`` -> unset."""
    found = _VALUE.search(text)
    return found.group(1) if found else "unset"


@dataclass(frozen=True, slots=True)
class Mismatch:
    queue: str
    argument: str
    current: str
    wanted: str

    @property
    def setting(self) -> str:
        return SETTING_OF_ARGUMENT.get(self.argument, f"the argument {self.argument}")

    def line(self) -> str:
        return (f"queue {self.queue} has {self.argument}={self.current}, but {self.setting} "
                f"asks for {self.wanted}")


def parse_refusal(text: str) -> Mismatch | None:
    """The mismatch a ``PRECONDITION_FAILED`` reply text describes, if it is one."""
    found = _REFUSAL.search(text)
    if found is None:
        return None
    return Mismatch(found["queue"], found["arg"], _value(found["current"]),
                    _value(found["wanted"]))


class QueueMismatch(SettingsError):
    """A queue exists with arguments the current settings would declare otherwise."""

    def __init__(self, mismatch: Mismatch) -> None:
        super().__init__(
            f"{mismatch.line()}: a queue's arguments cannot change in place; run "
            "`botrelay migrate --dry-run` to see the move, then `botrelay migrate` with the "
            "workers stopped (or set the old value again)")
        self.mismatch = mismatch
