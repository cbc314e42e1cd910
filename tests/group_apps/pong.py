"""``pong``, which calls ``ping``: ``asgi-micro run tests/group_apps/pong.py``."""

from tests.group_apps.peers import peer

app = peer("pong", "ping")
