from __future__ import annotations

import os

# Tests never send mDNS anywhere but loopback, whatever the environment says.
os.environ.pop("MICRO_REGISTRY", None)
