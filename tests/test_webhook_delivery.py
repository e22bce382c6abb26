"""Webhook logic without a network: the retry schedule, Retry-After, SSRF checks, signing."""

import base64
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from core.webhook_targets import RefusedDestination, check
from core.webhooks import (
    JITTER,
    MAX_RETRY_DELAY,
    next_attempt,
    parse_retry_after,
    retry_delay,
    signed_headers,
)
from covidscan.settings import ConfigError, load_settings

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
NOW = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)


def no_dns(host, port):
    raise AssertionError(f"resolved {host}: literal addresses need no DNS")


@pytest.mark.parametrize("draw", [0.0, 0.5, 0.999])
def test_every_wait_is_longer_than_the_one_before_whatever_the_jitter(draw):
    waits = [retry_delay(n, 30.0, rng=lambda: draw) for n in range(1, 12)]
    assert all(
        later > earlier
        for earlier, later in zip(waits, waits[1:])
        if later < MAX_RETRY_DELAY * JITTER[0]
    )
    assert waits[0] == pytest.approx(30 * (JITTER[0] + (JITTER[1] - JITTER[0]) * draw))
    # the fastest possible next wait outlasts the slowest possible previous one
    assert retry_delay(4, 30.0, rng=lambda: 0.0) > retry_delay(3, 30.0, rng=lambda: 0.9999)


def test_the_jitter_spreads_waits_and_they_are_capped():
    assert retry_delay(3, 10.0, rng=lambda: 0.0) != retry_delay(3, 10.0, rng=lambda: 0.9)
    assert retry_delay(60, 10.0, rng=lambda: 0.9999) <= MAX_RETRY_DELAY


def test_retries_span_the_whole_window_with_the_defaults_and_then_stop():
    settings = load_settings({})
    assert settings.webhook_retry_window >= 24 * 3600
    window, base = settings.webhook_retry_window, settings.webhook_retry_base_ms / 1000
    now, failures, times = NOW, 0, []
    while True:
        failures += 1
        at = next_attempt(NOW, failures, now, window, base, rng=lambda: 0.5)
        if at is None:
            break
        times.append(at)
        now = at
    assert times[-1] == NOW + timedelta(hours=24)  # the last try is at the end of the window
    gaps = [(b - a).total_seconds() for a, b in zip([NOW] + times, times)]
    assert gaps[:5] == sorted(gaps[:5]) and gaps[0] < 60
    assert 8 <= failures <= 20


def test_retry_after_is_honoured_in_seconds_and_as_a_date():
    settings = load_settings({"WEBHOOK_RETRY_BASE_MS": "1000"})
    assert parse_retry_after("120") == 120
    assert (
        parse_retry_after(format_datetime(NOW + timedelta(minutes=5), usegmt=True), now=NOW) == 300
    )
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    window, base = settings.webhook_retry_window, settings.webhook_retry_base_ms / 1000
    plain = next_attempt(NOW, 1, NOW, window, base, rng=lambda: 0.0)
    asked = next_attempt(NOW, 1, NOW, window, base, retry_after=120, rng=lambda: 0.0)
    assert (plain - NOW).total_seconds() < 2
    assert asked == NOW + timedelta(seconds=120)
    assert parse_retry_after(str(10**9)) == MAX_RETRY_DELAY


@pytest.mark.parametrize(
    "url, reason",
    [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://[::1]/hook", "loopback"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://192.168.0.10/hook", "private"),
        ("http://100.100.100.200/", "metadata"),
        ("http://0.0.0.0/", "unspecified"),
    ],
)
def test_internal_addresses_are_refused(url, reason):
    with pytest.raises(RefusedDestination, match=reason):
        check(url, (), resolve=no_dns)


def test_an_allowed_host_may_be_internal_and_public_addresses_pass():
    assert check("http://127.0.0.1:9/x?a=1", ("127.0.0.1",), resolve=no_dns).target == "/x?a=1"
    destination = check("https://93.184.215.14/hook", (), resolve=no_dns)
    assert (destination.address, destination.port, destination.host_header) == (
        "93.184.215.14",
        443,
        "93.184.215.14",
    )


def test_a_name_is_refused_if_any_of_its_addresses_is_internal():
    resolve = lambda host, port: ["93.184.215.14", "10.0.0.7"]  # noqa: E731
    with pytest.raises(RefusedDestination, match="10.0.0.7, a private address"):
        check("https://hooks.example.com/x", (), resolve=resolve)
    assert (
        check("https://hooks.example.com/x", (), resolve=lambda h, p: ["93.184.215.14"]).host_header
        == "hooks.example.com"
    )


@pytest.mark.parametrize(
    "url",
    [
        "ftp://93.184.215.14/",
        "http://user:pw@93.184.215.14/",
        "https:///nohost",
        "http://93.184.215.14:99999/",
    ],
)
def test_malformed_urls_are_refused(url):
    with pytest.raises(RefusedDestination):
        check(url, (), resolve=no_dns)


def test_a_signature_verifies_with_standardwebhooks_and_fails_when_tampered():
    body = b'{"data":{"job_id":"abc"},"type":"job.succeeded"}'
    headers = signed_headers(SECRET, "msg_1", body)
    assert Webhook(SECRET).verify(body, headers)["type"] == "job.succeeded"
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"abc", b"abd"), headers)
    other = "whsec_" + base64.b64encode(bytes(32)).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers)


@pytest.mark.parametrize(
    "name, value",
    [
        ("WEBHOOK_SECRET", "plain-text"),
        ("WEBHOOK_SECRET", "whsec_not*base64"),
        ("WEBHOOK_SECRET", "whsec_c2hvcnQ="),
        ("WEBHOOK_ALLOWED_HOSTS", "*"),
        ("WEBHOOK_TIMEOUT", "0"),
        ("WEBHOOK_TIMEOUT", "600"),
        ("WEBHOOK_RETRY_BASE_MS", "-1"),
        ("WEBHOOK_RETRY_WINDOW", "0"),
        ("WEBHOOK_RETRY_WINDOW", "soon"),
    ],
)
def test_a_wrong_webhook_setting_names_its_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        load_settings({name: value})


def test_the_secret_never_shows_in_the_settings_repr():
    settings = load_settings({"WEBHOOK_SECRET": SECRET})
    assert settings.webhook_secret == SECRET and SECRET not in repr(settings)


def test_make_run_keeps_one_valid_webhook_secret_private(tmp_path):
    from devtools.devstack import stored_webhook_secret

    path = tmp_path / "var" / "webhook-secret"
    secret = stored_webhook_secret(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_settings({"WEBHOOK_SECRET": secret}).webhook_secret == secret
    assert stored_webhook_secret(path) == secret  # the next start keeps it
