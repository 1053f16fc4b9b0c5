"""Flower ClientApp: one LAQ worker per node (partition from the node config).

A node whose node config names a ``worker-socket`` forwards each message to its warm worker
(:mod:`laq_fl.flower.warm_worker`, which keeps torch and the data loaded between messages); this process then
never imports torch. Without one, the handler runs here.
"""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from laq_fl.flower.warm_worker import dispatch

app = ClientApp()


def _train_handler():
    from laq_fl.flower.client import handle_train

    return handle_train


def _identify_handler():
    from laq_fl.flower.client import handle_identify

    return handle_identify


@app.train()
def train(msg: Message, context: Context) -> Message:
    return dispatch(msg, context, _train_handler)


@app.query()
def identify(msg: Message, context: Context) -> Message:
    return dispatch(msg, context, _identify_handler)
