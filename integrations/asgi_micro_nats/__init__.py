"""The nats backends of asgi-micro."""
