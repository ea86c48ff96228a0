"""The real launch path: an sshd inside each emulated host (`up --sshd`), so that MPI reaches the
hosts over ssh and a hostfile exactly as it reaches Raspberry Pis.

What `up --sshd` adds (all in the state folder, removed by `down` or by the next command after
a killed `up`):
  ssh/id_ed25519[.pub]   the cluster's client key (authorised in every host)
  ssh/host_ed25519       the hosts' host key, listed in ssh/known_hosts under each host's name
                         and address (strict host key checking stays on)
  ssh/sshd-hI.conf       host I's sshd: listens only on its own address, port 22, key login only
  ssh/config             the client side (HostName, identity, known hosts, BatchMode, timeouts),
                         included from /etc/ssh/ssh_config.d/detr-NAME.conf so that plain `ssh
                         NAME-h0` and MPI's ssh launchers use it
  hostfile               MPICH: NAME-h0:1 ...   hostfile.openmpi: NAME-h0 slots=1 ...
Each sshd is started through the cluster's agent, so it runs inside its host's namespace, UTS
namespace (hostname NAME-hI) and CPU cgroup; the MPI proxies and ranks it starts inherit all
three. sshd hands its sessions only a clean environment (plus DETR_HOST, set here): pass what
the ranks need with mpiexec -genv (launch.hostfile_command does).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from .names import ClusterNames
from .system import ClusterError, UsageError, alive, run_cmd, start_time

SSH_PORT = 22
START_TIMEOUT_S = 10.0


def sshd_binary() -> str:
    found = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
    if not found or shutil.which("ssh-keygen") is None:
        raise UsageError("--sshd needs OpenSSH's server and client (Debian: apt-get install openssh-server)")
    return found


def ssh_dir(names: ClusterNames) -> Path:
    return names.state_dir / "ssh"


def make_keys(folder: Path, name: str) -> None:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for key, comment in (("id_ed25519", f"detr-{name} client"), ("host_ed25519", f"detr-{name} hosts")):
        run_cmd(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(folder / key)])
    authorized = folder / "authorized_keys"
    authorized.write_text((folder / "id_ed25519.pub").read_text())
    authorized.chmod(0o600)


def sshd_config(folder: Path, host: int, address: str, netns: str) -> str:
    return "\n".join([
        f"# sshd of emulated host {netns} (bench.cluster up --sshd)",
        f"ListenAddress {address}:{SSH_PORT}",
        f"HostKey {folder / 'host_ed25519'}",
        f"PidFile {folder / f'sshd-h{host}.pid'}",
        f"AuthorizedKeysFile {folder / 'authorized_keys'}",
        "PermitRootLogin prohibit-password", "PubkeyAuthentication yes", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "UsePAM no", "UseDNS no", "PrintMotd no", "X11Forwarding no",
        "AllowTcpForwarding no", "AllowAgentForwarding no", "LogLevel ERROR",
        "MaxStartups 100:30:200", "MaxSessions 100",        # hydra opens one session per proxy at once
        f"SetEnv DETR_HOST={netns}", ""])


def client_config(state: dict, folder: Path) -> str:
    lines = [f"# ssh client side of emulated cluster {state['name']!r} (bench.cluster up --sshd)"]
    for ns, address in zip(state["netns"], state["addrs"]):
        lines += [f"Host {ns}", f"    HostName {address}"]
    lines += ["Host " + " ".join(state["netns"] + state["addrs"]), "    User root",
              f"    IdentityFile {folder / 'id_ed25519'}", "    IdentitiesOnly yes",
              f"    UserKnownHostsFile {folder / 'known_hosts'}", "    StrictHostKeyChecking yes",
              "    GlobalKnownHostsFile /dev/null", "    BatchMode yes", "    ConnectTimeout 5",
              "    ServerAliveInterval 5", "    ServerAliveCountMax 3", "    GSSAPIAuthentication no",
              "    LogLevel ERROR", ""]
    return "\n".join(lines)


def write_client_files(state: dict, names: ClusterNames, journal) -> None:
    folder = ssh_dir(names)
    host_key = (folder / "host_ed25519.pub").read_text().split()
    (folder / "known_hosts").write_text("".join(f"{ns},{addr} {host_key[0]} {host_key[1]}\n"
                                                for ns, addr in zip(state["netns"], state["addrs"])))
    (folder / "config").write_text(client_config(state, folder))
    (names.state_dir / "hostfile").write_text("".join(f"{ns}:1\n" for ns in state["netns"]))
    (names.state_dir / "hostfile.openmpi").write_text("".join(f"{ns} slots=1\n" for ns in state["netns"]))
    journal.will_make("file", names.ssh_config)
    names.ssh_config.parent.mkdir(parents=True, exist_ok=True)
    names.ssh_config.write_text(f"# emulated cluster {state['name']!r}: removed by bench.cluster down\n"
                                f"Include {folder / 'config'}\n")


def wait_listening(pid_file: Path, pid: int, timeout: float = START_TIMEOUT_S) -> bool:
    """sshd -D writes its pid file once it listens (a test connection would only add a line to its log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if int(pid_file.read_text().split()[0]) == pid:
                return True
        except (OSError, ValueError, IndexError):
            pass
        if start_time(pid) is None:
            return False
        time.sleep(0.02)
    return False


def start_all(state: dict, journal) -> None:
    """Keys, configurations and one sshd per host (an `extras` step of lifecycle.make)."""
    names = ClusterNames(state["name"])
    sshd, folder = sshd_binary(), ssh_dir(names)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)   # sshd's privilege separation folder (Debian's unit makes it)
    if not (folder / "id_ed25519").exists():
        journal.will_make("keys", folder)
        make_keys(folder, names.name)
    write_client_files(state, names, journal)
    agent = names.state_dir / "agent"
    state["sshd"] = []
    for i, (ns, address) in enumerate(zip(state["netns"], state["addrs"])):
        config = folder / f"sshd-h{i}.conf"
        config.write_text(sshd_config(folder, i, address, ns))
        journal.will_make("sshd", ns)
        log = open(folder / f"sshd-h{i}.log", "ab")
        proc = subprocess.Popen([str(agent), "-x", ns, "--", sshd, "-D", "-e", "-f", str(config)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        state["sshd"].append({"pid": proc.pid, "start": start_time(proc.pid)})
    for i, address in enumerate(state["addrs"]):
        if not wait_listening(folder / f"sshd-h{i}.pid", state["sshd"][i]["pid"]):
            tail = (folder / f"sshd-h{i}.log").read_text(errors="replace").strip().splitlines()
            raise ClusterError(f"sshd of host {i} is not listening on {address}:{SSH_PORT}"
                               + (f": {tail[-1]}" if tail else ""))


def damage(state: dict) -> list[str]:
    return [f"sshd of host {i} (pid {entry['pid']}) not running" for i, entry in enumerate(state.get("sshd") or [])
            if not alive(entry["pid"], entry.get("start"))]
