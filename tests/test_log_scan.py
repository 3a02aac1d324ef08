"""The log scan that every test runs (tests/conftest.py) really catches what it is for."""

from __future__ import annotations

import logging

import pytest

from tests.conftest import KNOWN_SECRETS, LogScan


@pytest.mark.parametrize(
    "text",
    [
        "token sht_" + "A" * 43,
        "secret shs_" + "b" * 43,
        "x-sh-signature v1=" + "Zm9v" * 11,
        "payload secret-sauce-42",
    ],
)
def test_the_scan_catches_a_leak(text: str) -> None:
    scan = LogScan()
    scan.emit(logging.LogRecord("signalhub.test", logging.INFO, __file__, 1, "%s", (text,), None))
    assert len(scan.leaks) == 1


def test_the_scan_lets_ordinary_lines_through() -> None:
    scan = LogScan()
    record = logging.LogRecord("signalhub.rpc", logging.INFO, __file__, 1, "rpc", (), None)
    record.method, record.code = "/signalhub.v1.SignalService/SubmitSignal", "OK"
    scan.emit(record)
    assert scan.leaks == [] and KNOWN_SECRETS
