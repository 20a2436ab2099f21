"""A real one-node Slurm cluster on localhost for the scale-out tests.

It runs Debian's ``munged``, ``slurmctld`` and ``slurmd`` with a generated munge key and a
``slurm.conf`` in a temporary folder (free high ports, state and spool in that folder), so it
touches nothing of a system Slurm. It needs root (``SlurmUser=root`` and ``slurmd`` launch jobs)
and the packages ``slurmctld slurmd munge slurm-client``; where either is missing, or a daemon does
not come up, the fixture skips with the reason and the daemons' logs (or fails, when the
environment sets ``PATHOSAE_REQUIRE_SLURM=1``, as CI does).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REQUIRED_BINARIES = ("munged", "slurmctld", "slurmd", "sinfo", "sbatch", "squeue", "scancel", "srun")
INSTALL_HINT = (
    "install them as root: apt-get update && apt-get install -y slurmctld slurmd munge slurm-client "
    "(`make test` does this when run as root)"
)
START_TIMEOUT_S = 60.0


class ClusterUnavailableError(RuntimeError):
    """The cluster cannot be started here; the message says why (and holds the daemon logs)."""


@dataclass
class SlurmCluster:
    """A running one-node cluster: its folder, config file and the daemons this process started."""

    root: Path
    conf: Path
    node: str
    cpus: int
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def command(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(
            list(args), env=self.env, capture_output=True, text=True, timeout=30, check=False
        )
        if check and done.returncode != 0:
            raise ClusterUnavailableError(f"`{' '.join(args)}` failed: {done.stderr.strip()}")
        return done.stdout

    def logs(self) -> str:
        parts = []
        for log in sorted(self.root.glob("*.log")):
            text = log.read_text(errors="replace").strip().splitlines()[-30:]
            parts.append(f"--- {log.name} (last lines) ---\n" + "\n".join(text))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel leftover jobs, then stop every daemon this process started (by pid)."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            self.command("scancel", "--full", "--user", "root", check=False)
            _wait_for(lambda: not self.command("squeue", "-h", check=False).strip(), timeout=20)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.processes.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def cannot_start_reason() -> str | None:
    """Why no cluster can be started here, or None when it can be tried."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "the one-node Slurm cluster needs root (SlurmUser=root); run the tests as root"
    missing = [name for name in REQUIRED_BINARIES if shutil.which(name) is None]
    if missing:
        return f"Slurm/munge binaries missing ({', '.join(missing)}); {INSTALL_HINT}"
    return None


def start_cluster(root: Path) -> SlurmCluster:
    """Start munged, slurmctld and slurmd under ``root`` and wait until the node is idle."""
    reason = cannot_start_reason()
    if reason:
        raise ClusterUnavailableError(reason)
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)  # munged refuses group/world-writable folders
    node = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    key = _write_munge_key(root / "munge.key")
    munge_socket = root / "munge.socket"
    cluster = SlurmCluster(root=root, conf=root / "slurm.conf", node=node, cpus=cpus)
    cluster.conf.write_text(_slurm_conf(root, node, cpus, munge_socket), encoding="utf-8")
    try:
        cluster.processes["munged"] = _spawn(
            [
                "munged", "--foreground", "--force", f"--key-file={key}", f"--socket={munge_socket}",
                f"--pid-file={root / 'munged.pid'}", f"--log-file={root / 'munged.log'}",
                f"--seed-file={root / 'munged.seed'}",
            ],
            root / "munged.out.log", cluster.env,
        )
        _wait_for(munge_socket.exists, timeout=15, what="munged socket", cluster=cluster)
        cluster.processes["slurmctld"] = _spawn(
            ["slurmctld", "-D", "-i", "-f", str(cluster.conf)], root / "slurmctld.out.log", cluster.env
        )
        _wait_for(
            lambda: cluster.command("scontrol", "ping", check=False).count("UP") > 0,
            timeout=START_TIMEOUT_S, what="slurmctld answering `scontrol ping`", cluster=cluster,
        )
        cluster.processes["slurmd"] = _spawn(
            ["slurmd", "-D", "-N", node, "-f", str(cluster.conf)], root / "slurmd.out.log", cluster.env
        )
        _wait_for(
            lambda: _node_state(cluster) == "idle",
            timeout=START_TIMEOUT_S, what=f"node {node} idle in `sinfo`", cluster=cluster,
        )
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A running one-node Slurm cluster with ``SLURM_CONF`` exported for this test process."""
    # A short path keeps the munge socket under the 108-byte limit of a unix socket name.
    root = Path(tmp_path_factory.mktemp("slurm", numbered=True))
    try:
        cluster = start_cluster(root)
    except ClusterUnavailableError as exc:
        message = f"no Slurm cluster: {exc}"
        print(message)
        if os.environ.get("PATHOSAE_REQUIRE_SLURM") == "1":  # CI: a cluster that cannot start fails
            pytest.fail(message)
        pytest.skip(message)
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        cluster.stop()
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous


# ---- helpers ---------------------------------------------------------------------------------
def _write_munge_key(path: Path) -> Path:
    # The same as `dd if=/dev/urandom bs=1 count=1024 > munge.key`, readable by root only.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
    with os.fdopen(fd, "wb") as fh:
        fh.write(os.urandom(1024))
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _real_memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            total_mb = int(line.split()[1]) // 1024
            return max(256, int(total_mb * 0.8))  # below the real figure, or slurmd drains the node
    return 1024


def _slurm_conf(root: Path, node: str, cpus: int, munge_socket: Path) -> str:
    ctld_port, slurmd_port = _free_port(), _free_port()
    while slurmd_port == ctld_port:
        slurmd_port = _free_port()
    lines = {
        "ClusterName": "pathosae-test",
        "SlurmctldHost": f"{node}(127.0.0.1)",
        "SlurmUser": "root",
        "SlurmdUser": "root",
        "SlurmctldPort": ctld_port,
        "SlurmdPort": slurmd_port,
        "AuthType": "auth/munge",
        "CredType": "cred/munge",
        "AuthInfo": f"socket={munge_socket}",
        "StateSaveLocation": root / "state",
        "SlurmdSpoolDir": root / "spool",
        "SlurmctldPidFile": root / "slurmctld.pid",
        "SlurmdPidFile": root / "slurmd.pid",
        "SlurmctldLogFile": root / "slurmctld.log",
        "SlurmdLogFile": root / "slurmd.log",
        "SlurmctldDebug": "info",
        "SlurmdDebug": "info",
        "ProctrackType": "proctrack/linuxproc",
        "TaskPlugin": "task/none",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_CPU",
        "SchedulerType": "sched/backfill",
        "MpiDefault": "none",
        "ReturnToService": 2,
        "SlurmdParameters": "config_overrides",
        "AccountingStorageType": "accounting_storage/none",
        "JobAcctGatherType": "jobacct_gather/none",
        "JobCompType": "jobcomp/none",
        "InactiveLimit": 0,
        "KillWait": 5,
        "MinJobAge": 300,
        "SlurmctldTimeout": 30,
        "SlurmdTimeout": 60,
        "PlugStackConfig": root / "plugstack.conf",
    }
    (root / "state").mkdir(exist_ok=True)
    (root / "spool").mkdir(exist_ok=True)
    (root / "plugstack.conf").write_text("", encoding="utf-8")  # no SPANK plugins
    text = "\n".join(f"{key}={value}" for key, value in lines.items())
    node_line = (
        f"NodeName={node} NodeAddr=127.0.0.1 NodeHostname={node} CPUs={cpus} "
        f"RealMemory={_real_memory_mb()} State=UNKNOWN"
    )
    partition = f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP"
    return f"{text}\n{node_line}\n{partition}\n"


def _spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _node_state(cluster: SlurmCluster) -> str:
    out = cluster.command("sinfo", "-h", "-N", "-n", cluster.node, "-o", "%T", check=False)
    return out.strip().rstrip("*~#").lower()


def _wait_for(
    ready: Callable[[], object], timeout: float, what: str = "", cluster: SlurmCluster | None = None
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return True
        except (OSError, subprocess.SubprocessError, ClusterUnavailableError):
            pass
        if cluster is not None:
            dead = [name for name, proc in cluster.processes.items() if proc.poll() is not None]
            if dead:
                raise ClusterUnavailableError(
                    f"{', '.join(dead)} exited while waiting for {what}\n{cluster.logs()}"
                )
        time.sleep(0.5)
    if cluster is not None:
        raise ClusterUnavailableError(f"timed out after {timeout:.0f}s waiting for {what}\n{cluster.logs()}")
    return False
