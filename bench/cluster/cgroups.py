"""CPU quotas per emulated host with the cgroup `cpu` controller: v1 (`cpu.cfs_quota_us` and
`cpu.cfs_period_us`) or v2 (`cpu.max`). This code has run against a real v1 hierarchy; the v2
class is tested only against a fake of its files in a temporary folder."""

from __future__ import annotations

from pathlib import Path

CFS_PERIOD_US = 100_000


class CpuQuota:
    """One cgroup hierarchy with the cpu controller, rooted at `root`."""
    version = "?"

    def __init__(self, root: Path):
        self.root = Path(root)

    @staticmethod
    def detect(mounts: str = "/proc/self/mounts") -> "CpuQuota | None":
        """The v1 cpu hierarchy if mounted, else a cgroup2 root whose controllers include cpu."""
        with open(mounts) as handle:
            entries = [line.split() for line in handle if line.strip()]
        for _, mount, fstype, opts, *_ in entries:
            if fstype == "cgroup" and "cpu" in opts.split(",") and (Path(mount) / "cpu.cfs_quota_us").exists():
                return CgroupV1(Path(mount))
        for _, mount, fstype, *_ in entries:
            if fstype == "cgroup2":
                try:
                    if "cpu" in (Path(mount) / "cgroup.controllers").read_text().split():
                        return CgroupV2(Path(mount))
                except OSError:
                    pass
        return None

    def groups(self, cluster_dir: str, hosts: list[str]) -> tuple[Path, list[Path]]:
        parent = self.root / cluster_dir
        return parent, [parent / host for host in hosts]

    def create(self, parent: Path, children: list[Path]) -> None:
        parent.mkdir(exist_ok=True)
        for child in children:
            child.mkdir(exist_ok=True)

    def set(self, group: Path, quota: float | None) -> None:
        """Limit the group to `quota` cores (None: unlimited)."""
        raise NotImplementedError

    def read(self, group: Path) -> dict:
        """{quota (cores or None), nr_periods, nr_throttled, throttled_s}; None values if unreadable."""
        out = {"quota": None, "nr_periods": None, "nr_throttled": None, "throttled_s": None}
        try:
            quota_us, period_us = self._quota_period(group)
            out["quota"] = None if quota_us < 0 else quota_us / period_us
            for line in (group / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key in ("nr_periods", "nr_throttled"):
                    out[key] = int(value)
                elif key == "throttled_time":           # v1, nanoseconds
                    out["throttled_s"] = int(value) / 1e9
                elif key == "throttled_usec":           # v2
                    out["throttled_s"] = int(value) / 1e6
        except (OSError, ValueError):
            pass
        return out

    def _quota_period(self, group: Path) -> tuple[int, int]:
        raise NotImplementedError

    @staticmethod
    def pids(group: Path) -> list[int]:
        try:
            return [int(p) for p in (group / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    @staticmethod
    def procs_file(group: Path) -> Path:
        """Writing a pid here moves that process into the group (same file in v1 and v2)."""
        return group / "cgroup.procs"

    @staticmethod
    def quota_us(quota: float | None) -> int:
        return -1 if quota is None else max(1000, int(round(quota * CFS_PERIOD_US)))


class CgroupV1(CpuQuota):
    version = "v1"

    def set(self, group: Path, quota: float | None) -> None:
        (group / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(self.quota_us(quota)))

    def _quota_period(self, group: Path) -> tuple[int, int]:
        return int((group / "cpu.cfs_quota_us").read_text()), int((group / "cpu.cfs_period_us").read_text())


class CgroupV2(CpuQuota):
    version = "v2"

    def create(self, parent: Path, children: list[Path]) -> None:
        # A v2 child gets cpu.max only once its parent delegates the cpu controller.
        (self.root / "cgroup.subtree_control").write_text("+cpu")
        parent.mkdir(exist_ok=True)
        (parent / "cgroup.subtree_control").write_text("+cpu")
        for child in children:
            child.mkdir(exist_ok=True)

    def set(self, group: Path, quota: float | None) -> None:
        us = self.quota_us(quota)
        (group / "cpu.max").write_text(f"{'max' if us < 0 else us} {CFS_PERIOD_US}")

    def _quota_period(self, group: Path) -> tuple[int, int]:
        quota, period = (group / "cpu.max").read_text().split()
        return (-1 if quota == "max" else int(quota)), int(period)
