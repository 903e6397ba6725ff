"""Start, inspect, watch, signal and cancel runs on a ledgerflow coordinator.

``Client`` is for asyncio code; ``SyncClient`` is the same API, blocking. Both raise
only :mod:`ledgerflow.errors` types.
"""

from ledgerflow.client._async import Client
from ledgerflow.client._requests import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_RPC_TIMEOUT,
    EventsPage,
    ListRunsPage,
    RunStatusLike,
    StartRunResult,
)
from ledgerflow.client._sync import SyncClient

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_RPC_TIMEOUT",
    "Client",
    "EventsPage",
    "ListRunsPage",
    "RunStatusLike",
    "StartRunResult",
    "SyncClient",
]
