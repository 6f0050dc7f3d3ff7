"""Gunicorn config for running by hand: `gunicorn -c deploy/gunicorn.conf.py` (the app is set as wsgi_app).

The settings live in the package (service/gunicorn_conf.py) so an installed service finds them without this file;
`msk-cds serve --production` uses the same module.
"""
from service.gunicorn_conf import *  # noqa: F401,F403
from service.gunicorn_conf import child_exit, on_exit, post_fork, pre_fork, when_ready  # noqa: F401  (hooks by name)
