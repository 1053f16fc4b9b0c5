"""Start, use and stop a private Flower SuperLink, for end-to-end tests and benchmarks (Linux: reads /proc).

The caller owns the SuperLink: it starts ``flower-superlink`` on 127.0.0.1 at a free port with a
private FLWR_HOME/HOME/TMPDIR, points ``$FLWR_HOME/config.toml`` at it (so ``flwr run`` never
spawns a shared local SuperLink), and stops it and everything it started (superexec,
flwr-simulation, Ray, in its sessions) by PID.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def private_env(base: Path, port: int) -> dict[str, str]:
    """``base`` must be short: Ray puts AF_UNIX sockets (107-byte limit) under $TMPDIR."""
    for name in ("home", "flwr", "tmp"):
        (base / name).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(
        HOME=str(base / "home"),
        FLWR_HOME=str(base / "flwr"),
        TMPDIR=str(base / "tmp"),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(port),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        RAY_USAGE_STATS_ENABLED="0",
    )
    return env


def start_superlink(base: Path, env: dict[str, str], port: int, timeout: float = 60.0) -> subprocess.Popen:
    """``flower-superlink`` on 127.0.0.1:``port`` in simulation mode, as the default connection of ``$FLWR_HOME``."""
    (base / "flwr" / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    log = (base / "superlink.log").open("w")
    superlink = subprocess.Popen(
        [str(BIN / "flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
         "--host", "127.0.0.1", "--port", str(port), "--database", str(base / "state.db"),
         "--disable-runtime-dependency-installation"],
        cwd=base, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=0.5) as response:
                if response.status == 200:
                    return superlink
        except OSError:
            pass
        if superlink.poll() is not None or time.monotonic() > deadline:
            stop_processes([superlink.pid])
            raise RuntimeError(f"SuperLink did not start; see {base / 'superlink.log'}")
        time.sleep(0.2)


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return f'"{value}"'


def flwr_run(app_dir: Path, env: dict[str, str], run_config: dict, num_supernodes: int, timeout: float = 3600) -> dict:
    """Submit a run, block until it finishes, return its id, status, details and logs."""
    flwr = str(BIN / "flwr")
    command = [
        flwr, "run", ".", "--format", "json",
        "--federation-config", f"num-supernodes={num_supernodes} client-resources-num-cpus=1",
        "--run-config", " ".join(f"{key}={toml_value(value)}" for key, value in run_config.items()),
    ]
    submitted = subprocess.run(command, cwd=app_dir, env=env, capture_output=True, text=True, timeout=300)
    try:
        answer = json.loads(submitted.stdout)
    except json.JSONDecodeError as exc:
        raise RuntimeError(f"flwr run: {submitted.stdout}\n{submitted.stderr}") from exc
    if not answer.get("success"):  # flwr exits 0 even on failure; the JSON says
        raise RuntimeError(f"flwr run failed: {answer}\n{submitted.stderr}")
    run_id = str(answer["run-id"])
    logs = subprocess.run([flwr, "log", run_id, "--stream"], cwd=app_dir, env=env, capture_output=True, text=True, timeout=timeout)
    listing = subprocess.run([flwr, "ls", "--run-id", run_id, "--format", "json"], cwd=app_dir, env=env,
                             capture_output=True, text=True, timeout=120)
    run = json.loads(listing.stdout)["runs"][0]
    return {"run_id": run_id, "status": run["status"], "details": run["status-details"], "logs": logs.stdout + logs.stderr}


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, session id, state)."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            table[int(entry)] = (int(fields[1]), int(fields[3]), fields[0])
    return table


def owned_processes(roots: list[int]) -> tuple[set[int], set[int]]:
    """The roots, their descendants, and every process in their sessions (Ray orphans included)."""
    table = _processes()
    owned: set[int] = set()
    stack = [pid for pid in roots if pid in table]
    while stack:
        pid = stack.pop()
        if pid not in owned:
            owned.add(pid)
            stack.extend(child for child, (parent, _, _) in table.items() if parent == pid)
    sessions = {table[pid][1] for pid in owned} - {os.getsid(0), 0}
    return owned, sessions


def alive(pids: set[int], sessions: set[int]) -> set[int]:
    return {pid for pid, (_, sid, state) in _processes().items() if state != "Z" and (pid in pids or sid in sessions)}


def stop_processes(roots: list[int], grace: float = 10.0) -> None:
    """SIGTERM everything the roots started, then SIGKILL what is left after ``grace`` seconds."""
    pids, sessions = owned_processes(roots)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive(pids, sessions):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while alive(pids, sessions) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not alive(pids, sessions):
            return
    raise RuntimeError(f"processes survived SIGKILL: {sorted(alive(pids, sessions))}")
