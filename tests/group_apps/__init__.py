"""Two services that call each other, for ``tests/test_group.py``: ``ping`` and ``pong``."""
