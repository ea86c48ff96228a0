"""An emulated edge cluster on one Linux machine: one network namespace per host, a veth from
each to one bridge (the switch), both directions of every host link shaped with tbf, a CPU quota
per host from the cgroup `cpu` controller, and MPI ranks launched one per host over TCP.

    python -m bench.cluster up --hosts 4 --rate 100mbit --cpu-quota 0.45
    python -m bench.cluster shape --rate 10mbit             # between sweep points, no teardown
    python -m bench.cluster status [--json]                 # exit 1 unless the cluster is intact
    python -m bench.cluster run -- python -m bench.collectives --sizes 1m
    python -m bench.cluster exec --host 0 -- ip addr       # one command in one host, no MPI
    python -m bench.cluster down

Cluster NAME (default "detr", --name or $DETR_CLUSTER_NAME) with N hosts: namespaces
NAME-h0..NAME-h{N-1}, each with `lo` and `eth0` (address .1, .2, ... of one private /24 picked
from 10.213.0.0/16 where no route or address of this machine is, or --subnet); bridge NAMEbr
(address .254, in the root namespace: mpiexec's proxies call back to it); bridge-side veth ends
NAMEv0..; cgroups <cpu root>/detr-NAME/h0..; state, journal and launcher agent in
/run/detr-cluster/NAME/ (bench/cluster/names.py has every name).

`run` calls MPICH hydra: mpiexec -launcher ssh -launcher-exec AGENT -iface NAMEbr -hosts ...;
the agent (bench/cluster/agent.py) joins the host's cgroup, gives the host its own hostname and
`ip netns exec`s the proxy there. MPI is forced onto TCP (ofi/tcp on eth0); ranks get
DETR_IFACE=eth0, DETR_COMM_WAIT=sleep (--wait spin to change), GLOO_SOCKET_IFNAME=eth0,
MASTER_ADDR/MASTER_PORT (host 0); unless set: OMP_NUM_THREADS=1 and
MPIR_CVAR_IALLREDUCE_INTRA_ALGORITHM=tsp_ring, MPIR_CVAR_IALLGATHERV_INTRA_ALGORITHM=tsp_ring
(bench/cluster/launch.py says why). Killing `run`
(SIGTERM, SIGKILL, Ctrl-C) ends mpiexec and every rank within seconds.

`up` journals each object in the state folder before making it: an `up` killed half-way (even
by SIGKILL) is found and removed by the next up, down, status, shape, run or exec.

Exit codes: 0 ok; 1 operation failed (a failed `up` removes what it made; `status`: the cluster
is down, half-made or damaged, and it says what); 2 invalid arguments or not root (nothing
created); 130 Ctrl-C; 141 closed stdout; run and exec: the command's.
"""

from .cgroups import CgroupV1, CgroupV2, CpuQuota
from .names import NS_IFACE, STATE_ROOT, ClusterNames
from .system import ClusterError, UsageError

__all__ = ["CgroupV1", "CgroupV2", "CpuQuota", "ClusterNames", "ClusterError", "NS_IFACE", "STATE_ROOT",
           "UsageError"]
