"""Config.from_env refuses, at deploy time, settings that would break the web or the worker later."""

from __future__ import annotations

import pytest

from worker.config import Config
from worker.errors import ConfigError


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://localhost:notaport/0", "Port could not be cast to integer"),
        ("redis://localhost:99999/0", "Port out of range"),
        ("redis://localhost:6379/7?socket_timeout=abc", "socket_timeout"),
        ("redis://localhost:6379/7?health_check_interval=x", "health_check_interval"),
        ("redis://localhost:6379/7?colour=blue", "'colour' is not a Redis connection option"),
        ("rediss://localhost:6379/7?protocol=9", "protocol"),
        ("redis://localhost:6379/abc", "database must be a number"),
        ("unix://", "socket path"),
        ("http://localhost:6379/0", "must start with redis://"),
        ("redis://localhost:6379/7?decode_responses=true", "must not set decode_responses"),
    ],
)
def test_an_unusable_redis_url_is_refused_naming_it(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match="REDIS_URL") as info:
        Config.from_env({"REDIS_URL": url})
    assert message in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2@localhost:notaport/0",
        "redis://user:hunter2@localhost:99999/0",
        "redis://localhost:6379/7?password=hunter2&socket_timeout=abc",
        "redis://localhost:6379/7?socket_timeout=hunter2&password=hunter2",
        "rediss://default:hunter2@localhost:6379/abc",
        "hunter2",
        "user:hunter2@localhost:6379",
        "http://user:hunter2@localhost:6379/0",
    ],
)
def test_a_refused_redis_url_never_shows_its_password(url: str) -> None:
    with pytest.raises(ConfigError, match="REDIS_URL") as info:
        Config.from_env({"REDIS_URL": url})
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "redis://127.0.0.1:6379/7?password=hunter2",
        "rediss://default:secret@example.com:25061/0",
        "rediss://example.com:6380?ssl_cert_reqs=required",
        "redis://[::1]:6379/3",
        "redis://localhost",
        "unix:///run/redis.sock?db=2",
    ],
)
def test_usable_redis_urls_are_accepted(url: str) -> None:
    assert Config.from_env({"REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/7?password=hunter2", "redis://127.0.0.1:6379/7"),
        ("rediss://user:hunter2@example.com:25061/0", "rediss://example.com:25061/0"),
        ("redis://:hunter2@localhost", "redis://localhost:6379/0"),
        ("redis://[::1]:6380/3", "redis://[::1]:6380/3"),
        ("redis://localhost/5?db=9", "redis://localhost:6379/5"),
        ("redis://localhost?db=9", "redis://localhost:6379/9"),
        ("unix:///run/redis.sock?db=2&password=hunter2", "unix:///run/redis.sock?db=2"),
    ],
)
def test_redis_location_shows_scheme_host_port_and_db_only(url: str, shown: str) -> None:
    from worker.config import redis_location

    assert redis_location(url) == shown


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HUBSPOT_API_BASE": "api.hubapi.com"}, "HUBSPOT_API_BASE must be an https:// (or http://) URL"),
        ({"HUBSPOT_API_BASE": "https://"}, "HUBSPOT_API_BASE must be an https:// (or http://) URL"),
        ({"HUBSPOT_API_BASE": "https://api.hubapi.com:port"}, "HUBSPOT_API_BASE"),
        ({"SALESFORCE_INSTANCE_URL": "example.my.salesforce.com"}, "SALESFORCE_INSTANCE_URL must be an https://"),
        ({"SALESFORCE_INSTANCE_URL": "ftp://example.my.salesforce.com"}, "SALESFORCE_INSTANCE_URL must be"),
        ({"SALESFORCE_API_VERSION": "latest"}, "SALESFORCE_API_VERSION must look like 59.0, got 'latest'"),
        ({"SALESFORCE_API_VERSION": "59"}, "SALESFORCE_API_VERSION must look like 59.0"),
        ({"SALESFORCE_API_VERSION": "59.0/sobjects"}, "SALESFORCE_API_VERSION must look like 59.0"),
    ],
)
def test_crm_urls_and_version_are_checked_at_deploy_time(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_env(env)
    assert message in str(info.value)


@pytest.mark.parametrize("url", ["ftp://me:hunter2@api.hubapi.com", "me:hunter2@api.hubapi.com"])
def test_a_crm_url_with_credentials_is_refused_without_showing_them(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_env({"HUBSPOT_API_BASE": url})
    assert "hunter2" not in str(info.value)


def test_good_crm_settings_are_kept() -> None:
    config = Config.from_env(
        {
            "HUBSPOT_API_BASE": "http://127.0.0.1:8080/",
            "SALESFORCE_INSTANCE_URL": "https://example.my.salesforce.com/",
            "SALESFORCE_API_VERSION": "60.0",
        }
    )
    assert config.hubspot_api_base == "http://127.0.0.1:8080"
    assert config.salesforce_instance_url == "https://example.my.salesforce.com"
    assert config.salesforce_api_version == "60.0"


@pytest.mark.parametrize(
    "login",
    [
        {"SALESFORCE_USERNAME": "ops@example.com", "SALESFORCE_PASSWORD": "pw"},
        {"SALESFORCE_CONSUMER_KEY": "key", "SALESFORCE_CONSUMER_SECRET": "secret"},
    ],
)
def test_salesforce_callbacks_are_on_with_login_credentials(login: dict[str, str]) -> None:
    url = {"SALESFORCE_INSTANCE_URL": "https://example.my.salesforce.com"}
    assert Config.from_env({**url, **login}).enabled()["salesforce callbacks"] is True
    assert Config.from_env(url).enabled()["salesforce callbacks"] is False
    assert Config.from_env(login).enabled()["salesforce callbacks"] is False


def test_the_hubspot_search_budget_defaults_to_hubspots_limit_and_is_checked() -> None:
    assert Config.from_env({}).hubspot_search_rate_limit == (4, 1.0)
    assert Config.from_env({"HUBSPOT_SEARCH_RATE_LIMIT": "5/1"}).hubspot_search_rate_limit == (5, 1.0)
    with pytest.raises(ConfigError, match="HUBSPOT_SEARCH_RATE_LIMIT"):
        Config.from_env({"HUBSPOT_SEARCH_RATE_LIMIT": "fast"})
