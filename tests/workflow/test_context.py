"""ctx.log, progress, checkpoint and metadata: exactly once across replays; usage errors."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import pytest

from ledgerflow import workflow
from ledgerflow.errors import InvalidArgumentError, WorkflowUsageError
from ledgerflow.ledger import payload_value
from ledgerflow.v1 import ledger_pb2 as pb
from tests.workflow.harness import MemoryLedger, Runner, outcome_name


@workflow.defn
async def chatty(ctx: workflow.Context) -> None:
    ctx.log.info("one %s", "x")
    ctx.log.warn("two\nthree")
    await ctx.step("a", lambda: 1)
    ctx.log.error("")
    ctx.log.warning("%d%%", 5)
    await ctx.step("b", lambda: 2)
    ctx.log.info("last")


async def test_body_lines_are_positional_on_the_workflow_channel() -> None:
    runner = Runner(chatty)
    await runner.run()
    batches = [e.log_appended for e in runner.ledger.of_type("log_appended")]
    assert all(b.channel == workflow.WORKFLOW_LOG_CHANNEL for b in batches)
    offsets = [b.channel_offset for b in batches]
    assert offsets == sorted(offsets)
    assert offsets[0] == 0
    assert runner.ledger.body_lines() == [
        "[info] one x",
        "[warn] two",
        "[warn] three",
        "[error]",
        "[warn] 5%",
        "[info] last",
    ]


async def test_a_replay_sends_no_line_again_that_the_journal_proves_committed() -> None:
    runner = Runner(chatty)
    await runner.run()
    calls = len(runner.ledger.calls)
    await runner.run()
    resent = [e for c in runner.ledger.calls[calls:] for e in c]
    # Only the line after the last step may be resent (positionally deduplicated).
    assert [line for e in resent for line in e.log_appended.lines] == ["[info] last"]
    assert runner.ledger.body_lines()[-1] == "[info] last"
    assert runner.ledger.body_lines().count("[info] last") == 1


async def test_lines_in_a_crashed_invocation_are_stored_once() -> None:
    ledger = MemoryLedger(fail_at=3, fail_mode="after")
    runner = Runner(chatty, ledger)
    with pytest.raises(Exception, match="ack lost"):
        await runner.run()
    ledger.healthy()
    await runner.run()
    baseline = Runner(chatty)
    await baseline.run()
    assert ledger.body_lines() == baseline.ledger.body_lines()


async def test_lines_logged_inside_steps_go_to_the_steps_channel_even_from_a_thread() -> None:
    threads: list[bool] = []

    @workflow.defn
    async def body(ctx: workflow.Context) -> None:
        def sync_step() -> None:
            threads.append(threading.current_thread() is not threading.main_thread())
            ctx.log.info("from a thread")
            ctx.progress(completed=1, total=2)
            ctx.metadata.increment("calls")
            ctx.checkpoint("inside", kind="custom", payload={"k": 1})

        async def async_step() -> None:
            ctx.log.info("from the loop")

        await ctx.step("sync", sync_step)
        await ctx.step("async", async_step)

    runner = Runner(body)
    result = await runner.run()
    assert outcome_name(result) == "completed"
    assert threads == [True]
    assert runner.ledger.lines == [
        ("step:sync", "[info] from a thread"),
        ("step:async", "[info] from the loop"),
    ]
    batches = runner.ledger.of_type("log_appended")
    assert not any(b.log_appended.HasField("channel_offset") for b in batches)
    snapshot = runner.ledger.snapshot
    assert snapshot.steps["sync"].progress.completed == 1
    assert snapshot.steps["sync"].checkpoint_count == 1
    assert snapshot.steps["sync"].last_checkpoint.type == pb.CHECKPOINT_TYPE_CUSTOM
    assert snapshot.metadata["calls"].number_value == 1
    assert not result.metadata_updates, "step-level mutations are sent as events at once"


async def test_progress_and_checkpoints_of_the_body() -> None:
    @workflow.defn
    async def body(ctx: workflow.Context) -> None:
        await ctx.step("import", lambda: None)
        ctx.progress("import", completed=5, total=10, message="halfway")
        ctx.checkpoint("half done")
        ctx.checkpoint("log tail", kind="log_tail", lines=["a", "b"], truncated=True)
        await ctx.step("export", lambda: None)
        ctx.progress("import", completed=10)

    runner = Runner(body)
    await runner.run()
    snapshot = runner.ledger.snapshot
    progress = snapshot.steps["import"].progress
    assert (progress.completed, progress.total, progress.message) == (10, 10, "halfway")
    checkpoints = [e.checkpoint_recorded for e in runner.ledger.of_type("checkpoint_recorded")]
    assert [(c.step_id, c.checkpoint_seq, c.type, c.summary) for c in checkpoints] == [
        ("import", 1, pb.CHECKPOINT_TYPE_SUMMARY, "half done"),
        ("import", 2, pb.CHECKPOINT_TYPE_LOG_TAIL, "log tail"),
    ]
    assert (list(checkpoints[1].lines), checkpoints[1].truncated) == (["a", "b"], True)
    # Held checkpoints travel with the next step's start.
    export_batch = next(
        c for c in runner.ledger.calls if any(e.step_started.step_id == "export" for e in c)
    )
    assert [e.WhichOneof("payload") for e in export_batch][-3:] == [
        "checkpoint_recorded",
        "checkpoint_recorded",
        "step_started",
    ]


async def test_progress_and_checkpoint_need_a_step_outside_steps() -> None:
    @workflow.defn
    async def no_step(ctx: workflow.Context) -> str:
        with pytest.raises(InvalidArgumentError):
            ctx.progress(completed=1)
        with pytest.raises(InvalidArgumentError):
            ctx.checkpoint("nothing yet")
        return "ok"

    assert outcome_name(await Runner(no_step).run()) == "completed"


@workflow.defn
async def metadata_flow(ctx: workflow.Context) -> dict[str, Any]:
    ctx.metadata.set("stage", "start")
    ctx.metadata.increment("count")
    await ctx.step("one", lambda: 1)
    ctx.metadata.increment("count", 2)
    ctx.metadata.append("tags", "a")
    ctx.metadata.append("tags", {"b": 1})
    ctx.metadata.set("parent-key", 1, target="parent")
    view = ctx.metadata.to_dict()
    await ctx.step("two", lambda: 2)
    ctx.metadata.delete("stage")
    ctx.metadata.set("done", True)
    return {
        "view": view,
        "count": ctx.metadata["count"],
        "has_stage": "stage" in ctx.metadata,
        "missing": ctx.metadata.get("missing", "default"),
    }


async def test_metadata_mutations_and_the_bodys_view() -> None:
    runner = Runner(metadata_flow)
    result = await runner.run()
    output = payload_value(result.output)
    assert output == {
        "view": {"stage": "start", "count": 3.0, "tags": ["a", {"b": 1.0}]},
        "count": 3.0,
        "has_stage": False,
        "missing": "default",
    }
    # Mutations before a step go with its start; those after the last step go in the result.
    assert [(m.op, m.key) for m in result.metadata_updates] == [
        (pb.METADATA_OP_REMOVE, "stage"),
        (pb.METADATA_OP_SET, "done"),
    ]
    state = runner.ledger.journal.metadata_state
    assert sorted(state) == ["count", "stage", "tags"]
    parent = [
        m
        for e in runner.ledger.of_type("metadata_updated")
        for m in e.metadata_updated.mutations
        if m.target == pb.METADATA_TARGET_PARENT
    ]
    assert [m.key for m in parent] == ["parent-key"]


async def test_metadata_is_not_applied_twice_by_replays() -> None:
    ledger = MemoryLedger(fail_at=2, fail_mode="after")
    runner = Runner(metadata_flow, ledger)
    with pytest.raises(Exception, match="ack lost"):
        await runner.run()
    ledger.healthy()
    second = await runner.run()
    third = await runner.run()
    assert ledger.journal.metadata_state["count"].number_value == 3
    assert second.metadata_updates == third.metadata_updates
    assert payload_value(second.output) == payload_value(third.output)


async def test_body_only_calls_are_refused_inside_steps() -> None:
    errors: list[str] = []

    @workflow.defn
    async def body(ctx: workflow.Context) -> None:
        async def nested() -> None:
            for call in (
                lambda: ctx.step("inner", lambda: 1),
                ctx.random,
                ctx.uuid4,
                ctx.compensate,
            ):
                try:
                    call()
                except WorkflowUsageError as err:
                    errors.append(str(err).split(" ")[0])

        await ctx.step("outer", nested)

    result = await Runner(body).run()
    assert outcome_name(result) == "completed"
    assert errors == ["ctx.step()", "ctx.random()", "ctx.uuid4()", "ctx.compensate()"]


async def test_ctx_from_a_foreign_thread_is_refused() -> None:
    errors: list[BaseException] = []

    @workflow.defn
    async def body(ctx: workflow.Context) -> None:
        def elsewhere() -> None:
            try:
                ctx.log.info("no")
            except WorkflowUsageError as err:
                errors.append(err)

        thread = threading.Thread(target=elsewhere)
        thread.start()
        await asyncio.to_thread(thread.join)
        await ctx.step("x", lambda: 1)

    await Runner(body).run()
    assert len(errors) == 1


@pytest.mark.parametrize("name", ["", " ", "a#b", "x" * 300])
async def test_bad_step_names_are_refused(name: str) -> None:
    @workflow.defn
    async def body(ctx: workflow.Context) -> str:
        try:
            await ctx.step(name, lambda: 1)
        except InvalidArgumentError:
            return "refused"
        return "accepted"

    result = await Runner(body).run()
    assert payload_value(result.output) == "refused"


async def test_run_may_be_called_once() -> None:
    execution = Runner(metadata_flow).execution()
    await execution.run()
    with pytest.raises(WorkflowUsageError):
        await execution.run()
    assert execution.task_id == "task-1"


async def test_a_thread_outliving_its_step_cannot_write_after_the_result() -> None:
    release = threading.Event()
    finished = threading.Event()

    @workflow.defn
    async def body(ctx: workflow.Context) -> None:
        def stuck() -> None:
            release.wait()
            ctx.log.info("too late")
            finished.set()

        with contextlib.suppress(workflow.StepFailedError):
            await ctx.step("stuck", stuck, timeout=0.001)

    runner = Runner(body)
    result = await runner.run()
    assert outcome_name(result) == "completed"
    calls = len(runner.ledger.calls)
    release.set()
    await asyncio.to_thread(finished.wait)
    await asyncio.sleep(0)
    assert len(runner.ledger.calls) == calls
    assert ("step:stuck", "[info] too late") not in runner.ledger.lines
