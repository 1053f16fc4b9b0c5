"""Bytes a message costs on the wire, from Flower's own serialisation.

A Flower message travels as an envelope (the message without content, plus its object tree)
and one request per content-addressed object (RecordDict, records, arrays, chunks). These
functions add up the protobuf sizes of exactly those requests, as a SuperNode sends them
(uplink: ``PushMessages`` + ``PushObject``) and receives them (downlink: ``PullMessages`` + ``PullObject``).
gRPC/HTTP2 framing (a few bytes per request) is not included.

Each distinct object is deflated once per :class:`WireMeter` (the broadcast theta is one object
shared by every message of a round), and object ids are not recomputed, as in Flower's runtime.
"""

from __future__ import annotations

from flwr.app import Message
from flwr.app.message.message import remove_content_from_message
from flwr.common.serde import message_to_proto
from flwr.proto.fleet_pb2 import PullMessagesResponse, PushMessagesRequest
from flwr.proto.message_pb2 import PullObjectResponse, PushObjectRequest
from flwr.proto.node_pb2 import Node
from flwr.supercore.inflatable.inflatable_object import (
    get_all_nested_objects,
    get_object_tree,
    no_object_id_recompute,
)

_BYTES_FIELD_TAG = 1  # object_content's field number is below 16: a one-byte tag


def _varint_size(value: int) -> int:
    size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


def _with_content(base_size: int, content_size: int) -> int:
    """Protobuf size of a message once a non-empty bytes field of ``content_size`` is added to it."""
    return base_size + _BYTES_FIELD_TAG + _varint_size(content_size) + content_size


class WireMeter:
    """Measures messages, deflating each distinct object only once."""

    def __init__(self) -> None:
        self._content_sizes: dict[str, int] = {}

    def _objects(self, message: Message) -> dict[str, int]:
        sizes = {}
        for object_id, obj in get_all_nested_objects(message).items():
            if object_id not in self._content_sizes:
                self._content_sizes[object_id] = len(obj.deflate())
            sizes[object_id] = self._content_sizes[object_id]
        return sizes

    def uplink_bytes(self, message: Message) -> int:
        """Bytes a SuperNode pushes for this reply."""
        with no_object_id_recompute():
            node = Node(node_id=message.metadata.src_node_id)
            envelope = PushMessagesRequest(
                node=node,
                messages_list=[message_to_proto(remove_content_from_message(message))],
                message_object_trees=[get_object_tree(message)],
                clientapp_runtime_list=[0.0],
            ).ByteSize()
            run_id = message.metadata.run_id
            return envelope + sum(
                _with_content(PushObjectRequest(node=node, run_id=run_id, object_id=object_id).ByteSize(), size)
                for object_id, size in self._objects(message).items()
            )

    def downlink_bytes(self, message: Message) -> int:
        """Bytes a SuperNode pulls to receive this instruction."""
        with no_object_id_recompute():
            envelope = PullMessagesResponse(
                messages_list=[message_to_proto(remove_content_from_message(message))],
                message_object_trees=[get_object_tree(message)],
            ).ByteSize()
            base = PullObjectResponse(object_found=True, object_available=True).ByteSize()
            return envelope + sum(_with_content(base, size) for size in self._objects(message).values())


def uplink_bytes(message: Message) -> int:
    """Bytes a SuperNode pushes for this reply."""
    return WireMeter().uplink_bytes(message)


def downlink_bytes(message: Message) -> int:
    """Bytes a SuperNode pulls to receive this instruction."""
    return WireMeter().downlink_bytes(message)
