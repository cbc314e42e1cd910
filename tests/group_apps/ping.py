"""``ping``, which calls ``pong``: ``asgi-micro run tests/group_apps/ping.py``."""

from tests.group_apps.peers import peer

app = peer("ping", "pong")
