"""Run status normalisation and the terminal set."""

from __future__ import annotations

from ledgerflow.v1 import ledger_pb2 as pb

# JavaScript's String.prototype.trim() whitespace: WhiteSpace and LineTerminator
# code points. Python's str.strip() differs (it strips \x1c-\x1f and \x85 and
# keeps \ufeff), so trimming log lines and names with it would break agreement
# with the reference on those characters.
JS_WHITESPACE = (
    "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
)

TERMINAL_STATUSES: frozenset[pb.RunStatus.ValueType] = frozenset(
    {
        pb.RUN_STATUS_COMPLETED,
        pb.RUN_STATUS_FAILED,
        pb.RUN_STATUS_CANCELLED,
        pb.RUN_STATUS_TERMINATED,
        pb.RUN_STATUS_TIMED_OUT,
    }
)

_STATUS_ALIASES: dict[str, pb.RunStatus.ValueType] = {
    "queued": pb.RUN_STATUS_QUEUED,
    "pending": pb.RUN_STATUS_QUEUED,
    "running": pb.RUN_STATUS_RUNNING,
    "started": pb.RUN_STATUS_RUNNING,
    "waiting": pb.RUN_STATUS_WAITING,
    "completed": pb.RUN_STATUS_COMPLETED,
    "complete": pb.RUN_STATUS_COMPLETED,
    "succeeded": pb.RUN_STATUS_COMPLETED,
    "failed": pb.RUN_STATUS_FAILED,
    "error": pb.RUN_STATUS_FAILED,
    "cancelled": pb.RUN_STATUS_CANCELLED,
    "canceled": pb.RUN_STATUS_CANCELLED,
    "terminated": pb.RUN_STATUS_TERMINATED,
    "timed_out": pb.RUN_STATUS_TIMED_OUT,
    "timeout": pb.RUN_STATUS_TIMED_OUT,
}

# The lower-case words the reference uses for statuses, e.g. in anomaly lines.
STATUS_WORDS: dict[pb.RunStatus.ValueType, str] = {
    pb.RUN_STATUS_UNSPECIFIED: "unknown",
    pb.RUN_STATUS_QUEUED: "queued",
    pb.RUN_STATUS_RUNNING: "running",
    pb.RUN_STATUS_WAITING: "waiting",
    pb.RUN_STATUS_COMPLETED: "completed",
    pb.RUN_STATUS_FAILED: "failed",
    pb.RUN_STATUS_CANCELLED: "cancelled",
    pb.RUN_STATUS_TERMINATED: "terminated",
    pb.RUN_STATUS_TIMED_OUT: "timed_out",
    pb.RUN_STATUS_UNKNOWN: "unknown",
}


def js_trim(text: str) -> str:
    """Trim ``text`` exactly as JavaScript's ``String.prototype.trim`` does."""
    return text.strip(JS_WHITESPACE)


def normalize_status(text: str) -> pb.RunStatus.ValueType:
    """Map a producer's free-text status to a RunStatus.

    Case and surrounding whitespace are ignored; aliases such as ``pending``,
    ``succeeded``, ``canceled`` and ``timeout`` are understood; anything else
    is ``RUN_STATUS_UNKNOWN``.

    Args:
        text: The status as the producer reported it.

    Returns:
        The normalised status.
    """
    return _STATUS_ALIASES.get(js_trim(text).lower(), pb.RUN_STATUS_UNKNOWN)


def is_terminal(status: pb.RunStatus.ValueType) -> bool:
    """Return whether ``status`` is one of the five terminal statuses."""
    return status in TERMINAL_STATUSES
