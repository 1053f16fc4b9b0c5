"""Reply at once with a payload of the requested size: no computation, only Flower's messaging."""

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    (theta,) = msg.content["theta"].to_numpy_ndarrays()
    size = int(msg.content["c"]["bytes"])
    content = RecordDict({"metrics": MetricRecord({"loss": float(theta[0])}), "upload": ConfigRecord({"payload": bytes(size)})})
    return Message(content, reply_to=msg)
