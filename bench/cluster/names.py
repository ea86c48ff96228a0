"""Every name an emulated cluster gives to what it makes, built and recognised in one place.

For cluster NAME (1-8 lower-case letters and digits) with hosts 0..N-1:

| object | name |
|---|---|
| network namespace of host i | NAME-hI |
| bridge (the switch), root namespace | NAMEbr |
| bridge-side veth end of host i | NAMEvI |
| host-side veth end before it moves and becomes eth0 | NAMEpI |
| interface inside each host | eth0 |
| cgroup of the cluster / of host i | <cpu cgroup root>/detr-NAME / .../hI |
| state, journal, launcher agent, ssh keys | $DETR_CLUSTER_STATE (default /run/detr-cluster)/NAME/ |
| ssh client configuration (with --sshd) | /etc/ssh/ssh_config.d/detr-NAME.conf |
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from bench import network

STATE_ROOT = Path(os.environ.get("DETR_CLUSTER_STATE", "/run/detr-cluster"))
SSH_CONFIG_DIR = Path("/etc/ssh/ssh_config.d")
NS_IFACE = "eth0"


@dataclass(frozen=True)
class ClusterNames:
    name: str

    def __post_init__(self):
        network.validate_cluster_name(self.name)

    # -- building ---------------------------------------------------------------------------
    @property
    def bridge(self) -> str:
        return f"{self.name}br"

    def netns(self, host: int) -> str:
        return f"{self.name}-h{host}"

    def veth(self, host: int) -> str:
        return f"{self.name}v{host}"

    def peer_tmp(self, host: int) -> str:
        return f"{self.name}p{host}"

    @property
    def cgroup_dir(self) -> str:
        return f"detr-{self.name}"

    @staticmethod
    def cgroup_host(host: int) -> str:
        return f"h{host}"

    @property
    def state_dir(self) -> Path:
        return STATE_ROOT / self.name

    @property
    def ssh_config(self) -> Path:
        return SSH_CONFIG_DIR / f"detr-{self.name}.conf"

    # -- recognising ------------------------------------------------------------------------
    def host_of_netns(self, netns: str) -> int | None:
        """Host index of a namespace named like this cluster's, else None."""
        match = re.fullmatch(re.escape(self.name) + r"-h(\d+)", netns)
        return int(match.group(1)) if match else None

    def is_port(self, link: str) -> bool:
        """A veth end of this cluster in the root namespace (bridge side, or a peer not yet moved)."""
        return re.fullmatch(re.escape(self.name) + r"[vp]\d+", link) is not None

    def is_link(self, link: str) -> bool:
        return link == self.bridge or self.is_port(link)
