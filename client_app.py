"""Flower ClientApp: one LAQ worker per node (partition from the node config)."""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from laq_fl.flower.client import handle_identify, handle_train

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    return handle_train(msg, context)


@app.query()
def identify(msg: Message, context: Context) -> Message:
    return handle_identify(msg, context)
