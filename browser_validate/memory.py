"""Memory of the Chromium processes a measurement runs in, read from the OS (psutil).

The wasm heap lives in the page's renderer process and the JS heap APIs (performance.memory, CDP
JSHeapUsedSize) miss it, so the harness samples the renderer's RSS instead; WebGPU/WebGL buffers live in the
GPU process, sampled alongside. Only processes started (indirectly) by this Python process are looked at.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import psutil

MEMORY_SAMPLE_S = 0.05


def renderer_pids() -> set[int]:
    """Renderer processes of Chromium browsers started (indirectly) by this process."""
    pids = set()
    try:
        for p in psutil.Process().children(recursive=True):
            try:
                cmd = p.cmdline()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if "--type=renderer" in cmd and not any(a.startswith("--extension-process") for a in cmd):
                pids.add(p.pid)
    except psutil.Error:
        pass
    return pids


def gpu_pids() -> set[int]:
    """The GPU process of our Chromium (shared by all pages; WebGPU/WebGL buffers live there)."""
    pids = set()
    try:
        for p in psutil.Process().children(recursive=True):
            try:
                if "--type=gpu-process" in p.cmdline():
                    pids.add(p.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
    except psutil.Error:
        pass
    return pids


def rss(pids: set[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return total


class MemorySampler(threading.Thread):
    """Samples the page renderer's RSS (and the GPU process's) every ~50 ms and keeps the peaks."""

    def __init__(self, pids: set[int], gpu_pids: set[int] = frozenset()):
        super().__init__(name="browser-validate-mem", daemon=True)
        self.pids = pids
        self.gpu_pids = gpu_pids
        self.peak = 0
        self.gpu_peak = 0
        # Per page stage: RSS when it began and its peak, so one phase (loading the model) can be told apart
        # from the rest of the run (evaluation data, the QoE worker's copy).
        self.stage: str | None = None
        self.stage_start: dict[str, int] = {}
        self.stage_peak: dict[str, int] = {}
        self._halt = threading.Event()

    def enter(self, stage: str) -> None:
        """The page moved to `stage` (called from the console handler)."""
        now = rss(self.pids)
        if self.stage is not None:
            self.stage_peak[self.stage] = max(self.stage_peak.get(self.stage, 0), now)
        self.stage = stage
        self.stage_start.setdefault(stage, now)
        self.stage_peak[stage] = max(self.stage_peak.get(stage, 0), now)

    def run(self):
        while not self._halt.is_set():
            now = rss(self.pids)
            self.peak = max(self.peak, now)
            stage = self.stage
            if stage is not None:
                self.stage_peak[stage] = max(self.stage_peak.get(stage, 0), now)
            if self.gpu_pids:
                self.gpu_peak = max(self.gpu_peak, rss(self.gpu_pids))
            self._halt.wait(MEMORY_SAMPLE_S)

    def phase_growth(self, stages: tuple[str, ...]) -> int | None:
        """How far RSS rose during consecutive `stages` above where the first of them began (None: not seen)."""
        seen = [s for s in stages if s in self.stage_peak]
        if not seen or stages[0] not in self.stage_start:
            return None
        return max(0, max(self.stage_peak[s] for s in seen) - self.stage_start[stages[0]])

    def stop(self) -> int:
        self._halt.set()
        self.join(timeout=2)
        return self.peak


def baseline_memory(pids: set[int]) -> int:
    """RSS before the model is loaded (median of 3 samples): peaks are reported above it."""
    samples = []
    for _ in range(3):
        samples.append(rss(pids))
        time.sleep(MEMORY_SAMPLE_S)
    return int(np.median(samples))
