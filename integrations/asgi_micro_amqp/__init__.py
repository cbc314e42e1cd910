"""The amqp backends of asgi-micro."""
