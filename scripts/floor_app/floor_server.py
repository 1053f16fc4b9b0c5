"""Broadcast a p-float array each round and collect replies of the size of a LAQ upload; time the rounds."""

import json
import time

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    expected = int(config["num-clients"])
    while len(list(grid.get_node_ids())) < expected:
        time.sleep(0.5)
    theta = np.zeros(int(config["size"]), np.float32)
    seconds = []
    for server_round in range(1, int(config["rounds"]) + 1):
        started = time.perf_counter()
        record = ArrayRecord([theta])
        messages = [
            Message(RecordDict({"theta": record, "c": ConfigRecord({"bytes": int(config["reply-bytes"])})}), node, MessageType.TRAIN, group_id=str(server_round))
            for node in sorted(grid.get_node_ids())
        ]
        replies = list(grid.send_and_receive(messages))
        assert len(replies) == len(messages) and not any(r.has_error() for r in replies)
        theta = theta + 1.0
        seconds.append(time.perf_counter() - started)
    with open(str(config["out"]), "w") as file:
        json.dump({"round_seconds": seconds}, file)
