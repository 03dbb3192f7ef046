"""Linux network namespaces for end-to-end tests: "pods" with their own network stack, on one bridge.

Every namespace, link and address is made by :class:`Network` inside namespaces it creates itself, and
removed when it closes; nothing is configured in the host's own namespace. Layout::

    <prefix>-sw:  bridge br0  ── veth ──  <prefix>-<host>: eth0 <subnet>.<n>/24, default route via eth0

A host's default route points at its own interface, so any destination address (a Kubernetes Service's
cluster IP, say) is routable and, in a pod with iptables capture, reaches the sidecar. Processes run in
a host with ``ip netns exec``.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


def available() -> str | None:
    """None when namespaces and iptables can be used here, else why not (for ``pytest.skip``)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables-restore"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install -y iproute2 iptables)"
    name = f"mpcheck{random.randint(0, 99999)}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], check=False)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Network:
    """A bridge namespace and the host namespaces attached to it."""

    prefix: str = field(default_factory=lambda: f"mp{random.randint(1000, 9999)}")
    subnet: str = field(default_factory=lambda: f"10.{random.randint(100, 250)}.{random.randint(1, 250)}")
    hosts: dict[str, str] = field(default_factory=dict)  # name → address
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")

    @property
    def switch(self) -> str:
        return f"{self.prefix}-sw"

    def namespace(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def add_host(self, host: str, number: int) -> str:
        """A namespace ``host`` with address ``<subnet>.<number>`` on the bridge; returns the address."""
        ns, address, link = self.namespace(host), f"{self.subnet}.{number}", f"v{number}"
        _ip("netns", "add", ns)
        _ip("-n", self.switch, "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("-n", self.switch, "link", "set", link, "master", "br0", "up")
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "route", "add", "default", "dev", "eth0")
        self.hosts[host] = address
        return address

    def command(self, host: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
        """``argv`` to run inside ``host``, with extra environment variables."""
        extra = [f"{k}={v}" for k, v in (env or {}).items()]
        return ["ip", "netns", "exec", self.namespace(host), "env", *extra, *argv]

    def run(self, host: str, argv: Sequence[str], env: Mapping[str, str] | None = None, *,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(host, argv, env), capture_output=True, text=True, timeout=timeout,
                              check=False)

    def start(self, host: str, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        """A long-running process inside ``host``, its output in ``log``; stopped by :meth:`close`."""
        with log.open("ab") as out:
            process = subprocess.Popen(self.command(host, argv, env), stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 15)
        for process in self.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, 9)
                process.wait(timeout=5)
        for host in [*self.hosts, "sw"]:
            subprocess.run(["ip", "netns", "del", self.namespace(host)], capture_output=True, check=False)


@contextlib.contextmanager
def network() -> Iterator[Network]:
    net = Network()
    try:
        yield net
    finally:
        net.close()
