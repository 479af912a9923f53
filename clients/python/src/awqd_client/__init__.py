"""Python client for awqd: `AwqdClient` over gRPC, and the `awqctl` CLI (awqd_client.cli)."""

from awqd_client.client import AwqdClient
from awqd_client.errors import AwqdError

__all__ = ["AwqdClient", "AwqdError"]
