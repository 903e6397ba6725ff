"""Start, inspect, watch, signal and cancel runs on a ledgerflow coordinator.

``Client`` is for asyncio code; ``SyncClient`` is the same API, blocking. Both raise
only :mod:`ledgerflow.errors` types. ``start`` returns a ``RunHandle`` (``SyncRunHandle``)
to wait for a run's result, watch, signal or cancel it.
"""

from ledgerflow.client._async import Client, RunHandle
from ledgerflow.client._requests import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_RPC_TIMEOUT,
    EventsPage,
    ListRunsPage,
    RunStatusLike,
    StartRunResult,
)
from ledgerflow.client._sync import SyncClient, SyncRunHandle

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_RPC_TIMEOUT",
    "Client",
    "EventsPage",
    "ListRunsPage",
    "RunHandle",
    "RunStatusLike",
    "StartRunResult",
    "SyncClient",
    "SyncRunHandle",
]
