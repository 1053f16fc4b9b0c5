"""Flower ServerApp: LAQ and its family (see laq_fl.config.ALGORITHMS), configured by the run config."""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from laq_fl.flower.serverapp import run_server

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_server(grid, context)
