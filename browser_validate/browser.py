"""One Playwright driver + headless Chromium per process, shared by every measurement.

Launching Chromium costs seconds, so it is started lazily and kept; a fresh context per measurement keeps
measurements apart. It is relaunched when it died (a crash, or a test closing it) and in a forked child, whose
copy of the parent's driver is not ours to use. Not thread-safe: Playwright's sync API is bound to the
thread that started it.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless=new",
    # No network here: stop Chromium from retrying background fetches.
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    # WebGPU headless: an adapter backed by SwiftShader (CPU Vulkan); correctness only, very slow.
    "--enable-unsafe-webgpu",
    "--enable-unsafe-swiftshader",
    "--disable-features=SpareRendererForSitePerProcess",
    # performance.measureUserAgentSpecificMemory() answers at once instead of at the next GC.
    "--enable-blink-features=ForceEagerMeasureMemory",
]


def local_launch() -> dict:
    """How this machine's Chromium is launched (Debian's, with CHROMIUM_ARGS): the local host's browser, and what a
    browser server on this machine is asked to launch (pipeline.hosts: `build_machine` without `launch`)."""
    exe = os.environ.get("BROWSER_VALIDATE_CHROMIUM") or shutil.which("chromium")
    if not exe:
        raise RuntimeError("chromium not found (set BROWSER_VALIDATE_CHROMIUM)")
    return {"executable_path": exe, "args": list(CHROMIUM_ARGS), "headless": True}


class _Browser:
    """Process-wide Playwright plus one browser per endpoint: "local" launches Chromium here; a ws:// endpoint is a
    Playwright browser server on another machine (`playwright run-server`), connected to with `launch` as its
    launch options. Recreated after a crash or a lost connection, and in a forked child."""

    def __init__(self):
        self.pw = None
        self.browsers: dict[str, object] = {}
        self.pid = None

    def get(self, endpoint: str = "local", launch: dict | None = None):
        if self.pid is not None and self.pid != os.getpid():
            # Forked child: the parent's driver/browsers are not ours to use or close.
            self.pw, self.browsers = None, {}
        browser = self.browsers.get(endpoint)
        if browser is not None and not browser.is_connected():
            self.close(endpoint)
            browser = None
        if browser is None:
            from playwright.sync_api import sync_playwright

            if self.pw is None:
                self.pw = sync_playwright().start()
                self.pid = os.getpid()
            if endpoint == "local":
                browser = self.pw.chromium.launch(**local_launch())
            else:
                headers = {"x-playwright-launch-options": json.dumps(launch)} if launch else None
                browser = self.pw.chromium.connect(endpoint, headers=headers, timeout=60_000)
            self.browsers[endpoint] = browser
        return browser

    @property
    def browser(self):  # the local one (tests close it to simulate a crash)
        return self.browsers.get("local")

    def close(self, endpoint: str | None = None):
        """Close one endpoint's browser, or (None) every browser and the driver."""
        if self.pid is not None and self.pid != os.getpid():
            return
        for ep in [endpoint] if endpoint else list(self.browsers):
            b = self.browsers.pop(ep, None)
            try:
                b and b.close()
            except Exception:
                pass
        if endpoint is None:
            try:
                self.pw and self.pw.stop()
            except Exception:
                pass
            self.pw = None


_BROWSER = _Browser()


def close_browser() -> None:
    _BROWSER.close()


atexit.register(close_browser)
