"""A real deployment on 127.0.0.1, tested: TLS, SuperNode authentication, three SuperNodes, one killed and restarted.

    python scripts/deploy_tls.py [--rounds 12] [--kill-after 4] [--restart-superlink] [--warm]
                                 [--dataset synthetic|mnist] [--keep DIR]

What it does, step by step (the README's "Deployment" section follows the same steps for real edge devices):

1. Makes throwaway certificates with ``cryptography``: a CA, and a server certificate for 127.0.0.1/localhost
   signed by it (the SuperLink's), and one P-384 key pair per SuperNode (OpenSSH format, as Flower reads them).
2. Starts ``flower-superlink`` with TLS (``--ssl-ca-certfile --ssl-certfile --ssl-keyfile``), SuperNode
   authentication (``--enable-supernode-auth``) and a database file, on 127.0.0.1 at a free port.
3. Writes ``$FLWR_HOME/config.toml`` with a connection ``deploy`` (the address and ``root-certificates``) and
   registers each SuperNode's public key (``flwr supernode register <key.pub> deploy``).
4. Starts three ``flower-supernode`` with ``--root-certificates``, ``--auth-supernode-private-key`` and
   ``--node-config "partition-id=m num-partitions=3"``, each with its own ``--port``. With ``--warm``, first a
   warm worker for each (``python -m laq_fl.flower.warm_worker --socket <dir>/warm<m>.sock``), named in the
   node config (``worker-socket="<dir>/warm<m>.sock"``); it keeps running when its SuperNode is killed.
5. ``flwr run . deploy`` with the LAQ run config; once the results file shows round ``--kill-after``, SIGKILLs
   SuperNode 1 and starts it again with the same key (so the same node id, and an empty state).
6. Waits for the run, checks it ``finished:completed``, that the restarted worker was restored (the results
   file's ``restores``/``resyncs``), and that the final training loss is within 1e-3 of an undisturbed run of the
   same length (the in-process app, which equals a deployment bit for bit), then stops every process it started,
   by PID.

With ``--restart-superlink`` step 5 kills the SuperLink instead (and with it the ServerApp), starts it again on its
database, checks that the run ended ``finished:failed``, and submits it again with ``resume=true``: the resumed run
must end with exactly the undisturbed run's loss (its iterates are bit-identical).

Private FLWR_HOME/HOME/TMPDIR under one temporary folder (``--keep DIR`` to keep it), 127.0.0.1 only. Prints one
JSON summary (timings included) and exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from laq_fl.flower.local_run import BIN, free_port, private_env, stop_processes, toml_value  # noqa: E402
from laq_fl.results import read_results  # noqa: E402

NUM_NODES = 3


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 and localhost signed by it, valid for one day."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (
        x509.CertificateBuilder().subject_name(_name("laq-fl test CA")).issuer_name(_name("laq-fl test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server = (
        x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca.subject)
        .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": folder / "ca.crt", "cert": folder / "server.pem", "key": folder / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    paths["key"].chmod(0o600)
    return paths


def make_node_key(folder: Path, index: int) -> tuple[Path, Path]:
    """One SuperNode's P-384 key pair in OpenSSH format: (private, public)."""
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / f"node{index}.key", folder / f"node{index}.pub"
    private.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    private.chmod(0o600)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    return private, public


def wait_healthy(port: int, ca: Path, process: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/health", timeout=1, context=context) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.3)
    raise RuntimeError(f"the SuperLink did not become healthy over TLS; see {log}")


def start(command: list[str], base: Path, env: dict, log_name: str) -> subprocess.Popen:
    log = (base / log_name).open("w")
    return subprocess.Popen(command, cwd=base, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def flwr(env: dict, *args: str, cwd: Path = REPO_ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "flwr"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


class Deployment:
    """Steps 1-4 of the module docstring in ``base``: certificates, a TLS SuperLink with SuperNode authentication,
    the ``deploy`` connection, ``num_nodes`` registered SuperNodes. :meth:`stop` stops every process by PID."""

    def __init__(self, base: Path, num_nodes: int = NUM_NODES, warm: bool = False) -> None:
        """``warm``: start a warm worker beside each SuperNode (``python -m laq_fl.flower.warm_worker``) and name
        its socket in the SuperNode's node config, so that no flwr-clientapp process imports torch."""
        self.base, self.num_nodes, self.warm = base, num_nodes, warm
        # A Unix socket's path is limited to 107 bytes: under a long TMPDIR the sockets go to a short folder.
        self.socket_dir = base if len(str(base)) < 80 else Path(tempfile.mkdtemp(prefix="laqw", dir="/tmp"))
        self.port = free_port()
        self.env = private_env(base, self.port)
        self.processes: list[subprocess.Popen] = []
        try:
            self._start()
        except BaseException:
            self.stop()  # nothing started may outlive a failed start
            raise

    def _start(self) -> None:
        base, num_nodes = self.base, self.num_nodes
        self.certificates = make_certificates(base)
        self.superlink_command = [
            str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(self.certificates["ca"]),
            "--ssl-certfile", str(self.certificates["cert"]), "--ssl-keyfile", str(self.certificates["key"]),
            "--enable-supernode-auth", "--host", "127.0.0.1", "--port", str(self.port),
            "--database", str(base / "state.db"), "--disable-runtime-dependency-installation"]
        self.superlink = start(self.superlink_command, base, self.env, "superlink.log")
        self.processes.append(self.superlink)
        wait_healthy(self.port, self.certificates["ca"], self.superlink, base / "superlink.log")
        (base / "flwr" / "config.toml").write_text(
            f'[superlink]\ndefault = "deploy"\n\n[superlink.deploy]\naddress = "127.0.0.1:{self.port}"\n'
            f'root-certificates = "{self.certificates["ca"]}"\n'
        )
        self.keys = [make_node_key(base, index) for index in range(num_nodes)]
        for index, (_, public) in enumerate(self.keys):
            registered = flwr(self.env, "supernode", "register", str(public), "deploy", "--format", "json")
            if registered.returncode != 0 or '"success": true' not in registered.stdout.replace("'", '"'):
                raise RuntimeError(f"registering SuperNode {index}: {registered.stdout}{registered.stderr}")
        self.nodes = [self.supernode(index, 0) for index in range(num_nodes)]

    def supernode(self, index: int, attempt: int) -> subprocess.Popen:
        """Start SuperNode ``index`` with its key and partition (``attempt`` names its log file), and its warm
        worker when the deployment has them (once: a SuperNode restart does not touch its warm worker)."""
        node_config = f"partition-id={index} num-partitions={self.num_nodes}"
        if self.warm:
            socket_path = self.socket_dir / f"warm{index}.sock"
            if attempt == 0:
                self.processes.append(start([sys.executable, "-m", "laq_fl.flower.warm_worker", "--socket",
                                             str(socket_path)], self.base, {**self.env, "PYTHONPATH": str(REPO_ROOT)},
                                            f"warm-worker{index}.log"))
            node_config += f' worker-socket="{socket_path}"'
        process = start(
            [str(BIN / "flower-supernode"), "--root-certificates", str(self.certificates["ca"]),
             "--superlink", f"127.0.0.1:{self.port}", "--auth-supernode-private-key", str(self.keys[index][0]),
             "--node-config", node_config, "--port", str(free_port())],
            self.base, self.env, f"supernode{index}-{attempt}.log")
        self.processes.append(process)
        return process

    def restart_superlink(self) -> None:
        """SIGKILL the SuperLink and everything it started (the ServerApp), then start it again on its database."""
        os.killpg(self.superlink.pid, signal.SIGKILL)
        self.superlink.wait()
        self.superlink = start(self.superlink_command, self.base, self.env, "superlink-restarted.log")
        self.processes.append(self.superlink)
        wait_healthy(self.port, self.certificates["ca"], self.superlink, self.base / "superlink-restarted.log")

    def submit(self, run_config: dict, app: Path = REPO_ROOT) -> str:
        """``flwr run <app> deploy`` with ``run_config``; the run id."""
        submitted = flwr(self.env, "run", ".", "deploy", "--format", "json", "--run-config",
                         " ".join(f"{key}={toml_value(value)}" for key, value in run_config.items()), cwd=app)
        answer = json.loads(submitted.stdout or "{}")
        if not answer.get("success"):
            raise RuntimeError(f"flwr run: {submitted.stdout}{submitted.stderr}")
        return str(answer["run-id"])

    def status(self, run_id: str) -> str | None:
        listing = flwr(self.env, "ls", "deploy", "--run-id", run_id, "--format", "json", timeout=60)
        try:
            return json.loads(listing.stdout)["runs"][0]["status"]
        except (json.JSONDecodeError, KeyError, IndexError):
            return None

    def wait(self, run_id: str, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        status = None
        while time.monotonic() < deadline:
            status = self.status(run_id)
            if status and status.startswith("finished"):
                break
            time.sleep(2.0)
        return status

    def stop(self) -> None:
        stop_processes([process.pid for process in self.processes])
        if self.socket_dir != self.base:
            shutil.rmtree(self.socket_dir, ignore_errors=True)


def undisturbed_loss(run_config: dict) -> float:
    """The final training loss of the same run in process (identical to a deployment without faults)."""
    from flwr.app import Context, RecordDict

    from client_app import app as client_app
    from laq_fl.flower.grid import InProcessGrid
    from laq_fl.flower.serverapp import run_server

    config = {**run_config, "run-name": "undisturbed", "report-every": 1, "checkpoint-every": 0}
    grid = InProcessGrid(client_app, NUM_NODES, config)
    run_server(grid, Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config=config))
    rows, _ = read_results(Path(config["out-dir"]) / "undisturbed.jsonl")
    return rows[-1]["train-loss"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--kill-after", type=int, default=4, help="kill SuperNode 1 once this round is in the results")
    parser.add_argument("--dataset", default="synthetic", choices=("synthetic", "mnist"))
    parser.add_argument("--data-dir", default=os.environ.get("LAQ_FL_DATA_DIR", ""))
    parser.add_argument("--algorithm", default="laq")
    parser.add_argument("--round-timeout", type=float, default=60.0)
    parser.add_argument("--restart-superlink", action="store_true",
                        help="instead of a SuperNode, kill the SuperLink (and the ServerApp) after --kill-after, restart "
                        "it on its database and resume the run from its checkpoint: the result must equal the "
                        "undisturbed run's exactly")
    parser.add_argument("--warm", action="store_true",
                        help="start a warm worker beside each SuperNode (python -m laq_fl.flower.warm_worker) and name "
                        "its socket in the node config, as the README's Deployment recommends")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (logs, certificates, results)")
    args = parser.parse_args()

    base = args.keep or Path(tempfile.mkdtemp(prefix="laqtls"))
    base.mkdir(parents=True, exist_ok=True)
    deployment = None
    summary: dict = {"folder": str(base)}
    started = time.perf_counter()
    try:
        deployment = Deployment(base, warm=args.warm)
        summary["warm-workers"] = args.warm
        nodes = deployment.nodes
        out_dir = base / "out"
        run_config = {
            "algorithm": args.algorithm, "num-clients": NUM_NODES, "rounds": args.rounds, "dataset": args.dataset,
            "out-dir": str(out_dir), "run-name": "deploy", "round-timeout": args.round_timeout,
            "node-wait-timeout": 120.0, "report-every": 1, "t-bar": 2, "lr": 0.01, "checkpoint-every": 2,
        }
        if args.data_dir:
            run_config["data-dir"] = str(Path(args.data_dir).resolve())
        run_id = deployment.submit(run_config)
        summary["run-id"] = run_id
        results = out_dir / "deploy.jsonl"

        killed_at = None
        status = None
        attempts = 0
        deadline = time.monotonic() + 180 + args.rounds * (args.round_timeout + 30)
        while time.monotonic() < deadline:
            rows, _ = read_results(results) if results.exists() else ([], None)
            done = rows[-1]["round"] if rows else -1
            if killed_at is None and done >= args.kill_after and args.restart_superlink:
                deployment.restart_superlink()
                killed_at = done
                summary["failed-run-status"] = deployment.wait(run_id, timeout=120)
                run_id = deployment.submit({**run_config, "resume": True})
                summary["resumed-run-id"] = run_id
                continue
            if killed_at is None and done >= args.kill_after:
                os.killpg(nodes[1].pid, signal.SIGKILL)  # a crash, not a goodbye
                nodes[1].wait()
                killed_at = done
            if killed_at is not None and not args.restart_superlink and nodes[1].poll() is not None:
                # With SuperNode authentication the restarted node keeps its id, and the SuperLink refuses it
                # (exit code 305) until the old connection expired (two missed heartbeats, about 60 s): retry.
                attempts += 1
                nodes[1] = deployment.supernode(1, attempts)
            status = deployment.status(run_id)
            if status and status.startswith("finished"):
                break
            time.sleep(2.0)
        rows, final = read_results(results) if results.exists() else ([], None)
        trained = [row for row in rows if row["round"] > 0]
        seconds = sorted(row["round-seconds"] for row in trained) or [float("nan")]
        summary.update({
            "status": status, "results-status": final and final["status"], "rounds-done": len(trained),
            "killed-after-round": killed_at,
            "restart-attempts": attempts,
            "restores": sum(row.get("restores", 0) for row in trained),
            "resyncs": sum(row.get("resyncs", 0) for row in trained),
            "lost": sum(row.get("lost", 0) for row in trained),
            "unserved-rounds": sum(row.get("unserved", 0) > 0 for row in trained),
            "median-round-seconds": seconds[len(seconds) // 2],
            "final-train-loss": trained[-1]["train-loss"] if trained else None,
        })
        if args.warm:
            logs = [path.read_text(errors="replace") for path in base.glob("warm-worker*.log")]
            summary["warm-worker-replies"] = sum(log.count("warm worker: train handled") for log in logs)
        summary["undisturbed-train-loss"] = undisturbed_loss({**run_config, "out-dir": str(base / "reference")})
        checks = {
            "finished:completed": status == "finished:completed" and summary["results-status"] == "completed",
            "all rounds": len(trained) == args.rounds,
            "killed and restarted": killed_at is not None and killed_at < args.rounds,
            "restarted worker resynced": summary["restores"] + summary["resyncs"] >= 1,
            **({"warm workers served the rounds": summary["warm-worker-replies"] >= (NUM_NODES - 1) * args.rounds}
               if args.warm else {}),
            **({"run failed, then resumed": summary.get("failed-run-status") == "finished:failed",
                "loss equal to the undisturbed run's": summary["final-train-loss"] == summary["undisturbed-train-loss"]}
               if args.restart_superlink else {}),
            "loss within 1e-3": summary["final-train-loss"] is not None
            and abs(summary["final-train-loss"] - summary["undisturbed-train-loss"]) < 1e-3,
        }
        summary["checks"] = checks
        summary["ok"] = all(checks.values())
    except Exception as error:  # noqa: BLE001 - reported in the summary, with the logs' folder
        summary.update(ok=False, error=f"{type(error).__name__}: {error}")
    finally:
        if deployment is not None:
            deployment.stop()
        summary["seconds"] = round(time.perf_counter() - started, 1)
        if args.keep is None and summary.get("ok"):
            shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(summary, indent=2))
    return 0 if summary.get("ok") else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    raise SystemExit(main())
