"""One Playwright driver + headless Chromium per process, shared by every measurement.

Launching Chromium costs seconds, so it is started lazily and kept; a fresh context per measurement keeps
measurements apart. It is relaunched when it died (a crash, or a test closing it) and in a forked child, whose
copy of the parent's driver is not ours to use. Not thread-safe: Playwright's sync API is bound to the
thread that started it.
"""

from __future__ import annotations

import atexit
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


class _Browser:
    """Process-wide Playwright + Chromium. Recreated after a crash or in a forked child."""

    def __init__(self):
        self.pw = None
        self.browser = None
        self.pid = None

    def get(self):
        if self.pid is not None and self.pid != os.getpid():
            # Forked child: the parent's driver/browser are not ours to use or close.
            self.pw = self.browser = None
        if self.browser is not None and not self.browser.is_connected():
            self.close()
        if self.browser is None:
            from playwright.sync_api import sync_playwright

            exe = os.environ.get("BROWSER_VALIDATE_CHROMIUM") or shutil.which("chromium")
            if not exe:
                raise RuntimeError("chromium not found (set BROWSER_VALIDATE_CHROMIUM)")
            if self.pw is None:
                self.pw = sync_playwright().start()
            self.browser = self.pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
            self.pid = os.getpid()
        return self.browser

    def close(self):
        if self.pid is not None and self.pid != os.getpid():
            return
        for closer in (lambda: self.browser and self.browser.close(), lambda: self.pw and self.pw.stop()):
            try:
                closer()
            except Exception:
                pass
        self.browser = None
        self.pw = None


_BROWSER = _Browser()


def close_browser() -> None:
    _BROWSER.close()


atexit.register(close_browser)
