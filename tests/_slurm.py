"""A real single-node SLURM (munged, slurmctld, slurmd) configured in a temporary folder, for tests.

Debian's ``slurm-wlm`` and ``munge`` packages provide the daemons (``.ci/run`` installs them with
apt-get when they are missing). Everything the daemons write (configuration, munge key and socket,
state, spool, logs) lives in one folder; they run in the foreground as children of the test process
on free loopback ports, so nothing of the machine's own configuration is read or changed, and
:func:`single_node_slurm` stops exactly the processes it started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")
PARTITION = "debug"


def unavailable_reason() -> str | None:
    """Why a SLURM cannot be started here, or None when it can."""
    missing = [name for name in DAEMONS if shutil.which(name) is None
               and not Path("/usr/sbin", name).exists()]
    if missing:
        return (f"SLURM is not installed ({', '.join(missing)} missing); .ci/run installs Debian's slurm-wlm "
                "and munge with apt-get")
    if os.geteuid() != 0:
        return "slurmd launches jobs only when run as root, and this test runs as an unprivileged user"
    return None


def _which(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _config(root: Path, host: str, cpus: int) -> str:
    return "\n".join([
        "ClusterName=subcelltest",
        f"SlurmctldHost={host}(127.0.0.1)",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "AuthType=auth/munge",
        f"AuthInfo=socket={root / 'munge' / 'socket'}",
        "CredType=cred/munge",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
        "ProctrackType=proctrack/pgid",  # no cgroups: runs in containers too
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "SchedulerType=sched/backfill",
        "SlurmdParameters=config_overrides",  # the node offers what this file says, whatever the machine has
        "ReturnToService=2",
        "MpiDefault=none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=8000 State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _logs(root: Path) -> str:
    parts = []
    for path in sorted((root / "log").glob("*")):
        text = path.read_text(errors="replace").strip().splitlines()[-15:]
        parts.append(f"--- {path.name}\n" + "\n".join(text))
    return "\n".join(parts)


def queue(env: dict[str, str]) -> list[str]:
    """Job ids SLURM still knows (pending, running or finishing)."""
    done = subprocess.run([_which("squeue"), "-h", "-o", "%i"], env=env, capture_output=True, text=True,
                          timeout=30, check=True)
    return done.stdout.split()


@contextlib.contextmanager
def single_node_slurm(root: Path, *, cpus: int = 4, timeout: float = 60.0) -> Iterator[dict[str, str]]:
    """Start munged, slurmctld and slurmd in ``root``; yield the environment that reaches them.

    The yielded environment is ``os.environ`` plus ``SLURM_CONF``; ``sbatch``, ``squeue`` and
    dask-jobqueue called with it talk to this SLURM. Jobs left over are cancelled and the three
    daemons stopped when the block ends, also when it fails.
    """
    for sub in ("munge", "state", "spool", "log", "jobs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "munge").chmod(0o711)
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(_config(root, host, cpus))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    key = root / "munge" / "munge.key"
    subprocess.run([_which("mungekey"), "--create", f"--keyfile={key}"], check=True, capture_output=True, timeout=30)
    key.chmod(0o400)
    started: list[subprocess.Popen] = []

    def start(*argv: str) -> None:
        with (root / "log" / f"{Path(argv[0]).name}.out").open("w") as out:
            started.append(subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL))

    try:
        start(_which("munged"), "--foreground", "--force", f"--key-file={key}",
              f"--socket={root / 'munge' / 'socket'}", f"--pid-file={root / 'munge' / 'munged.pid'}",
              f"--seed-file={root / 'munge' / 'munged.seed'}", f"--log-file={root / 'log' / 'munged.log'}",
              "--num-threads=4")
        _wait(lambda: (root / "munge" / "socket").exists(), timeout, "munged did not create its socket", root)
        start(_which("slurmctld"), "-D", "-c", "-f", str(conf))
        start(_which("slurmd"), "-D", "-N", host, "-f", str(conf))
        _wait(lambda: _node_state(env) in ("idle", "mixed", "allocated"), timeout,
              "the SLURM node did not become idle", root)
        yield env
    finally:
        with contextlib.suppress(Exception):
            if queue(env):
                subprocess.run([_which("scancel"), "--partition", PARTITION], env=env, timeout=30)
                _wait(lambda: not queue(env), 30, "jobs still queued after scancel", root)
        for process in reversed(started):
            _stop(process)


def _node_state(env: dict[str, str]) -> str:
    done = subprocess.run([_which("sinfo"), "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=30)
    return done.stdout.strip().rstrip("*~#") if done.returncode == 0 else ""


def _wait(condition, timeout: float, what: str, root: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} within {timeout:.0f} s; daemon logs:\n{_logs(root)}")
