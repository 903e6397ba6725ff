"""A held task's bookkeeping: when it takes one of the worker's slots."""

from __future__ import annotations

from ledgerflow.v1 import workflow_pb2
from ledgerflow.worker._task import Phase, TaskState


def takes_a_slot(state: TaskState) -> bool:
    # A call, not the attribute: mypy would narrow `state.active` across the asserts.
    return state.active


async def test_a_result_ack_frees_the_tasks_slot_at_once() -> None:
    state = TaskState(workflow_pb2.WorkflowTask(task_id="t", lease_epoch=1), Phase.RUNNING)
    assert takes_a_slot(state)
    acked = state.report(workflow_pb2.WorkflowTaskResult(task_id="t", lease_epoch=1))
    assert takes_a_slot(state)  # the result may still need resending
    state.result_acknowledged()
    # Free before the coroutine awaiting the ack runs again: the coordinator may send the
    # next task right behind the ack (the load benchmark saw such tasks handed back).
    assert acked.done()
    assert not takes_a_slot(state)
    assert state.phase is Phase.REPORTING
