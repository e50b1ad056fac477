"""Headless Chromium for UI tests: a screenshot or the rendered DOM of one URL.

Debian's `chromium` package; the flags are those that worked offline (docs/MEASURED.md): no sandbox (we run as root in
a container), no GPU, no background network traffic, a fresh profile per call (so no saved UI state leaks between
calls), and a virtual-time budget so the single-page app can fetch and render before the page is captured.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
TIMEOUT_S = 90  # a cold start on two busy cores; a warm capture takes ~2 s


def chromium_binary() -> str:
    """Path of the Chromium binary. Without one: skip the test locally, fail it in CI (CI installs chromium)."""
    for path in (os.environ.get("CHROMIUM"), *CANDIDATES, shutil.which("chromium")):
        if path and Path(path).exists():
            return path
    msg = "headless Chromium not found (apt-get install -y --no-install-recommends chromium)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def _run(url: str, mode_args: list[str], width: int, height: int, timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [
            chromium_binary(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=10000",
            f"--window-size={width},{height}",
            *mode_args,
            url,
        ]
        # Chromium logs harmless D-Bus errors on stderr in a container: keep stderr only for failure messages.
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exited with {proc.returncode} on {url}:\n{proc.stderr[-3000:]}")
    return proc


def screenshot(
    url: str, out_png: os.PathLike | str, width: int = 1600, height: int = 1000, timeout: float = TIMEOUT_S
) -> Path:
    """Save a PNG of `url` as rendered at width×height; returns the path."""
    out = Path(out_png).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)  # so a stale file can never pass for a fresh capture
    _run(url, [f"--screenshot={out}"], width, height, timeout)
    if not out.exists() or out.stat().st_size == 0:
        raise RuntimeError(f"chromium wrote no screenshot for {url}")
    return out


def dump_dom(url: str, width: int = 1600, height: int = 1000, timeout: float = TIMEOUT_S) -> str:
    """The serialised DOM of `url` after the page's scripts ran (what the user would see, as HTML)."""
    return _run(url, ["--dump-dom"], width, height, timeout).stdout
