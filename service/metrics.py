"""Prometheus metrics (in progress: being written by the deployment work, issue 5)."""


def init_app(app):  # replaced by the deployment work
    return None
