"""`--parity-bandwidth`: rates are parsed with clear errors, and the shared bucket never lets the
senders together go faster than the cap (elapsed time can only be checked from below here)."""

from __future__ import annotations

import threading
import time

import pytest

from smp.config import ConfigError, ServeConfig
from smp.pacing import Pacer, parse_rate


@pytest.mark.parametrize(
    ("text", "rate"),
    [("500M", 500e6), ("1.5G", 1.5e9), ("800MiB/s", 800 * 2**20), ("2gbps", 2e9), ("10MB/s", 1e7)],
)
def test_rates_parse(text: str, rate: float) -> None:
    assert parse_rate(text) == pytest.approx(rate)


@pytest.mark.parametrize("text", ["0", "unlimited", "", "off"])
def test_no_cap(text: str) -> None:
    assert parse_rate(text) is None


@pytest.mark.parametrize(("text", "words"), [("fast", "not understood"), ("100k", "below 1 MiB/s")])
def test_bad_rates_are_refused_with_what_to_write(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_rate(text)
    with pytest.raises(ConfigError, match=words):
        ServeConfig.from_sources({"parity_bandwidth": text}, env={})


def test_the_setting_reaches_the_config_from_the_environment() -> None:
    cfg = ServeConfig.from_sources({}, env={"SMP_PARITY_BANDWIDTH": "250M"})
    assert cfg.parity_bandwidth == 250e6
    assert ServeConfig.from_sources({}, env={}).parity_bandwidth is None


def test_senders_sharing_a_pacer_keep_to_its_rate_together() -> None:
    rate, piece, pieces, senders = 50e6, 1 << 20, 8, 3
    pacer = Pacer(rate)

    def send() -> None:
        for _ in range(pieces):
            pacer.take(piece)

    started = time.monotonic()
    threads = [threading.Thread(target=send) for _ in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    total = piece * pieces * senders
    assert elapsed >= (total - pacer.burst) / rate * 0.98


def test_an_unlimited_pacer_never_waits() -> None:
    pacer = Pacer(None)
    started = time.monotonic()
    for _ in range(10_000):
        pacer.take(1 << 30)
    assert time.monotonic() - started < 5
