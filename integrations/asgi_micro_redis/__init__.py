"""The redis backends of asgi-micro."""
