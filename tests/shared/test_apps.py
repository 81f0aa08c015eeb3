"""Configured apps: the one of BOTRELAY_COMETCHAT_APP_ID, the apps file, and what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from botrelay.shared.errors import SettingsError
from botrelay.shared.settings import Settings, unknown_names

APPS_TOML = """
[[app]]
id = "aaa111"
region = "eu"
api_key_env = "KEY_A"
callback = [{ username = "cc-a", password_env = "PASS_A" }]

[[app]]
id = "bbb222"
region = "us"
api_key = "key-b"
"""


def test_one_app_from_the_env() -> None:
    s = Settings.from_env({"BOTRELAY_COMETCHAT_APP_ID": "2248348660ad9bd4",
                           "BOTRELAY_COMETCHAT_REGION": "eu",
                           "BOTRELAY_COMETCHAT_API_KEY": "secret-key"})
    [app] = s.apps
    assert (app.id, app.region, app.api_key) == ("2248348660ad9bd4", "eu", "secret-key")
    assert app.api_base(s.cometchat_api_base) == "https://2248348660ad9bd4.api-eu.cometchat.io/v3"
    assert "secret-key" not in repr(app) and "secret-key" not in repr(s)


def test_apps_file_with_env_indirections(tmp_path: Path) -> None:
    path = tmp_path / "apps.toml"
    path.write_text(APPS_TOML)
    s = Settings.from_env({"BOTRELAY_COMETCHAT_APPS_FILE": str(path), "KEY_A": "key-a",
                           "PASS_A": "pw-a"})
    by_id = s.apps_by_id()
    assert by_id["aaa111"].api_key == "key-a"
    assert by_id["aaa111"].callback == (("cc-a", "pw-a"),)
    assert by_id["bbb222"].api_key == "key-b"
    assert s.auth_enabled  # an app's own pair counts
    s.check_replies()
    s.check_ingress()


@pytest.mark.parametrize(("text", "message"), [
    ('[[app]]\nid = "a.b"\nregion = "us"\napi_key = "k"\n', "letters or digits"),
    ('[[app]]\nid = "ab"\nregion = "u s"\napi_key = "k"\n', "lowercase letters"),
    ('[[app]]\nid = "ab"\nregion = "us"\napi_key_env = "NOPE"\n', "NOPE"),
    ('[[app]]\nid = "ab"\nregion = "us"\n[[app]]\nid = "ab"\nregion = "eu"\n', "twice"),
    ("app = 3\n", "[[app]]"),
    ("not toml [", "apps.toml"),
])
def test_bad_apps_files_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "apps.toml"
    path.write_text(text)
    with pytest.raises(SettingsError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Settings.from_env({"BOTRELAY_COMETCHAT_APPS_FILE": str(path)})


def test_several_apps_need_an_app_id_in_the_api_base(tmp_path: Path) -> None:
    path = tmp_path / "apps.toml"
    path.write_text(APPS_TOML)
    with pytest.raises(SettingsError, match=r"must contain \{appId\}"):
        Settings.from_env({"BOTRELAY_COMETCHAT_APPS_FILE": str(path), "KEY_A": "a",
                           "PASS_A": "p", "BOTRELAY_COMETCHAT_API_BASE": "https://x.test/v3"})


@pytest.mark.parametrize("value", ["evil.example/x?", "x@evil", "a b", "äpp", "a" * 65])
def test_a_hostile_configured_app_id_is_refused(value: str) -> None:
    with pytest.raises(SettingsError, match="BOTRELAY_COMETCHAT_APP_ID"):
        Settings.from_env({"BOTRELAY_COMETCHAT_APP_ID": value})


def test_the_ingress_refuses_to_run_open_or_without_an_app() -> None:
    with pytest.raises(SettingsError, match="BOTRELAY_CALLBACK_USERNAME"):
        Settings.from_env({"BOTRELAY_COMETCHAT_APP_ID": "abc"}).check_ingress()
    Settings.from_env({"BOTRELAY_COMETCHAT_APP_ID": "abc",
                       "BOTRELAY_CALLBACK_AUTH": "none"}).check_ingress()
    with pytest.raises(SettingsError, match="BOTRELAY_COMETCHAT_APP_ID"):
        Settings.from_env({"BOTRELAY_CALLBACK_USERNAME": "u",
                           "BOTRELAY_CALLBACK_PASSWORD": "p"}).check_ingress()


def test_the_worker_refuses_a_key_without_an_app_and_no_key_at_all() -> None:
    with pytest.raises(SettingsError, match="BOTRELAY_COMETCHAT_APP_ID"):
        Settings.from_env({"BOTRELAY_COMETCHAT_API_KEY": "k"}).check_replies()
    with pytest.raises(SettingsError, match="BOTRELAY_COMETCHAT_API_KEY"):
        Settings.from_env({"BOTRELAY_COMETCHAT_APP_ID": "abc"}).check_replies()


def test_rotation_pairs_must_be_complete() -> None:
    with pytest.raises(SettingsError, match="PREVIOUS"):
        Settings.from_env({"BOTRELAY_CALLBACK_PREVIOUS_USERNAME": "old"})


def test_unknown_botrelay_variables_are_reported_with_the_nearest_name() -> None:
    lines = unknown_names({"BOTRELAY_CALLBACK_PASWORD": "x", "BOTRELAY_PORT": "1",
                           "BOTRELAY_APP": "m:bot", "OTHER": "y"})
    assert lines == ["BOTRELAY_CALLBACK_PASWORD is not a botrelay setting (did you mean "
                     "BOTRELAY_CALLBACK_PASSWORD?); it is ignored"]
