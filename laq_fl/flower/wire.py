"""Bytes a message costs on the wire, from Flower's own serialisation.

A Flower message travels as an envelope (the message without content, plus its object tree)
and one request per content-addressed object (RecordDict, records, arrays, chunks). These
functions add up the protobuf sizes of exactly those requests, as a SuperNode sends them
(uplink: ``PushMessages`` + ``PushObject``) and receives them (downlink: ``PullMessages`` + ``PullObject``).
gRPC/HTTP2 framing (a few bytes per request) is not included.
"""

from __future__ import annotations

from flwr.app import Message
from flwr.app.message.message import remove_content_from_message
from flwr.common.serde import message_to_proto
from flwr.proto.fleet_pb2 import PullMessagesResponse, PushMessagesRequest
from flwr.proto.message_pb2 import PullObjectResponse, PushObjectRequest
from flwr.proto.node_pb2 import Node
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree


def uplink_bytes(message: Message) -> int:
    """Bytes a SuperNode pushes for this reply."""
    node = Node(node_id=message.metadata.src_node_id)
    envelope = PushMessagesRequest(
        node=node,
        messages_list=[message_to_proto(remove_content_from_message(message))],
        message_object_trees=[get_object_tree(message)],
        clientapp_runtime_list=[0.0],
    ).ByteSize()
    objects = get_all_nested_objects(message)
    return envelope + sum(
        PushObjectRequest(
            node=node, run_id=message.metadata.run_id, object_id=object_id, object_content=obj.deflate()
        ).ByteSize()
        for object_id, obj in objects.items()
    )


def downlink_bytes(message: Message) -> int:
    """Bytes a SuperNode pulls to receive this instruction."""
    envelope = PullMessagesResponse(
        messages_list=[message_to_proto(remove_content_from_message(message))],
        message_object_trees=[get_object_tree(message)],
    ).ByteSize()
    objects = get_all_nested_objects(message)
    return envelope + sum(
        PullObjectResponse(object_found=True, object_available=True, object_content=obj.deflate()).ByteSize()
        for obj in objects.values()
    )
