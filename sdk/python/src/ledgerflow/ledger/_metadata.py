"""Applying metadata mutations to a run's metadata map.

The reference executor emits ``set / increment / append / remove`` mutations
without fixing what happens on a type clash; ledgerflow chooses the reading a
user of a counter or a list expects and never fails (a fold must be total):
incrementing a missing or non-numeric value starts from 0, appending to a
missing value starts an empty list, appending to a non-list wraps it first.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping

from google.protobuf.struct_pb2 import Value

from ledgerflow.v1 import ledger_pb2 as pb

_SELF_TARGETS = (pb.METADATA_TARGET_UNSPECIFIED, pb.METADATA_TARGET_SELF)


def apply_metadata_mutations(
    metadata: MutableMapping[str, Value], mutations: Iterable[pb.MetadataMutation]
) -> None:
    """Apply the mutations that target the run itself to ``metadata``, in order.

    Mutations targeting the parent or root run are facts for those runs; the
    coordinator forwards them, so they do not change this run's map.

    Args:
        metadata: The map to change in place (a proto map field).
        mutations: The mutations, in ledger order.
    """
    for m in mutations:
        if m.target not in _SELF_TARGETS:
            continue
        if m.op == pb.METADATA_OP_SET:
            metadata[m.key].CopyFrom(m.value)
        elif m.op == pb.METADATA_OP_REMOVE:
            if m.key in metadata:
                del metadata[m.key]
        elif m.op == pb.METADATA_OP_INCREMENT:
            current = metadata.get(m.key)
            base = (
                current.number_value
                if current is not None and current.WhichOneof("kind") == "number_value"
                else 0.0
            )
            step = m.value.number_value if m.value.WhichOneof("kind") == "number_value" else 0.0
            metadata[m.key].number_value = base + step
        elif m.op == pb.METADATA_OP_APPEND:
            entry = metadata[m.key]
            if entry.WhichOneof("kind") != "list_value":
                previous = Value()
                previous.CopyFrom(entry)
                entry.list_value.SetInParent()
                if previous.WhichOneof("kind") is not None:
                    entry.list_value.values.add().CopyFrom(previous)
            entry.list_value.values.add().CopyFrom(m.value)
