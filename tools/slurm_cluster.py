"""A throw-away single-node SLURM cluster on this machine (Debian 12, root), for the tests.

    python tools/slurm_cluster.py up [--state DIR]      # installs the packages if missing
    python tools/slurm_cluster.py status [--state DIR]
    python tools/slurm_cluster.py down [--state DIR]

`up` installs slurmctld, slurmd, slurm-client, munge, slurmdbd and mariadb-server from
Debian's packages if they are missing, writes slurm.conf and slurmdbd.conf into the state
dir (default /tmp/lwq-slurm), starts munged (as the munge user), a MariaDB server on
127.0.0.1:3399 with its data in the state dir, slurmdbd, slurmctld and slurmd by hand (no
systemd, no cgroups), waits until the node is idle and prints the `export` line every
client command needs (SLURM_CONF). `down` cancels every job, stops every daemon by the PID
in its PID file and checks that none is left. `cluster()` does both around a `with` block.

slurmdbd gives the real `sacct`, which submitit polls for the state of its jobs (without
it submitit sees every job as UNKNOWN). `up --no-slurmdbd` starts no database: `sacct` is
then a shim in <state>/bin (put first on PATH by the `export` line) that answers JobID,
State, NodeList, ... from `scontrol show job` (finished jobs stay there for MinJobAge =
30 min). The other settings are the facts measured in issue 24: cred_expire=5 and
sched_interval=1 make a requeued job start again ~6 s after it stopped (not 121 s); `low`
(default) and `high` partitions with partition-priority pre-emption (REQUEUE; the job's
--signal is sent first, the kill GraceTime later).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

DEFAULT_STATE = Path("/tmp/lwq-slurm")
PACKAGES = {"slurmctld": "slurmctld", "slurmd": "slurmd", "sbatch": "slurm-client",
            "munged": "munge"}  # fmt: skip
DBD_PACKAGES = {"slurmdbd": "slurmdbd", "mariadbd": "mariadb-server"}
MUNGE_RUN = Path("/run/munge")  # munged's socket dir: every client looks for it here
DAEMONS = ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged")  # `down` stops in this order
PROCESS_NAMES = {"slurmctld", "slurmd", "slurmstepd", "slurmdbd", "munged", "mariadbd"}
DB_PORT = 3399  # MariaDB on 127.0.0.1 only, beside any system server on 3306
GRACE_S = 30  # pre-emption: the signal first, the kill (and requeue) GraceTime later


def conf_path(state: Path) -> Path:
    return state / "slurm.conf"


def client_env(state: Path) -> dict[str, str]:
    """The environment additions every client command (and submitit) needs."""
    env = {"SLURM_CONF": str(conf_path(state))}
    if (state / "bin" / "sacct").exists():  # --no-slurmdbd: the sacct shim first on PATH
        env["PATH"] = f"{state / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    return env


def installed(program: str) -> bool:
    return bool(shutil.which(program)) or Path("/usr/sbin", program).exists()


def succeeds(*cmd: str, env: dict[str, str] | None = None):
    """A check for `wait_for`: does `cmd` exit 0 now?"""
    return lambda: subprocess.run(cmd, env=env, capture_output=True).returncode == 0


def ensure_packages(slurmdbd: bool) -> None:
    """apt-get install what is missing (slurm and munge ~11-15 s, slurmdbd and MariaDB ~11 s
    more here); `apt-get update` only if the install fails without it."""
    wanted = PACKAGES | (DBD_PACKAGES if slurmdbd else {})
    missing = [pkg for prog, pkg in wanted.items() if not installed(prog)]
    if not missing:
        return
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    with no_service_starts():
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, check=True, capture_output=True)
            subprocess.run(install, env=env, check=True, capture_output=True)


@contextlib.contextmanager
def no_service_starts():
    """Keep the packages' install scripts from starting their daemons (munged, mariadbd,
    slurmd): Debian's policy-rc.d hook, written only if the machine has none, removed after."""
    policy = Path("/usr/sbin/policy-rc.d")
    if policy.exists():
        yield
        return
    policy.write_text(
        "#!/bin/sh\n# written by lwq's tools/slurm_cluster.py during apt-get\nexit 101\n"
    )
    policy.chmod(0o755)
    try:
        yield
    finally:
        policy.unlink(missing_ok=True)


def node_line(host: str) -> str:
    """`slurmd -C`'s node line under `hostname -s`, RealMemory 10 % below what it measures
    (slurmd drains a node that reports less memory than configured)."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    fields = dict(word.split("=", 1) for word in out.splitlines()[0].split())
    fields["NodeName"] = host
    fields["RealMemory"] = str(int(int(fields["RealMemory"]) * 0.9))
    return " ".join(f"{k}={v}" for k, v in fields.items()) + " State=UNKNOWN"


def short_hostname() -> str:
    return subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()


def write_config(state: Path, slurmdbd: bool) -> Path:
    host = short_hostname()
    accounting = (
        ["AccountingStorageType=accounting_storage/slurmdbd", f"AccountingStorageHost={host}"]
        if slurmdbd
        else ["AccountingStorageType=accounting_storage/none"]  # see the sacct shim
    )
    lines = [
        "ClusterName=lwqtest",
        f"SlurmctldHost={host}",
        "SlurmUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        "AuthInfo=cred_expire=5",  # a requeued job may start again after 5 s, not 121 s
        f"StateSaveLocation={state / 'ctld'}",
        f"SlurmdSpoolDir={state / 'd'}",
        f"SlurmctldPidFile={state / 'slurmctld.pid'}",
        f"SlurmdPidFile={state / 'slurmd.pid'}",
        f"SlurmctldLogFile={state / 'slurmctld.log'}",
        f"SlurmdLogFile={state / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",  # no cgroups in a container
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        *accounting,
        "MpiDefault=none",
        "MailProg=/bin/true",
        "SwitchType=switch/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",  # memory is checked against the node, not consumed
        "ReturnToService=2",
        "MinJobAge=1800",  # finished jobs stay visible to scontrol (and the sacct shim)
        "SchedulerParameters=sched_interval=1,bf_interval=1",  # sbatch to start ~0.15 s
        "PreemptType=preempt/partition_prio",
        "PreemptMode=REQUEUE",
        "SlurmctldParameters=preempt_send_user_signal",  # the job's --signal before the kill
        node_line(host),
        f"PartitionName=low Nodes=ALL Default=YES PriorityTier=1 GraceTime={GRACE_S}"
        " MaxTime=INFINITE State=UP",
        "PartitionName=high Nodes=ALL PriorityTier=10 PreemptMode=OFF MaxTime=INFINITE State=UP",
    ]
    conf_path(state).write_text("\n".join(lines) + "\n")
    return conf_path(state)


SACCT_SHIM = '''#!/usr/bin/python3
"""sacct for a cluster without slurmdbd: JobID, State, NodeList, ... from scontrol."""
import argparse, re, subprocess
FIELDS = {"JobID": None, "JobName": "JobName", "State": "JobState", "NodeList": "NodeList",
          "Partition": "Partition", "ExitCode": "ExitCode", "Elapsed": "RunTime",
          "Restarts": "Restarts", "Start": "StartTime", "End": "EndTime"}
p = argparse.ArgumentParser()
p.add_argument("-j", "--jobs", action="append", default=[])
p.add_argument("-o", "--format", default="JobID,JobName,Partition,State,ExitCode")
p.add_argument("-P", "--parsable2", action="store_true")
p.add_argument("-X", "--allocations", action="store_true")
p.add_argument("-n", "--noheader", action="store_true")
args, _ = p.parse_known_args()
names = [n for n in args.format.split(",") if n]
ids = [i for j in args.jobs for i in j.split(",") if i] or [""]
rows = []
for jid in ids:
    out = subprocess.run(["scontrol", "-o", "show", "job", *([jid] if jid else [])],
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        job = dict(re.findall(r"(\\w+)=(\\S*)", line))
        task = job.get("ArrayTaskId")
        if task:
            task = task.split("%")[0]
            task = task if task.isdigit() else "[" + task + "]"
            job["JobID"] = job["ArrayJobId"] + "_" + task
        else:
            job["JobID"] = job.get("JobId", "")
        rows.append([job.get(FIELDS.get(n) or n, "") for n in names])
if args.parsable2:
    lines = ([names] if not args.noheader else []) + rows
    print("\\n".join("|".join(r) for r in lines))
else:
    width = [max([12, len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]
    fmt = lambda r: " ".join(v.rjust(w) for v, w in zip(r, width))
    if not args.noheader:
        print(fmt(names)); print(" ".join("-" * w for w in width))
    for r in rows:
        print(fmt(r))
'''


def start_database(state: Path) -> None:
    """MariaDB for slurmdbd: data, socket and PID file in <state>/db (owned by mysql), TCP
    on 127.0.0.1:DB_PORT; a database and a user for slurmdbd."""
    db = state / "db"
    db.mkdir()
    shutil.chown(db, "mysql", "mysql")
    subprocess.run(
        ["mariadb-install-db", "--user=mysql", f"--datadir={db}", "--skip-test-db",
         "--auth-root-authentication-method=socket"],
        check=True, capture_output=True, cwd=db,
    )  # fmt: skip
    subprocess.run(  # setsid --fork: mariadbd does not daemonize itself; init adopts it
        ["setsid", "--fork", "mariadbd", "--user=mysql", f"--datadir={db}",
         f"--socket={db / 'mysql.sock'}", f"--pid-file={db / 'mariadbd.pid'}",
         f"--log-error={db / 'mariadbd.err'}",
         "--bind-address=127.0.0.1", f"--port={DB_PORT}", "--skip-log-bin"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        check=True, cwd=db,
    )  # fmt: skip
    (state / "mariadbd.pid").symlink_to(db / "mariadbd.pid")
    client = ["mariadb", f"--socket={db / 'mysql.sock'}", "-e"]
    wait_for(succeeds(*client, "select 1"), 60, "MariaDB to answer")
    sql = (
        "create database slurm_acct_db; create user 'slurm'@'127.0.0.1' identified by 'lwq';"
        " grant all on slurm_acct_db.* to 'slurm'@'127.0.0.1';"
    )
    subprocess.run([*client, sql], check=True, capture_output=True)


def start_slurmdbd(state: Path, env: dict[str, str]) -> None:
    """slurmdbd (it reads slurmdbd.conf beside SLURM_CONF, mode 0600), then the cluster."""
    conf = state / "slurmdbd.conf"
    lines = [
        "AuthType=auth/munge",
        f"DbdHost={short_hostname()}",
        "SlurmUser=root",
        "StorageType=accounting_storage/mysql",
        "StorageHost=127.0.0.1",
        f"StoragePort={DB_PORT}",
        "StorageUser=slurm",
        "StoragePass=lwq",  # a throw-away database reachable from this machine only
        "StorageLoc=slurm_acct_db",
        f"PidFile={state / 'slurmdbd.pid'}",
        f"LogFile={state / 'slurmdbd.log'}",
    ]
    conf.write_text("\n".join(lines) + "\n")
    conf.chmod(0o600)
    subprocess.run(["slurmdbd"], env=env, check=True)
    wait_for(succeeds("sacctmgr", "-n", "list", "cluster", env=env), 60, "slurmdbd to answer")
    subprocess.run(["sacctmgr", "-i", "add", "cluster", "lwqtest"], env=env, check=True,
                   capture_output=True)  # fmt: skip


def write_sacct_shim(state: Path) -> None:
    shim = state / "bin" / "sacct"
    shim.parent.mkdir(exist_ok=True)
    shim.write_text(SACCT_SHIM)
    shim.chmod(0o755)


def read_pid(state: Path, daemon: str) -> int | None:
    path = state / f"{daemon}.pid"
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return False


def running_daemons(state: Path) -> dict[str, int]:
    pids = {d: read_pid(state, d) for d in DAEMONS}
    return {d: pid for d, pid in pids.items() if pid and alive(pid)}


def slurm_processes() -> list[str]:
    """`pid name` of every SLURM, munge or MariaDB process here (for the final check)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            name = (proc / "comm").read_text().strip()
        except OSError:
            continue
        if proc.name.isdigit() and name in PROCESS_NAMES and alive(int(proc.name)):
            found.append(f"{proc.name} {name}")
    return found


def wait_for(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.2)


def start_munge(state: Path) -> None:
    """munged as the munge user; its socket in /run/munge, its PID and log in the state."""
    munge = state / "munge"
    munge.mkdir(mode=0o700, exist_ok=True)
    MUNGE_RUN.mkdir(mode=0o755, exist_ok=True)
    for path in (munge, MUNGE_RUN):
        shutil.chown(path, "munge", "munge")
    subprocess.run(
        ["runuser", "-u", "munge", "--", "munged", f"--pid-file={munge / 'munged.pid'}",
         f"--log-file={munge / 'munged.log'}", f"--seed-file={munge / 'munged.seed'}"],
        check=True,
    )  # fmt: skip
    (state / "munged.pid").symlink_to(munge / "munged.pid")
    subprocess.run(["munge", "-n"], check=True, capture_output=True)  # the socket answers


def node_state(env: dict[str, str]) -> str:
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
    return out.stdout.strip()


def up(state: Path = DEFAULT_STATE, slurmdbd: bool = True) -> dict[str, str]:
    """Start the cluster (nothing if it is already up); returns client_env(state)."""
    if running_daemons(state):
        return client_env(state)
    others = slurm_processes()
    if others:
        raise RuntimeError(f"other SLURM, munge or MariaDB processes run here: {others}")
    ensure_packages(slurmdbd)
    others = slurm_processes()  # a package's postinst started its daemon (no policy-rc.d)
    if others:
        raise RuntimeError(f"installing started daemons; stop them first: {others}")
    if state.exists() and any(state.iterdir()):
        if not conf_path(state).exists():
            raise RuntimeError(f"{state} is not empty and holds no slurm.conf: not a state dir")
        shutil.rmtree(state)
    for sub in ("", "ctld", "d"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    state.chmod(0o755)  # munged and mariadbd (other users) must reach their subdirs
    conf = write_config(state, slurmdbd)
    if not slurmdbd:
        write_sacct_shim(state)
    env = os.environ | client_env(state)
    try:
        start_munge(state)
        if slurmdbd:
            start_database(state)
            start_slurmdbd(state, env)
        subprocess.run(["slurmctld", "-f", str(conf)], check=True)
        subprocess.run(["slurmd", "-f", str(conf)], check=True)
        wait_for(lambda: node_state(env) == "idle", 60, "the node to be idle")
    except BaseException:
        down(state)
        raise
    return client_env(state)


def cancel_jobs(env: dict[str, str]) -> None:
    """scancel every job and wait until none is left (slurmd does not stop job steps)."""
    if subprocess.run(["scontrol", "ping"], env=env, capture_output=True).returncode:
        return
    subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True, timeout=30)
    squeue = ["squeue", "-h", "-t", "all", "-o", "%T"]

    def no_job_runs() -> bool:
        out = subprocess.run(squeue, env=env, capture_output=True, text=True).stdout.split()
        return not {"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED"} & set(out)

    wait_for(no_job_runs, 60, "the cancelled jobs to end")


def stop(daemon: str, pid: int) -> None:
    """SIGTERM, then SIGKILL after 15 s; returns once the process is gone."""
    os.kill(pid, signal.SIGTERM)
    try:
        wait_for(lambda: not alive(pid), 15, f"{daemon} ({pid}) to stop")
    except RuntimeError:
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not alive(pid), 5, f"{daemon} ({pid}) to die")


def down(state: Path = DEFAULT_STATE) -> None:
    """Cancel every job, stop every daemon by its PID, fail if any is still running."""
    try:
        if read_pid(state, "slurmctld"):
            cancel_jobs(os.environ | client_env(state))
    finally:  # the daemons stop even if the jobs would not
        for daemon in DAEMONS:
            pid = read_pid(state, daemon)
            if pid is not None and alive(pid):
                stop(daemon, pid)
    left = running_daemons(state)
    if left:
        raise RuntimeError(f"still running after down: {left}")


@contextmanager
def cluster(state: Path, slurmdbd: bool = True):
    """The cluster for a `with` block: up before, down after (also when the block fails)."""
    try:
        yield up(state, slurmdbd)
    finally:
        down(state)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE, help="state directory")
    parser.add_argument(
        "--no-slurmdbd",
        action="store_true",
        help="no database: an sacct shim answers from scontrol",
    )
    args = parser.parse_args(argv)
    state = args.state.resolve()
    if args.command == "up":
        env = up(state, slurmdbd=not args.no_slurmdbd)
        path = f" PATH={state / 'bin'}:$PATH" if "PATH" in env else ""
        print(f"export SLURM_CONF={env['SLURM_CONF']}{path}")
    elif args.command == "down":
        down(state)
        print(f"stopped: no daemon of {state} is running")
    else:
        daemons = running_daemons(state)
        print(" ".join(f"{d}={pid}" for d, pid in daemons.items()) or "down")
        if daemons:
            print(subprocess.run(["sinfo"], env=os.environ | client_env(state),
                                 capture_output=True, text=True).stdout, end="")  # fmt: skip
        return 0 if {"slurmctld", "slurmd", "munged"} <= set(daemons) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
