"""Services that the identity tests run in processes of their own (``asgi-micro run``)."""
