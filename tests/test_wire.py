"""The byte meter equals the size of the protobuf requests a SuperNode exchanges, built the plain way."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.message.message import remove_content_from_message
from flwr.common.serde import message_to_proto
from flwr.proto.fleet_pb2 import PullMessagesResponse, PushMessagesRequest
from flwr.proto.message_pb2 import PullObjectResponse, PushObjectRequest
from flwr.proto.node_pb2 import Node
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree

from laq_fl.flower.wire import WireMeter


def plain_push(message: Message) -> int:
    node = Node(node_id=message.metadata.src_node_id)
    envelope = PushMessagesRequest(
        node=node, messages_list=[message_to_proto(remove_content_from_message(message))],
        message_object_trees=[get_object_tree(message)], clientapp_runtime_list=[0.0],
    ).ByteSize()
    return envelope + sum(
        PushObjectRequest(node=node, run_id=message.metadata.run_id, object_id=oid, object_content=obj.deflate()).ByteSize()
        for oid, obj in get_all_nested_objects(message).items()
    )


def plain_pull(message: Message) -> int:
    envelope = PullMessagesResponse(
        messages_list=[message_to_proto(remove_content_from_message(message))], message_object_trees=[get_object_tree(message)]
    ).ByteSize()
    return envelope + sum(
        PullObjectResponse(object_found=True, object_available=True, object_content=obj.deflate()).ByteSize()
        for obj in get_all_nested_objects(message).values()
    )


@pytest.mark.parametrize("size", [10, 7850, 159010])
@pytest.mark.parametrize("payload", [0, 100, 20000])
def test_meter_matches_plain_protobuf_sizes(task_identity, size: int, payload: int) -> None:
    theta = np.random.default_rng(size).random(size).astype(np.float32)
    shared = ArrayRecord([theta])
    meter = WireMeter()
    for node in (123456789012345, 42):  # two messages sharing theta's record, as in one round
        message = Message(RecordDict({"theta": shared, "i": ConfigRecord({"k": 1, "t": 0.5})}), node, "train", group_id="1")
        message.metadata.__dict__["_message_id"] = str(uuid.uuid4())
        records = {"metrics": MetricRecord({"loss": 0.25})}
        if payload:
            records["upload"] = ConfigRecord({"payload": bytes(payload)})
        reply = Message(RecordDict(records), reply_to=message)
        assert meter.downlink_bytes(message) == plain_pull(message)
        assert meter.uplink_bytes(reply) == plain_push(reply)
