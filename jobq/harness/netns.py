"""Hosts of their own on this machine: network namespaces joined to the root namespace by veth
pairs, and partitions made by the kernel (iptables DROP at both ends).

Each host gets a /30 of 10.213.0.0/16: the host is ``.2``, its gateway in the root namespace
(where PostgreSQL listens for it) is ``.1``. Nothing else is routed: a host reaches the root
namespace's addresses and nothing beyond, and the rules that cut it match its own addresses
only. Needs root (CAP_NET_ADMIN); ``available()`` says why not otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field

NET = "10.213"


def _run(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True, timeout=30)


def available() -> str | None:
    """None when namespaces and iptables can be used here; otherwise why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/system-packages.sh installs it)"
    return None


@dataclass
class Host:
    """One namespace: ``address`` inside it, ``gateway`` on the root side of its veth."""

    name: str
    index: int
    cut_since: float | None = None

    @property
    def address(self) -> str:
        return f"{NET}.{self.index // 64}.{(self.index % 64) * 4 + 2}"

    @property
    def gateway(self) -> str:
        return f"{NET}.{self.index // 64}.{(self.index % 64) * 4 + 1}"

    @property
    def veth(self) -> str:
        return f"{self.name[:12]}v"  # interface names hold 15 characters

    def prefix(self) -> list[str]:
        """Run a command inside the namespace: this prefix, then the command."""
        return ["ip", "netns", "exec", self.name]

    def create(self) -> Host:
        _run("ip", "netns", "add", self.name)
        _run("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0",
             "netns", self.name)
        _run("ip", "addr", "add", f"{self.gateway}/30", "dev", self.veth)
        _run("ip", "link", "set", self.veth, "up")
        inside = self.prefix()
        _run(*inside, "ip", "addr", "add", f"{self.address}/30", "dev", "eth0")
        _run(*inside, "ip", "link", "set", "eth0", "up")
        _run(*inside, "ip", "link", "set", "lo", "up")
        return self

    def _rules(self) -> list[list[str]]:
        tag = ["-m", "comment", "--comment", f"jobq-test-{self.name}"]
        return [
            # Inside: nothing in, nothing out, but loopback.
            [*self.prefix(), "iptables", "{op}", "INPUT", "!", "-i", "lo", "-j", "DROP", *tag],
            [*self.prefix(), "iptables", "{op}", "OUTPUT", "!", "-o", "lo", "-j", "DROP", *tag],
            # Root side: nothing from or to this host's address.
            ["iptables", "{op}", "INPUT", "-s", self.address, "-j", "DROP", *tag],
            ["iptables", "{op}", "OUTPUT", "-d", self.address, "-j", "DROP", *tag],
        ]

    def cut(self) -> None:
        """Partition the host: every packet to or from it is dropped, silently, as by a
        broken switch: no reset, no ICMP; both sides only see silence."""
        if self.cut_since is not None:
            return
        for rule in self._rules():
            _run(*[("-I" if a == "{op}" else a) for a in rule])
        self.cut_since = time.monotonic()

    def heal(self) -> None:
        if self.cut_since is None:
            return
        for rule in self._rules():
            subprocess.run([("-D" if a == "{op}" else a) for a in rule], capture_output=True,
                           timeout=30)
        self.cut_since = None

    def remove(self) -> None:
        """Heal, then delete the namespace (its veth pair goes with it). End the processes
        inside first: a namespace with processes in it lives on until they end."""
        self.heal()
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True, timeout=30)


@dataclass
class Hosts:
    """Namespaces made together, removed together; names unique to this process."""

    names: list[str]
    hosts: dict[str, Host] = field(default_factory=dict)

    def __enter__(self) -> Hosts:
        base = os.getpid() % 4000 * 16  # another run's hosts get other addresses
        try:
            for i, name in enumerate(self.names):
                host = Host(f"jq{os.getpid() % 100000}{name}", (base + i) % 16384)
                self.hosts[name] = host.create()
        except BaseException:
            self.remove()
            raise
        return self

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    @property
    def gateways(self) -> list[str]:
        return [h.gateway for h in self.hosts.values()]

    def remove(self) -> None:
        for host in self.hosts.values():
            host.remove()

    def __exit__(self, *exc: object) -> None:
        self.remove()
