"""A Flower ``Grid`` that delivers messages synchronously to a ``ClientApp`` in this process.

Each node has its own ``Context`` (``partition-id``/``num-partitions`` node config, a persistent
``state``), and every message and reply goes through Flower's real serialisation (deflate to
content-addressed objects and inflate again), so the ServerApp, strategy and ClientApp run as in
a deployment, byte counts included, without Ray or a SuperLink. For tests and fast experiments.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from uuid import uuid4

from flwr.app import Context, Error, Message, MessageType, RecordDict
from flwr.app.user_config import UserConfig
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, no_object_id_recompute
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

ClientCallable = Callable[[Message, Context], Message]


def through_the_wire(message: Message, deflated: dict[str, bytes] | None = None) -> Message:
    """The message as a receiver rebuilds it from its serialised objects.

    ``deflated`` caches serialised objects by id across the messages of one push: object ids are
    content hashes, and Flower's runtime, too, uploads an object shared by several messages (the
    broadcast theta) once. Every receiver still inflates its own copy.
    """
    deflated = {} if deflated is None else deflated
    with no_object_id_recompute():  # as Flower's runtime does when it pushes
        contents = {}
        for object_id, obj in get_all_nested_objects(message).items():
            if object_id not in deflated:
                deflated[object_id] = obj.deflate()
            contents[object_id] = deflated[object_id]
        received = inflate_object_from_contents(message.object_id, contents)
    received.metadata.__dict__["_message_id"] = message.metadata.message_id
    return received


class InProcessGrid(Grid):
    """``num_nodes`` simulated nodes served by ``client_app``: a ``ClientApp``, or a handler callable for ``train``
    messages, in which case ``query`` messages (the server's identify) go to ``query_handler``
    (:func:`laq_fl.flower.client.handle_identify` unless given)."""

    def __init__(
        self,
        client_app: ClientApp | ClientCallable,
        num_nodes: int,
        run_config: UserConfig,
        *,
        run_id: int | None = None,
        seed: int = 0,
        query_handler: ClientCallable | None = None,
    ) -> None:
        rng = random.Random(seed)
        # Full-size ids, as a SuperLink assigns them: they are varints on the wire, so small ids would
        # undercount every message by tens of bytes.
        run_id = rng.getrandbits(63) if run_id is None else run_id
        task_id = rng.getrandbits(63)
        node_ids: list[int] = []
        while len(node_ids) < num_nodes:  # random 63-bit ids, as a SuperLink assigns
            candidate = rng.getrandbits(63)
            if candidate not in node_ids and candidate != SUPERLINK_NODE_ID:
                node_ids.append(candidate)
        self.client_app = client_app
        if query_handler is None and not isinstance(client_app, ClientApp):
            from laq_fl.flower.client import (
                handle_identify,  # the worker's module imports this one's users
            )

            query_handler = handle_identify
        self.query_handler = query_handler
        self.contexts = {
            node_id: Context(
                run_id=run_id,
                node_id=node_id,
                node_config={"partition-id": index, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for index, node_id in enumerate(node_ids)
        }
        self._run = Run.create_empty(run_id)
        self._replies: dict[str, Message] = {}
        # Messages built by the ServerApp take their source ids from the task identity, as in a runtime.
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        TaskIdentity.task_id = task_id

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        message_ids = []
        deflated: dict[str, bytes] = {}
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            self._replies[message.metadata.message_id] = self._deliver(message, deflated)
            message_ids.append(message.metadata.message_id)
        return message_ids

    def _deliver(self, message: Message, deflated: dict[str, bytes]) -> Message:
        received = through_the_wire(message, deflated)
        context = self.contexts.get(message.metadata.dst_node_id)
        if context is None:
            reply = Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason="unknown node"), reply_to=received)
            reply.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
        else:
            try:
                handler = self.client_app
                if self.query_handler is not None and received.metadata.message_type == MessageType.QUERY:
                    handler = self.query_handler
                reply = handler(received, context)
            except Exception as exc:  # noqa: BLE001 - a ClientApp exception becomes an error reply, as in Flower
                reason = f"{type(exc)}:<'{exc}'>"
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=received)
        reply.metadata.__dict__["_message_id"] = str(uuid4())
        return through_the_wire(reply)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(message_id) for message_id in message_ids if message_id in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
