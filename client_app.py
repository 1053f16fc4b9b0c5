"""Flower ClientApp: one LAQ worker per node (partition from the node config)."""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from laq_fl.flower.client import handle_train

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    return handle_train(msg, context)
