"""Settings: TOML overridden by BRIDGE_* variables, checked once, one clear line per problem."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from bridge.config import load_settings, resolve_config_path
from bridge.errors import ConfigError
from tests.bridges import SECRET_VALUES, SECRETS
from tests.settings_files import TOKENS, deep_merge, write_toml


@pytest.fixture(autouse=True)
def no_bridge_variables(make_settings):
    """make_settings clears every BRIDGE_* variable of the environment the tests run in."""


def problems_of(make_settings, extra) -> list[str]:
    with pytest.raises(ConfigError) as refused:
        make_settings(extra)
    return refused.value.problems


# Environment over TOML


def test_an_environment_variable_overrides_its_key_and_leaves_the_rest_of_the_table(
        make_settings, monkeypatch):
    monkeypatch.setenv("BRIDGE_SERVER__PORT", "9123")
    settings = make_settings({"server": {"host": "0.0.0.0", "port": 8080}})
    assert (settings.server.port, settings.server.host) == (9123, "0.0.0.0")


def test_a_token_list_in_the_environment_is_json_and_replaces_the_files_list(
        make_settings, monkeypatch):
    monkeypatch.setenv("BRIDGE_WEBHOOKS__MESSAGES__TOKENS", '["env-1", "env-2"]')
    settings = make_settings()
    assert [t.get_secret_value() for t in settings.webhooks.messages.tokens] == ["env-1", "env-2"]
    assert [t.get_secret_value() for t in settings.webhooks.leads.tokens] == [TOKENS["leads"]]


@pytest.mark.parametrize("written", [
    "env-1,env-2", " env-1 , env-2 ", '["env-1", "env-2"]', """'["env-1", "env-2"]'""",
    '"env-1,env-2"', "'env-1,env-2'"])
def test_a_token_list_variable_is_json_or_words_with_commas_even_in_kept_quotes(
        make_settings, monkeypatch, written):
    # podman reads an env file's quotes as part of the value: `"t1"` arrives with them.
    monkeypatch.setenv("BRIDGE_WEBHOOKS__MESSAGES__TOKENS", written)
    settings = make_settings()
    assert [t.get_secret_value() for t in settings.webhooks.messages.tokens] == ["env-1", "env-2"]


@pytest.mark.parametrize("written", ["env-1", '"env-1"', """'["env-1"]'"""])
def test_one_token_in_a_variable_needs_no_json(make_settings, monkeypatch, written):
    monkeypatch.setenv("BRIDGE_WEBHOOKS__MESSAGES__TOKENS", written)
    assert [t.get_secret_value() for t in make_settings().webhooks.messages.tokens] == ["env-1"]


@pytest.mark.parametrize("quote", ['"', "'"])
def test_a_value_in_the_quotes_podman_keeps_is_read_without_them(make_settings, monkeypatch,
                                                                  quote):
    monkeypatch.setenv("BRIDGE_SLACK__BOT_TOKEN", f"{quote}xoxb-quoted{quote}")
    monkeypatch.setenv("BRIDGE_SLACK__CHANNEL", f"{quote}C0123{quote}")
    monkeypatch.setenv("BRIDGE_SERVER__PORT", f"{quote}9123{quote}")
    settings = make_settings()
    assert settings.slack.bot_token.get_secret_value() == "xoxb-quoted"
    assert (settings.slack.channel, settings.server.port) == ("C0123", 9123)


def test_a_list_of_addresses_in_a_variable_takes_commas(make_settings, monkeypatch):
    monkeypatch.setenv("BRIDGE_SERVER__FORWARDED_ALLOW_IPS", "10.0.0.1,10.0.0.2")
    assert make_settings().server.forwarded_allow_ips == ["10.0.0.1", "10.0.0.2"]


def test_a_table_variable_that_is_not_json_is_one_line_naming_it_without_its_value(
        make_settings, monkeypatch):
    monkeypatch.setenv("BRIDGE_CHATBOTS", "sec-plain-bot")
    with pytest.raises(ConfigError) as refused:
        make_settings()
    assert refused.value.problems == [str(refused.value)] == [
        """BRIDGE_CHATBOTS: not JSON: write JSON, e.g. '[{"id": "bot1"}]'"""]


@pytest.mark.parametrize(("variable", "expected"), [
    ("BRIDGE_SLAK__BOT_TOKEN", "BRIDGE_SLAK__BOT_TOKEN: unknown setting (expected "
     "BRIDGE_<SECTION>__<KEY>); did you mean BRIDGE_SLACK__BOT_TOKEN?"),
    ("BRIDGE_ZZZZZZ", "BRIDGE_ZZZZZZ: unknown setting (expected BRIDGE_<SECTION>__<KEY>)"),
])
def test_an_unknown_section_variable_suggests_the_one_meant(make_settings, monkeypatch,
                                                             variable, expected):
    monkeypatch.setenv(variable, "x")
    with pytest.raises(ConfigError) as refused:
        make_settings()
    assert str(refused.value) == expected


@pytest.mark.parametrize(("extra", "expected"), [
    ({"slak": {"channel": "C1"}}, "slak: unknown key; did you mean slack?"),
    ({"slack": {"bot_tokne": "x"}}, "slack.bot_tokne: unknown key; did you mean bot_token?"),
    ({"chatbots": [{"id": "b", "slack_chanel": "C1"}]},
     "chatbots.0.slack_chanel: unknown key; did you mean slack_channel?"),
    ({"server": {"zzzzzz": 1}}, "server.zzzzzz: unknown key"),
])
def test_an_unknown_key_suggests_the_one_meant(make_settings, extra, expected):
    assert problems_of(make_settings, extra) == [expected]


def test_an_unknown_environment_key_inside_a_table_is_an_error(make_settings, monkeypatch):
    monkeypatch.setenv("BRIDGE_SERVER__PROT", "9000")
    assert problems_of(make_settings, None) == [
        "server.prot: unknown key; did you mean port? (from BRIDGE_SERVER__PROT)"]


# Problems named one per line


@pytest.mark.parametrize(("extra", "key", "words"), [
    ({"sever": {"port": 1}}, "sever", "unknown key"),
    ({"server": {"prot": 1}}, "server.prot", "unknown key"),
    ({"webhooks": {"messages": {"token": ["t"]}}}, "webhooks.messages.token", "unknown key"),
    ({"crm": {"hubspot": {"acces_token": "x"}}}, "crm.hubspot.acces_token", "unknown key"),
    ({"chatbots": [{"id": "b", "slack_chanel": "C1"}]}, "chatbots.0.slack_chanel", "unknown key"),
    ({"server": {"port": "eighty"}}, "server.port", "valid integer"),
    ({"store": {"commit_timeout_seconds": 5}}, "store.commit_timeout_seconds", "4.5"),
    ({"slack": {"bot_token": "x"}}, "slack", "slack.channel is required"),
    ({"crm": {"kind": "hubspot"}}, "crm", "needs crm.hubspot.access_token"),
    ({"jira": {"url": "https://j"}}, "jira", "jira.url is set but no credentials"),
    ({"crm": {"webhook": {"headers": {"X-Team": "équipe"}}}}, "crm.webhook.headers",
     "printable ASCII"),
    ({"crm": {"webhook": {"headers": {"X-A": "a\r\nX-B: b"}}}}, "crm.webhook.headers",
     "printable ASCII"),
    ({"crm": {"webhook": {"headers": {"X A": "a"}}}}, "crm.webhook.headers", "header name"),
])
def test_a_bad_key_or_value_is_one_problem_naming_it(make_settings, extra, key, words):
    [line] = problems_of(make_settings, extra)
    assert line.startswith((f"{key}: ", f"{key}."))  # the key, said once
    assert words in line and "\n" not in line


def test_every_problem_is_reported_at_once(make_settings):
    problems = problems_of(make_settings, {"server": {"prot": 1, "port": 0},
                                           "slack": {"chanel": "C1"}})
    assert sorted(problem.split(":")[0] for problem in problems) == [
        "server.port", "server.prot", "slack.chanel"]


def test_an_empty_token_is_refused_rather_than_matching_an_empty_header(make_settings):
    [problem] = problems_of(make_settings, {"webhooks": {"leads": {"tokens": ["ok", ""]}}})
    assert problem.startswith("webhooks.leads.tokens.1: a token must not be empty")


# Which file


def test_a_named_file_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: .*missing\.toml"):
        load_settings(str(tmp_path / "missing.toml"))


def test_bridge_config_names_the_file_and_it_must_exist(tmp_path, monkeypatch):
    monkeypatch.setenv("BRIDGE_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings()
    path = write_toml(tmp_path / "elsewhere.toml", {"server": {"port": 9001}})
    monkeypatch.setenv("BRIDGE_CONFIG", str(path))
    assert load_settings().server.port == 9001


def test_without_a_name_settings_toml_here_comes_before_the_example(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_toml(tmp_path / "settings.example.toml", {"server": {"port": 9002}})
    assert resolve_config_path(None) == (Path("settings.example.toml"), (
        "no settings.toml here, using settings.example.toml "
        "(copy it to settings.toml to make it yours)"))
    assert load_settings().server.port == 9002
    write_toml(tmp_path / "settings.toml", {"server": {"port": 9001}})
    assert resolve_config_path(None) == (Path("settings.toml"), None)
    assert load_settings().server.port == 9001


def test_with_no_settings_file_at_all_the_error_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert str(error.value) == (
        f"no settings file: found neither settings.toml nor settings.example.toml in {tmp_path}; "
        "name one with --config FILE or BRIDGE_CONFIG")


def test_a_file_that_is_not_toml_is_an_error_naming_it(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[server\nport = 1\n")
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML"):
        load_settings(str(path))


def test_the_example_file_loads_and_is_known_to_use_the_example_tokens():
    example = Path(__file__).parent.parent / "settings.example.toml"
    settings = load_settings(str(example))
    assert settings.example_tokens_in_use() == ["messages", "escalations", "leads"]


# Values


@pytest.mark.parametrize(("given", "seconds"), [
    ("250ms", 0.25), ("90s", 90), ("5m", 300), ("24h", 86400), ("7d", 604800), (30, 30),
    ("1.5s", 1.5),
])
def test_durations_take_a_unit_or_plain_seconds(make_settings, given, seconds):
    settings = make_settings({"delivery": {"backoff_initial": given}})
    assert settings.delivery.backoff_initial == timedelta(seconds=seconds)


@pytest.mark.parametrize(("given", "shown"), [
    ("24h", "24h"), ("120s", "120s"), (90, 90), ("PT2M", "PT2M"), (None, "15s"),
])
def test_durations_are_shown_as_written(make_settings, given, shown):
    settings = make_settings({"delivery": {"lease": given}} if given is not None else None)
    assert settings.model_dump(mode="json")["delivery"]["lease"] == shown


def test_a_duration_that_does_not_parse_says_how_to_write_one(make_settings):
    assert problems_of(make_settings, {"delivery": {"lease": "two minutes"}}) == [
        "delivery.lease: not a duration: 'two minutes'; write e.g. \"90s\", \"5m\" or \"24h\""]


def test_every_secret_is_masked_when_settings_are_shown(make_settings):
    slack_on = {"slack": {"bot_token": "sec-xoxb", "channel": "C1"}}
    settings = make_settings(deep_merge(SECRETS, slack_on))
    shown = json.dumps(settings.model_dump(mode="json")) + repr(settings) + str(settings)
    for secret in [*SECRET_VALUES, "sec-xoxb"]:
        assert secret not in shown
    assert settings.crm.webhook.headers["Authorization"].get_secret_value() == "sec-crm-header"


def test_a_store_url_the_bridge_cannot_open_is_refused_at_start_up(make_settings):
    assert problems_of(make_settings, {"store": {"url": "mysql://db/bridge"}}) == [
        "store.url: unsupported store url 'mysql://db/bridge': use sqlite:///PATH, "
        "or postgresql://USER:PASSWORD@HOST:PORT/DB"]


@pytest.mark.parametrize("url", ["postgresql://bridge:pw@db:5432/bridge",
                                 "postgres://bridge:pw@db/bridge?sslmode=require",
                                 "postgresql://bridge@/bridge?host=/run/postgresql"])
def test_a_postgresql_uri_is_a_store_url(make_settings, url):
    assert make_settings({"store": {"url": url}}).store.backend == "postgresql"


def test_a_postgresql_uri_without_a_database_is_refused_with_its_password_masked(make_settings):
    [problem] = problems_of(make_settings, {"store": {"url": "postgresql://bridge:sec-pg@db/"}})
    assert problem == ("store.url: name the database in the URI: "
                       "postgresql://bridge:**********@db/ has no /DBNAME")


def test_the_store_password_is_masked_when_settings_are_shown(make_settings):
    url = "postgresql://bridge:sec-pg%2Fpw@db:5432/bridge?sslpassword=sec-key"
    settings = make_settings({"store": {"url": url}})
    shown = json.dumps(settings.model_dump(mode="json")) + repr(settings) + str(settings)
    assert "sec-pg" not in shown and "sec-key" not in shown
    assert settings.model_dump(mode="json")["store"]["url"] == (
        "postgresql://bridge:**********@db:5432/bridge?sslpassword=**********")
    assert settings.store.url == url
