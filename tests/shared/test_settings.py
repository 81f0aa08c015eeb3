"""Settings: env vars parsed and checked, flags override, secrets never in repr."""

from __future__ import annotations

import pytest

from botrelay.shared.errors import SettingsError
from botrelay.shared.settings import Settings


def test_defaults_match_the_design() -> None:
    s = Settings.from_env({})
    assert s.amqp_url == "amqp://guest:guest@localhost:5672/"
    assert s.prefix == "botrelay"
    assert s.redis_url is None
    assert s.cometchat_api_base == "https://{appId}.api-{region}.cometchat.io/v3"
    assert (s.concurrency, s.max_attempts, s.dedup_ttl, s.max_body) == (64, 6, 86400, 262144)
    assert s.retry_delays == (1, 5, 30, 120, 600)
    assert s.publish_timeout == 1.5
    assert s.log_format == "json"


def test_env_parsed_and_flags_override() -> None:
    env = {"BOTRELAY_CONCURRENCY": "8", "BOTRELAY_RETRY_DELAYS": "0.5, 2,10",
           "BOTRELAY_PREFIX": "bots", "BOTRELAY_LOG_FORMAT": "text", "BOTRELAY_UVLOOP": "no"}
    s = Settings.from_env(env, concurrency=16, port=None)
    assert s.concurrency == 16  # the flag wins
    assert s.port == 8080  # a flag left unset does not
    assert s.retry_delays == (0.5, 2.0, 10.0)
    assert (s.prefix, s.log_format, s.uvloop) == ("bots", "text", False)
    assert s.replace(concurrency=None, prefix="other").prefix == "other"


@pytest.mark.parametrize(("env", "message"), [
    ({"BOTRELAY_CONCURRENCY": "many"}, "BOTRELAY_CONCURRENCY='many' is not valid"),
    ({"BOTRELAY_CONCURRENCY": "0"}, "positive"),
    ({"BOTRELAY_RETRY_DELAYS": "1,-5"}, "BOTRELAY_RETRY_DELAYS"),
    ({"BOTRELAY_LOG_FORMAT": "xml"}, "json, text"),
    ({"BOTRELAY_CALLBACK_USERNAME": "only-user"}, "both"),
    ({"BOTRELAY_DEDUP_LEASE": "5"}, "BOTRELAY_DEDUP_LEASE must be longer"),
    ({"BOTRELAY_PREFIX": "a b"}, "plain name"),
])
def test_bad_values_are_one_clear_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings.from_env(env)


def test_secrets_stay_out_of_repr() -> None:
    s = Settings.from_env({"BOTRELAY_CALLBACK_USERNAME": "u", "BOTRELAY_CALLBACK_PASSWORD": "pw-1",
                           "BOTRELAY_COMETCHAT_API_KEY": "key-2",
                           "BOTRELAY_AMQP_URL": "amqp://u:amqp-3@h/",
                           "BOTRELAY_REDIS_URL": "redis://:redis-4@h/0"})
    text = repr(s)
    for secret in ("pw-1", "key-2", "amqp-3", "redis-4"):
        assert secret not in text


def test_every_field_has_a_botrelay_env_var() -> None:
    names = Settings().env_names()
    assert all(v.startswith("BOTRELAY_") for v in names.values())
    assert len(set(names.values())) == len(names)
