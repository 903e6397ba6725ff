// Client against a real `ledgerflow server` subprocess on SQLite. The runs are producer runs:
// no worker serves their workflow, so the test reports their facts through AppendEvents the
// way an external producer would (docs/coordinator.md).
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { type MessageInitShape, create } from "@bufbuild/protobuf";

import {
  Client,
  type LedgerEvent,
  LedgerEventSchema,
  type RunSnapshot,
  RunStatus,
  StepStatus,
  FailedPreconditionError,
  RunCancelledError,
  RunEndedError,
  RunFailedError,
  RunNotFoundError,
  RunAlreadyExistsError,
  jsonPayload,
  timestampFromDate,
} from "../src/index.js";
import { type Server, startServer } from "./support/server.js";

let server: Server;
let client: Client;
let batchNo = 0;

before(async () => {
  server = await startServer();
  client = Client.connect(server.address);
});

after(async () => {
  client.close();
  await server.stop();
});

function event(runId: string, payload: MessageInitShape<typeof LedgerEventSchema>["payload"]): LedgerEvent {
  return create(LedgerEventSchema, { runId, eventTime: timestampFromDate(new Date()), payload });
}

async function append(...events: LedgerEvent[]): Promise<void> {
  batchNo += 1;
  await client.runs.appendEvents({ batchId: `batch-${batchNo}`, events });
}

/** Collects a watch in the background; resolves with every snapshot once the run is terminal. */
function collect(runId: string): Promise<RunSnapshot[]> {
  return (async () => {
    const seen: RunSnapshot[] = [];
    for await (const snapshot of client.watch(runId)) seen.push(snapshot);
    return seen;
  })();
}

describe("Client against ledgerflow server", () => {
  test("start is idempotent by run id and by idempotency key", async () => {
    const first = await client.start("producer.demo", { n: 1 }, { runId: "run-idem" });
    assert.equal(first.created, true);
    assert.equal(first.runId, "run-idem");
    assert.equal(first.snapshot.status, RunStatus.QUEUED);
    const again = await client.start("producer.demo", { n: 1 }, { runId: "run-idem" });
    assert.equal(again.created, false);

    const keyed = await client.start("producer.demo", null, { idempotencyKey: "key-1" });
    const keyedAgain = await client.start("producer.demo", null, { idempotencyKey: "key-1" });
    assert.equal(keyedAgain.runId, keyed.runId);
    assert.equal(keyedAgain.created, false);

    await assert.rejects(client.start("other.workflow", null, { runId: "run-idem" }), RunAlreadyExistsError);
  });

  test("start places the run in the namespace asked for, default otherwise", async () => {
    const placed = await client.start("producer.demo", null, { namespace: "tenant-a" });
    assert.equal(placed.snapshot.namespace, "tenant-a");
    const defaulted = await client.start("producer.demo", null);
    assert.equal(defaulted.snapshot.namespace, "default");
  });

  test("a producer run is watched to completion and its result returned", async () => {
    const runId = "run-producer";
    await client.start("producer.demo", { items: 2 }, { runId });
    const watched = collect(runId);
    const result = client.result<{ loaded: number }>(runId);

    await append(
      event(runId, { case: "runStarted", value: {} }),
      event(runId, { case: "stepStarted", value: { stepId: "load" } }),
    );
    await append(
      event(runId, {
        case: "logAppended",
        value: { lines: ["loading 1", "loading 1", "loading 2"], channel: "producer", channelOffset: 0n },
      }),
      event(runId, { case: "stepProgress", value: { stepId: "load", progress: { completed: 2n, total: 2n } } }),
      event(runId, { case: "stepCompleted", value: { stepId: "load" } }),
      event(runId, { case: "runCompleted", value: { result: jsonPayload({ loaded: 2 }) } }),
    );

    assert.deepEqual(await result, { loaded: 2 });
    const snapshots = await watched;
    const last = snapshots.at(-1)!;
    assert.equal(last.status, RunStatus.COMPLETED);
    assert.equal(last.steps["load"]?.status, StepStatus.COMPLETED);
    assert.deepEqual(last.logTail, ["loading 1", "loading 1", "loading 2"]);
    assert.equal(last.totalLogCount, 3n);
    // The first snapshot is the run as it was when the watch began: not yet finished.
    assert.notEqual(snapshots[0]!.status, RunStatus.COMPLETED);
    // Snapshots only move forward.
    for (let i = 1; i < snapshots.length; i++) {
      assert.ok(snapshots[i]!.lastSeq > snapshots[i - 1]!.lastSeq);
    }

    const lines = [];
    for await (const line of client.tailLogs(runId)) lines.push([line.seq, line.channel, line.text]);
    assert.deepEqual(lines, [
      [1n, "producer", "loading 1"],
      [2n, "producer", "loading 1"],
      [3n, "producer", "loading 2"],
    ]);
    const fromTwo = [];
    for await (const line of client.tailLogs(runId, { fromSeq: 2, follow: true })) fromTwo.push(line.text);
    assert.deepEqual(fromTwo, ["loading 1", "loading 2"]);
  });

  test("a positional resend is ingested once", async () => {
    const runId = "run-resend";
    await client.start("producer.demo", null, { runId });
    const logs = (lines: string[], offset: bigint) =>
      event(runId, { case: "logAppended", value: { lines, channel: "c", channelOffset: offset } });
    await append(logs(["a", "b"], 0n));
    await append(logs(["a", "b", "c"], 0n)); // overlaps: only "c" is new
    const snapshot = await client.getRun(runId);
    assert.deepEqual(snapshot.logTail, ["a", "b", "c"]);
  });

  test("tailLogs with follow ends when the run ends", async () => {
    const runId = "run-follow";
    await client.start("producer.demo", null, { runId });
    const tailed = (async () => {
      const texts: string[] = [];
      for await (const line of client.tailLogs(runId, { follow: true })) texts.push(line.text);
      return texts;
    })();
    await append(event(runId, { case: "logAppended", value: { lines: ["one"], channel: "c", channelOffset: 0n } }));
    await append(
      event(runId, { case: "logAppended", value: { lines: ["two"], channel: "c", channelOffset: 1n } }),
      event(runId, { case: "runCompleted", value: {} }),
    );
    assert.deepEqual(await tailed, ["one", "two"]);
  });

  test("result throws RunFailedError with the run's error", async () => {
    const runId = "run-failed";
    await client.start("producer.demo", null, { runId });
    const failed = assert.rejects(client.result(runId), (err: unknown) => {
      assert.ok(err instanceof RunFailedError);
      assert.ok(err instanceof RunEndedError);
      assert.equal(err.error?.message, "disk full");
      assert.equal(err.snapshot.status, RunStatus.FAILED);
      return true;
    });
    await append(event(runId, { case: "runFailed", value: { error: { message: "disk full", type: "IOError" } } }));
    await failed;
  });

  test("cancel records the request once; the producer ends the run cancelled", async () => {
    const runId = "run-cancel";
    await client.start("producer.demo", null, { runId });
    const first = await client.cancel(runId, { reason: "user asked" });
    assert.equal(first.alreadyRequested, false);
    const second = await client.cancel(runId, { reason: "again" });
    assert.equal(second.alreadyRequested, true);
    const snapshot = await client.getRun(runId);
    assert.equal(snapshot.cancelRequested, true);
    assert.equal(snapshot.cancelReason, "user asked");

    await append(event(runId, { case: "runCancelled", value: { error: { message: "user asked" } } }));
    await assert.rejects(client.result(runId), RunCancelledError);
  });

  test("signal is deduplicated by request id", async () => {
    const runId = "run-signal";
    await client.start("producer.demo", null, { runId });
    const first = await client.signal(runId, "approve", { ok: true }, { requestId: "req-1" });
    const again = await client.signal(runId, "approve", { ok: true }, { requestId: "req-1" });
    assert.equal(first.duplicate, false);
    assert.equal(again.duplicate, true);
    assert.equal(again.seq, first.seq);
  });

  test("signal and cancel on a finished run are FailedPreconditionError", async () => {
    const runId = "run-finished";
    await client.start("producer.demo", null, { runId });
    await append(event(runId, { case: "runCompleted", value: {} }));
    await assert.rejects(client.signal(runId, "late"), FailedPreconditionError);
    await assert.rejects(client.cancel(runId), FailedPreconditionError);
  });

  test("an unknown run is RunNotFoundError", async () => {
    await assert.rejects(client.getRun("no-such-run"), RunNotFoundError);
    await assert.rejects(client.result("no-such-run"), RunNotFoundError);
  });
});
