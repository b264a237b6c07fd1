"""Credentials never reach the experiment folder, the printed lines or MLflow's params: a
URI's password (``scheme://user:password@host``) and secret query values (``?token=...``)
are replaced by ``***`` wherever a command line or a URI is recorded. What needs the
password again (--resume, report.py's upload to MLflow) takes it from the environment
(MLFLOW_TRACKING_URI, or MLflow's MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)."""

from __future__ import annotations

import os
import re

MASK = "***"
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*):(?P<secret>[^@/\s]+)@")
_QUERY = re.compile(
    r"(?P<head>[?&](?:password|passwd|pwd|token|secret|key|access_key|"
    r"secret_key|api_key|auth)=)(?P<secret>[^&#\s]+)",
    re.IGNORECASE,
)


def redact(text: str | None) -> str | None:
    """``text`` with every password of a URI and every secret query value masked."""
    if not text:
        return text
    text = _USERINFO.sub(lambda m: f"{m.group('head')}:{MASK}@", text)
    return _QUERY.sub(lambda m: f"{m.group('head')}{MASK}", text)


def redact_all(items: list[str]) -> list[str]:
    return [redact(item) for item in items]


def usable(recorded: str | None, given: str | None = None) -> str | None:
    """The URI to connect to for a ``recorded`` (perhaps masked) one: ``given`` (the command
    line's, else MLFLOW_TRACKING_URI) when it masks to the recorded one; else the recorded
    one without the masked credentials (MLflow then reads them from its own variables)."""
    if not recorded or MASK not in recorded:
        return recorded
    for candidate in (given, os.environ.get("MLFLOW_TRACKING_URI")):
        if candidate and redact(candidate) == recorded:
            return candidate
    return _USERINFO.sub(lambda m: m.group("head").rsplit("://", 1)[0] + "://", recorded)
