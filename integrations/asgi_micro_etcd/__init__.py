"""etcd v3 backends for asgi-micro (``pip install 'asgi-micro[etcd]'``), on aetcd's asyncio client.

``etcd://host:port`` (hosts separated by commas) names the registry (``MICRO_REGISTRY``) and
the locks (``MICRO_SYNC``); ``EtcdSource`` reads config from keys under a prefix.
"""
