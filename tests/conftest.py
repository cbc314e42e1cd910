from __future__ import annotations

import os

# Tests never send mDNS anywhere but loopback, whatever the environment says, and services
# under test keep their records in memory unless a test chooses a store.
os.environ.pop("MICRO_REGISTRY", None)
os.environ["MICRO_STORE"] = "memory://"
