"""A session's liveness key names its worker, and the console reads the worker back from it."""

from __future__ import annotations

import pytest

from botrelay.worker.liveness import session_key, worker_of
from botrelay.worker.partitions import worker_id


@pytest.mark.parametrize("tag", ["", "3f2a", "4821", "0000", "abcd"])
@pytest.mark.parametrize("session", [0, 1, 12])
def test_the_worker_is_read_back_from_every_session_name(session: int, tag: str) -> None:
    # A tag of decimal digits ("4821") once read as the session number: the console then
    # showed a worker as "<id>.1" beside its partitions.
    for worker in (worker_id(), "web.5-77-abcdef", "ip-10-0-0-1.ec2.internal-9-0a1b2c"):
        key = session_key("p", worker, session, tag)
        assert worker_of("p", key) == worker
        assert worker_of("p", key.removeprefix("p:alive:{p}:")) == worker


def test_a_bare_worker_id_is_its_own_worker() -> None:
    assert worker_of("p", "w-1-abcdef") == "w-1-abcdef"
