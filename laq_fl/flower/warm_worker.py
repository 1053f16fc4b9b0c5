"""A warm worker: one long-running process per SuperNode that keeps torch, the data and the objective loaded.

Why: Flower 1.42 runs every message a SuperNode receives in a new ``flwr-clientapp`` process (in both isolation
modes: ``subprocess`` starts it itself, ``process`` has a SuperExec start one per message). Flower's warm executors
serve only Kubernetes pods and agent, connector and model tasks, not ClientApps. So every round each node would
import torch (about 3.4 s of CPU here) and open its data again, before doing 0.1 s of arithmetic.

How: the operator starts, beside each SuperNode, ::

    python -m laq_fl.flower.warm_worker --socket /run/laq/node0.sock

and gives the SuperNode ``--node-config '... worker-socket="/run/laq/node0.sock"'`` (the quotes are TOML's: Flower
refuses an unquoted path). The ClientApp (which then
imports only Flower) forwards each message's content, the run and node configs and ``context.state`` over that
Unix socket; the warm worker runs the very handler the ClientApp would run (:mod:`laq_fl.flower.client`) and
sends back the reply's content and the new ``context.state``. The worker keeps nothing between messages but
caches (parsed run configs, data, objectives): the node's state stays in ``context.state``, where Flower keeps it,
so the warm worker can be restarted at any time and replies are bit-identical to the ClientApp's own.

If the socket is missing or the worker does not answer within ``worker-timeout`` seconds (node config; default
half the run's ``round-timeout``), the ClientApp logs a warning and runs the handler itself (slower, same result). An exception in the handler comes back as an error reply, as it would from the ClientApp.

Wire format (both directions, one request per connection): ``b"LAQW1"``, then three frames, each an unsigned
64-bit big-endian length and that many bytes: a JSON header, a Flower ``RecordDict`` protobuf (the message
content) and another (``context.state``). Request header: ``{"kind": "train" | "query", "run_id", "node_id",
"run_config", "node_config"}``; reply header: ``{"ok": true}`` or ``{"ok": false, "error": "..."}``.

The socket is created with mode 0600 (only the user who runs the SuperNode may connect): whoever can connect can
run this project's worker code with any inputs, which is exactly what the SuperNode itself lets the SuperLink do.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable
from logging import INFO, WARNING
from pathlib import Path

from flwr.app import Context, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as RecordDictProto

WORKER_SOCKET_KEY = "worker-socket"
"""The node-config key that names a warm worker's socket."""
WORKER_TIMEOUT_KEY = "worker-timeout"
"""The node-config key for the seconds the ClientApp waits for the warm worker's reply (default: half the run's
``round-timeout``), after which it computes itself, so that a stopped or hung warm worker costs one wait, not the
round."""

MAGIC = b"LAQW1"
CONNECT_TIMEOUT_S = 5.0
REQUEST_READ_TIMEOUT_S = 30.0  # a client that stalls mid-request is dropped after this, never blocking the others
MAX_SOCKET_PATH_BYTES = 107  # sun_path holds 108 bytes with its terminating NUL on Linux
_LENGTH = struct.Struct(">Q")
_MAX_FRAME = 1 << 34  # 16 GiB: far above any model here, low enough to refuse a garbage length at once


class WarmWorkerUnavailable(ConnectionError):
    """The warm worker could not be reached or broke the connection before replying (the caller falls back)."""


class WarmWorkerError(RuntimeError):
    """The handler raised inside the warm worker; the message says what (the ClientApp re-raises it)."""


def _send_frames(connection: socket.socket, header: dict, *blobs: bytes) -> None:
    header_bytes = json.dumps(header).encode()
    parts = [MAGIC]
    for blob in (header_bytes, *blobs):
        parts += [_LENGTH.pack(len(blob)), blob]
    connection.sendall(b"".join(parts))


def _receive_exactly(connection: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view, received = memoryview(buffer), 0
    while received < size:
        count = connection.recv_into(view[received:], size - received)
        if count == 0:
            raise ConnectionError(f"connection closed after {received} of {size} bytes")
        received += count
    return bytes(buffer)


def _receive_frames(connection: socket.socket, count: int) -> tuple[dict, list[bytes]]:
    if _receive_exactly(connection, len(MAGIC)) != MAGIC:
        raise ValueError("not a laq-fl warm worker message (wrong magic bytes)")
    frames = []
    for _ in range(count):
        (length,) = _LENGTH.unpack(_receive_exactly(connection, _LENGTH.size))
        if length > _MAX_FRAME:
            raise ValueError(f"frame of {length} bytes refused")
        frames.append(_receive_exactly(connection, length))
    header = json.loads(frames[0])
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return header, frames[1:]


def _encode(records: RecordDict) -> bytes:
    return recorddict_to_proto(records).SerializeToString()


def _decode(blob: bytes) -> RecordDict:
    return recorddict_from_proto(RecordDictProto.FromString(blob))


def reply_timeout(context: Context) -> float:
    """Seconds to wait for the warm worker's reply: node config ``worker-timeout``, else half the run's
    ``round-timeout`` (600 s when the run config has none), so that computing here after a timeout still fits."""
    configured = context.node_config.get(WORKER_TIMEOUT_KEY)
    if isinstance(configured, (int, float)) and not isinstance(configured, bool) and configured > 0:
        return float(configured)
    round_timeout = context.run_config.get("round-timeout", 600.0)
    if isinstance(round_timeout, bool) or not isinstance(round_timeout, (int, float)) or not round_timeout > 0:
        round_timeout = 600.0
    return float(round_timeout) / 2


def forward(socket_path: str, message: Message, context: Context, timeout: float | None = None) -> Message:
    """Have the warm worker at ``socket_path`` handle ``message``; returns the reply and updates ``context.state``.

    ``timeout``: seconds to wait for the reply (default :func:`reply_timeout`). Raises :class:`WarmWorkerUnavailable`
    when no worker answers there in time (nothing changed: the caller may run the handler itself; whatever the
    worker computes later is discarded, since the node's state travels only in replies) and
    :class:`WarmWorkerError` when the handler raised there.
    """
    kind = message.metadata.message_type
    header = {"kind": kind, "run_id": context.run_id, "node_id": context.node_id,
              "run_config": dict(context.run_config), "node_config": dict(context.node_config)}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(CONNECT_TIMEOUT_S)
            connection.connect(socket_path)
            connection.settimeout(reply_timeout(context) if timeout is None else timeout)
            _send_frames(connection, header, _encode(message.content), _encode(context.state))
            reply_header, (content, state) = _receive_frames(connection, 3)
    except (OSError, ValueError) as error:
        raise WarmWorkerUnavailable(f"no warm worker answered at {socket_path}: {error}") from error
    if not reply_header.get("ok"):
        raise WarmWorkerError(f"the warm worker at {socket_path} failed: {reply_header.get('error')}")
    context.state = _decode(state)
    return Message(_decode(content), reply_to=message)


def dispatch(message: Message, context: Context, local_handler: Callable[[], Callable[[Message, Context], Message]]
             ) -> Message:
    """The ClientApp's handler: forward to the node's warm worker when ``worker-socket`` names one, else (or when it
    does not answer) run ``local_handler()``'s handler here. ``local_handler`` is called only then, so that a node
    served by a warm worker never imports torch."""
    socket_path = context.node_config.get(WORKER_SOCKET_KEY)
    if socket_path:
        try:
            return forward(str(socket_path), message, context)
        except WarmWorkerUnavailable as error:
            log(WARNING, "%s; running the worker in this process instead (slower, same result)", error)
    return local_handler()(message, context)


def _handlers() -> dict[str, Callable[[RecordDict, Context], RecordDict]]:
    from laq_fl.flower.client import identity_reply_content, train_reply_content  # torch loads here, once

    return {MessageType.TRAIN: train_reply_content,
            MessageType.QUERY: lambda _content, context: identity_reply_content(context)}


class _RequestHandler(socketserver.BaseRequestHandler):
    handlers: dict[str, Callable[[RecordDict, Context], RecordDict]] = {}

    def handle(self) -> None:
        started = time.perf_counter()
        try:
            self.request.settimeout(REQUEST_READ_TIMEOUT_S)
            header, (content, state) = _receive_frames(self.request, 3)
            self.request.settimeout(None)
        except (OSError, ValueError) as error:
            log(WARNING, "warm worker: dropped a malformed request: %s", error)
            return
        try:
            if header.get("kind") not in self.handlers:
                raise ValueError(f"unknown message kind {header.get('kind')!r}")
            handler = self.handlers[header["kind"]]
            context = Context(run_id=int(header["run_id"]), node_id=int(header["node_id"]),
                              node_config=header["node_config"], state=_decode(state),
                              run_config=header["run_config"])
            with self.server.compute_lock:  # one computation at a time: they share torch's threads and the caches
                reply = handler(_decode(content), context)
            _send_frames(self.request, {"ok": True}, _encode(reply), _encode(context.state))
            self.server.handled += 1
        except Exception as error:  # noqa: BLE001 - the ClientApp turns it into Flower's error reply
            log(WARNING, "warm worker: %s request failed: %r", header.get("kind"), error)
            try:
                _send_frames(self.request, {"ok": False, "error": f"{type(error).__name__}: {error}"}, b"", b"")
            except OSError:
                pass
            return
        log(INFO, "warm worker: %s handled in %.3f s", header["kind"], time.perf_counter() - started)


class WarmWorkerServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Serves a Unix socket (mode 0600), reading each connection in its own thread and computing one request at a
    time; :meth:`serve_forever` until shut down. Refuses a path where another warm worker answers, and on close
    removes the socket only if it is still its own."""

    daemon_threads = True

    def __init__(self, socket_path: str | os.PathLike) -> None:
        path = Path(socket_path)
        self.path, self._inode = path, None
        if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
            raise ValueError(f"socket path {path} is {len(os.fsencode(path))} bytes; Unix sockets allow at most "
                             f"{MAX_SOCKET_PATH_BYTES}: choose a shorter --socket")
        if path.exists() or path.is_symlink():
            if not path.is_socket():
                raise FileExistsError(f"{path} exists and is not a socket; choose another --socket")
            if _answers(path):
                raise FileExistsError(f"a warm worker already serves {path}; stop it first or choose another --socket")
            path.unlink()  # a stale socket of a worker that died
        path.parent.mkdir(parents=True, exist_ok=True)
        _RequestHandler.handlers = _handlers()
        self.compute_lock = threading.Lock()
        self.handled = 0
        """Requests answered with a reply (not counting failed or malformed ones)."""
        old_umask = os.umask(0o177)
        try:
            super().__init__(str(path), _RequestHandler)
        finally:
            os.umask(old_umask)
        self._inode = _identity(path)

    def server_close(self) -> None:
        super().server_close()
        try:
            if self._inode is not None and _identity(self.path) == self._inode:
                self.path.unlink()  # ours: a successor's socket at the same path is left alone
        except FileNotFoundError:
            pass


def _identity(path: Path) -> tuple[int, int, int]:
    # The inode number alone is reused at once on tmpfs; with the change time it names this very socket.
    stat = path.stat()
    return stat.st_dev, stat.st_ino, stat.st_ctime_ns


def _answers(path: Path) -> bool:
    """Whether a process accepts connections on the Unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(CONNECT_TIMEOUT_S)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m laq_fl.flower.warm_worker",
        description="Serve a SuperNode's LAQ worker from one long-running process (see the README's Deployment).")
    parser.add_argument("--socket", required=True,
                        help="Unix socket path; give the SuperNode --node-config 'worker-socket=\"<path>\" ...'")
    args = parser.parse_args(argv)
    try:
        server = WarmWorkerServer(args.socket)
    except (OSError, ValueError) as error:
        parser.error(str(error))  # exits 2 with the reason

    def stop(_signal: int, _frame: object) -> None:
        raise SystemExit(0)  # leaves serve_forever through the finally below, which removes the socket

    signal.signal(signal.SIGTERM, stop)
    log(INFO, "warm worker: serving on %s", args.socket)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
