"""Browser hosts: where measurements run, and which class of visitor device each one stands for.

Configured in luigi.cfg (or the environment, which wins):

    [browser_hosts]
    file = hosts.yaml          # or PIPELINE_BROWSER_HOSTS=hosts.yaml

    # hosts.yaml
    hosts:
      - {name: local, device_class: build-machine}                  # Chromium launched here
      - name: gpu-laptop                                              # a Playwright server on another machine
        endpoint: ws://10.0.0.7:3000/                                 #   (`playwright run-server --port 3000`)
        device_class: laptop-igpu
        targets: [wasm, webgpu]                                       # what it measures (default: all)
        launch: {args: ["--enable-unsafe-webgpu"]}                    # launch options sent to the server

Without a file there is one host, `local`, of class `build-machine`. A remote host's browser cannot reach this
machine: the measuring page, runtime and model are routed to it through Playwright (browser_validate.harness).
Each measurement takes the Luigi resource `browser_host_<name>` (one at a time per host: timings on one machine
must not overlap) and records the host's class and the device it found (cores, GPU adapter).
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import luigi
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.outcome import PipelineError
from pipeline.targets import TARGETS

ENV_VAR = "PIPELINE_BROWSER_HOSTS"
LOCAL = "local"


class HostsError(PipelineError):
    """The hosts configuration is unreadable or invalid (refused before any work)."""


class BrowserHost(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    # "local": Chromium on this machine; otherwise a Playwright browser server's ws:// endpoint.
    endpoint: str = LOCAL
    # The kind of visitor device this host stands for (selection is per target per class).
    device_class: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    targets: list[str] | None = None
    # Launch options sent to a Playwright server started with --unsafe (executablePath, args, ...).
    launch: dict | None = None
    # What the machine is, in words (the page cannot see the CPU model); local: read from /proc/cpuinfo.
    cpu: str | None = None
    # A browser server on a build machine itself (the one-machine setup): its measurements also take that machine's
    # `timing` resource, so they never overlap native timings there, as a local browser's do; without `launch` the
    # server launches this machine's Chromium as the local host does.
    build_machine: bool = False

    @model_validator(mode="after")
    def _valid(self):
        if self.endpoint != LOCAL and not re.match(r"^wss?://", self.endpoint):
            raise ValueError(f"endpoint {self.endpoint!r}: 'local' or a Playwright server's ws:// address")
        unknown = [t for t in self.targets or () if t not in TARGETS]
        if unknown:
            raise ValueError(f"unknown target(s) {unknown}; known: {sorted(TARGETS)}")
        return self

    @property
    def remote(self) -> bool:
        return self.endpoint != LOCAL

    def serves(self, target: str) -> bool:
        return self.targets is None or target in self.targets

    @property
    def resource(self) -> str:
        return f"browser_host_{self.name}"

    @property
    def shares_build_cores(self) -> bool:
        return not self.remote or self.build_machine

    def launch_options(self) -> dict | None:
        """What the browser server is asked to launch: `launch`, else for a server on the build machine this
        machine's Chromium with the local browser's arguments (the same browser a local measurement uses)."""
        if self.launch is not None or not self.build_machine:
            return self.launch
        from browser_validate.browser import local_launch

        o = local_launch()
        return {"executablePath": o["executable_path"], "args": o["args"], "headless": o["headless"]}

    def describe_cpu(self) -> str | None:
        if self.cpu or self.remote:
            return self.cpu
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return None


class _HostsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hosts: list[BrowserHost] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self):
        names = [h.name for h in self.hosts]
        if len(set(names)) != len(names):
            raise ValueError(f"host names repeat: {names}")
        return self


DEFAULT_HOSTS = (BrowserHost(name=LOCAL, device_class="build-machine"),)


class browser_hosts(luigi.Config):  # noqa: N801 - luigi.cfg section name
    file = luigi.Parameter(default="", description="YAML file listing the browser hosts (pipeline/hosts.py)")


def hosts_file() -> str:
    return os.environ.get(ENV_VAR) or browser_hosts().file


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime: int) -> tuple[BrowserHost, ...]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise HostsError(f"browser hosts file {path}: {e}") from None
    try:
        return tuple(_HostsFile.model_validate(data).hosts)
    except ValidationError as e:
        lines = [f"  {'.'.join(map(str, err['loc'])) or '<top>'}: {err['msg']}" for err in e.errors()]
        raise HostsError(f"browser hosts file {path} is invalid:\n" + "\n".join(lines)) from None


def load_hosts() -> tuple[BrowserHost, ...]:
    """The configured hosts, in order (the first serving a target is its default device class)."""
    path = hosts_file()
    if not path:
        return DEFAULT_HOSTS
    try:
        mtime = Path(path).stat().st_mtime_ns
    except OSError as e:
        raise HostsError(f"browser hosts file {path}: {e.strerror}") from None
    return _load(path, mtime)


def host(name: str) -> BrowserHost:
    for h in load_hosts():
        if h.name == name:
            return h
    raise HostsError(f"no browser host named {name!r} (configured: {[h.name for h in load_hosts()]})")


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port free on `address` now: where to start a browser server (`playwright run-server --port`)."""
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def browser_server(log: Path, env: dict | None = None, timeout_s: float = 60) -> Iterator[str]:
    """`playwright run-server` on a free local port for the duration of the block, yielding its endpoint (a browser
    host on this machine: tests, benchmarks/gpu_host.py). Stopped with its whole process group afterwards: the
    Python launcher starts a node server that outlives it, and one whose browser was killed may not stop on SIGTERM."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "playwright", "run-server", "--port", str(port), "--host",
                                 "127.0.0.1", "--unsafe"], stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while "Listening on" not in Path(log).read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise HostsError(f"playwright run-server did not start: {Path(log).read_text()[-2000:]}")
            time.sleep(0.2)
        yield f"ws://127.0.0.1:{port}/"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        time.sleep(2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def hosts_for(target: str) -> list[BrowserHost]:
    return [h for h in load_hosts() if h.serves(target)]
