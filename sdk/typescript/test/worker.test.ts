// StepWorker against a scripted coordinator (test/support/scripted-coordinator.ts): a real
// gRPC server on a loopback port whose replies each test writes, so every protocol step of
// docs/worker-protocol.md ("Step tasks") is checked on the wire.
import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, test } from "node:test";

import { type MessageInitShape, create } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";

import {
  CheckpointMode,
  CheckpointType,
  type EventBatch,
  type LedgerEvent,
  StepAbortedError,
  type StepContext,
  StepOutcome,
  StepRequestSchema,
  StepWorker,
  type StepWorkerOptions,
  TaskRejectReason,
  WorkerRefusedError,
  durationFromNanos,
  jsonPayload,
  payloadValue,
} from "../src/index.js";
import { ScriptedCoordinator, type ScriptedStream } from "./support/scripted-coordinator.js";

let coordinator: ScriptedCoordinator;
let workers: { worker: StepWorker; running: Promise<void> }[];

beforeEach(async () => {
  coordinator = await ScriptedCoordinator.start();
  workers = [];
});

afterEach(async () => {
  for (const { worker, running } of workers) {
    worker.drain(0); // whatever a test left running is handed back at once
    await running.catch(() => {});
  }
  await coordinator.close();
});

/** A promise the test resolves: handlers wait on gates instead of sleeping. */
function gate<T = void>() {
  let open!: (value: T) => void;
  const promise = new Promise<T>((resolve) => (open = resolve));
  return { promise, open };
}

function startWorker(options: Partial<StepWorkerOptions> & Pick<StepWorkerOptions, "steps">) {
  const errors: unknown[] = [];
  const worker = new StepWorker({
    address: coordinator.address,
    kinds: ["images"],
    handleSignals: false,
    reconnect: { initialMs: 1, maxMs: 5 },
    onError: (err: unknown) => errors.push(err),
    ...options,
  });
  const running = worker.run();
  workers.push({ worker, running });
  return { worker, running, errors };
}

// Heartbeats are far apart unless a test wants them, so they never interleave by accident.
const QUIET = { heartbeatInterval: durationFromNanos(3_600_000_000_000n), leaseDuration: durationFromNanos(10_000_000_000n) };

async function welcome(stream: ScriptedStream) {
  const hello = await stream.expect("hello");
  stream.send({ case: "welcome", value: { sessionId: "s1", coordinatorId: "scripted", ...QUIET } });
  return hello;
}

type StepRequestInit = Exclude<MessageInitShape<typeof StepRequestSchema>, { $typeName: string }>;

function stepTask(taskId: string, init: StepRequestInit = {}) {
  return {
    case: "stepTask" as const,
    value: create(StepRequestSchema, {
      taskId,
      leaseEpoch: 1n,
      runId: `run-${taskId}`,
      stepId: "resize",
      stepName: "resize",
      workerKind: "images",
      attempt: 1,
      input: jsonPayload({ url: "a.png" }),
      checkpoint: { mode: CheckpointMode.DISABLED },
      ...init,
    }),
  };
}

function ack(stream: ScriptedStream, batch: EventBatch, duplicate = false) {
  stream.send({
    case: "eventBatchAck",
    value: { taskId: batch.taskId, leaseEpoch: batch.leaseEpoch, batchNo: batch.batchNo, duplicate },
  });
}

/** Acknowledges batches until the step result arrives; returns both. */
async function untilResult(stream: ScriptedStream) {
  const batches: EventBatch[] = [];
  for (;;) {
    const m = (await stream.recv()).message;
    if (m.case === "eventBatch") {
      batches.push(m.value);
      ack(stream, m.value);
    } else if (m.case === "stepResult") {
      return { batches, result: m.value };
    } else if (m.case !== "heartbeat") {
      assert.fail(`unexpected ${String(m.case)}`);
    }
  }
}

/** The coordinator's positional ingestion (docs/ledger.md): a per-channel cursor skips resends. */
function ingest(batches: EventBatch[]): string[] {
  const cursors = new Map<string, bigint>();
  const stored: string[] = [];
  for (const event of batches.flatMap((b) => b.events)) {
    if (event.payload.case !== "logAppended") continue;
    const { lines, channel, channelOffset } = event.payload.value;
    const cursor = cursors.get(channel) ?? 0n;
    const offset = channelOffset!;
    assert.ok(offset <= cursor, `gap on ${channel}: cursor ${cursor}, batch at ${offset}`);
    stored.push(...lines.slice(Number(cursor - offset)));
    cursors.set(channel, offset + BigInt(lines.length) > cursor ? offset + BigInt(lines.length) : cursor);
  }
  return stored;
}

function cases(events: LedgerEvent[]) {
  return events.map((e) => e.payload.case);
}

describe("StepWorker", () => {
  test("hello, welcome, a step task run to its result", async () => {
    const { worker } = startWorker({
      maxConcurrentTasks: 3,
      namespace: "media",
      steps: {
        resize: async (input: { url: string }, ctx: StepContext) => {
          ctx.log.info(`resizing ${input.url}`);
          ctx.log.warn("slow disk\nstill going");
          ctx.progress(1, 2, "half");
          ctx.checkpoint("resized, uploading");
          return { url: `${input.url}?w=200` };
        },
      },
    });
    const stream = await coordinator.nextStream();
    const hello = await welcome(stream);
    assert.equal(hello.language, "typescript");
    assert.deepEqual(hello.stepKinds, ["images"]);
    assert.deepEqual(hello.workflows, []);
    assert.equal(hello.maxConcurrentTasks, 3);
    assert.equal(hello.namespace, "media");
    assert.equal(hello.workerId, worker.workerId);
    assert.match(hello.workerId, /^[0-9a-f-]{36}$/);
    assert.deepEqual(hello.heldTasks, []);

    stream.send(stepTask("t1"));
    const { batches, result } = await untilResult(stream);

    assert.deepEqual(
      batches.map((b) => [b.taskId, b.leaseEpoch, b.batchNo]),
      batches.map((_, i) => ["t1", 1n, BigInt(i + 1)]),
    );
    const events = batches.flatMap((b) => b.events);
    assert.ok(events.every((e) => e.runId === "run-t1"));
    assert.deepEqual(cases(events), ["logAppended", "stepProgress", "checkpointRecorded"]);
    const log = events[0]!.payload.value as { lines: string[]; channel: string; channelOffset?: bigint };
    assert.deepEqual(log.lines, ["resizing a.png", "[warn] slow disk", "[warn] still going"]);
    assert.equal(log.channel, "step:resize:log");
    assert.equal(log.channelOffset, 0n);
    const progress = events[1]!.payload.value as { stepId: string; progress?: { completed?: bigint; total?: bigint; message?: string } };
    assert.equal(progress.stepId, "resize");
    assert.deepEqual([progress.progress?.completed, progress.progress?.total, progress.progress?.message], [1n, 2n, "half"]);
    const checkpoint = events[2]!.payload.value as { checkpointSeq: bigint; type: CheckpointType; summary: string };
    assert.deepEqual([checkpoint.checkpointSeq, checkpoint.type, checkpoint.summary], [1n, CheckpointType.SUMMARY, "resized, uploading"]);

    assert.equal(result.taskId, "t1");
    assert.equal(result.leaseEpoch, 1n);
    assert.equal(result.runId, "run-t1");
    assert.equal(result.stepId, "resize");
    assert.equal(result.attempt, 1);
    assert.equal(result.outcome, StepOutcome.COMPLETED);
    assert.deepEqual(payloadValue(result.output), { url: "a.png?w=200" });
    assert.ok(result.startTime && result.finishTime);
    stream.send({ case: "taskResultAck", value: { taskId: "t1", leaseEpoch: 1n } });

    // A step name with no handler fails the attempt (the retry policy decides what follows).
    stream.send(stepTask("t2", { stepName: "missing" }));
    const missing = await untilResult(stream);
    assert.equal(missing.result.outcome, StepOutcome.FAILED);
    assert.equal(missing.result.error?.code, "STEP_NOT_FOUND");
  });

  test("a thrown error is a FAILED result; CAPTURE records a start summary and a log tail", async () => {
    startWorker({
      steps: {
        resize: (_input, ctx) => {
          ctx.log.info("one");
          ctx.log.info("two");
          throw new TypeError("bad image");
        },
      },
    });
    const stream = await coordinator.nextStream();
    await welcome(stream);
    stream.send(stepTask("t1", { checkpoint: { mode: CheckpointMode.CAPTURE, logTailLines: 1, resumeFromSeq: 4n } }));
    const { batches, result } = await untilResult(stream);
    assert.equal(result.outcome, StepOutcome.FAILED);
    assert.equal(result.error?.type, "TypeError");
    assert.equal(result.error?.message, "bad image");
    assert.equal(result.output, undefined);
    const checkpoints = batches
      .flatMap((b) => b.events)
      .flatMap((e) => (e.payload.case === "checkpointRecorded" ? [e.payload.value] : []));
    assert.deepEqual(
      checkpoints.map((c) => [c.checkpointSeq, c.type, c.lines, c.truncated]),
      [
        [5n, CheckpointType.SUMMARY, [], false],
        [6n, CheckpointType.LOG_TAIL, ["two"], true],
      ],
    );
  });

  test("the result waits for every batch to be acknowledged", async () => {
    startWorker({
      steps: {
        resize: (_input, ctx) => void ctx.log.info("x"),
        other: async (_input, ctx) => {
          ctx.heartbeat();
          await new Promise(() => {}); // runs until the test ends
        },
      },
    });
    const stream = await coordinator.nextStream();
    await welcome(stream);
    stream.send(stepTask("t1"));
    // t1's handler has returned once its batch is flushed; its result must not follow yet.
    const batch = await stream.expect("eventBatch");
    stream.send(stepTask("t2", { stepName: "other", stepId: "other" }));
    const heartbeat = await stream.expect("heartbeat");
    assert.deepEqual(heartbeat.tasks.map((t) => t.taskId), ["t1", "t2"]);
    ack(stream, batch);
    const result = await stream.expect("stepResult");
    assert.equal(result.taskId, "t1");
    assert.equal(result.outcome, StepOutcome.COMPLETED);
  });

  test("a forced stream reset: held tasks reclaimed, batches resent, lines exactly once", async () => {
    const resume = gate();
    const { worker } = startWorker({
      steps: {
        resize: async (_input, ctx) => {
          ctx.log.info("a");
          await resume.promise;
          ctx.log.info("b");
          ctx.log.info("a");
          return "done";
        },
      },
    });
    const first = await coordinator.nextStream();
    await welcome(first);
    first.send(stepTask("t1", { leaseEpoch: 7n }));
    const sent = await first.expect("eventBatch");
    assert.equal(sent.batchNo, 1n);
    // The coordinator committed batch 1, but the stream breaks before its ack leaves.
    first.reset();

    const second = await coordinator.nextStream();
    const hello = await second.expect("hello");
    assert.equal(hello.workerId, worker.workerId);
    assert.deepEqual(
      hello.heldTasks.map((t) => [t.taskId, t.leaseEpoch]),
      [["t1", 7n]],
    );
    second.send({ case: "welcome", value: { sessionId: "s2", ...QUIET } });
    const resent = await second.expect("eventBatch");
    assert.equal(resent.batchNo, 1n);
    assert.equal(resent.leaseEpoch, 7n);
    assert.deepEqual(resent.events, sent.events);
    ack(second, resent, true);

    resume.open();
    const { batches, result } = await untilResult(second);
    assert.deepEqual(batches.map((b) => b.batchNo), [2n]);
    assert.equal(result.outcome, StepOutcome.COMPLETED);
    // Everything the coordinator received, the duplicate included, ingests to each line once.
    assert.deepEqual(ingest([sent, resent, ...batches]), ["a", "b", "a"]);
    second.send({ case: "taskResultAck", value: { taskId: "t1", leaseEpoch: 7n } });
  });

  test("an unacknowledged result is resent after a reconnect", async () => {
    startWorker({ steps: { resize: () => 42 } });
    const first = await coordinator.nextStream();
    await welcome(first);
    first.send(stepTask("t1"));
    const result = await first.expect("stepResult");
    first.reset();
    const second = await coordinator.nextStream();
    const hello = await second.expect("hello");
    assert.deepEqual(hello.heldTasks.map((t) => t.taskId), ["t1"]);
    second.send({ case: "welcome", value: QUIET });
    const again = await second.expect("stepResult");
    assert.deepEqual(again, result);
    second.send({ case: "taskResultAck", value: { taskId: "t1", leaseEpoch: 1n } });
  });

  test("a stale-lease rejection stops the task: aborted, nothing more sent, no longer held", async () => {
    const stopped = gate<unknown>();
    startWorker({
      steps: {
        resize: async (_input, ctx) => {
          ctx.log.info("before");
          await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
          stopped.open(ctx.signal.reason);
          ctx.log.info("after the stop"); // must go nowhere
          return "ignored";
        },
        other: (_input, ctx) => {
          ctx.heartbeat();
          return "ok";
        },
      },
    });
    const stream = await coordinator.nextStream();
    await welcome(stream);
    stream.send(stepTask("t1", { leaseEpoch: 3n }));
    const batch = await stream.expect("eventBatch");
    stream.send({
      case: "taskRejected",
      value: { taskId: "t1", leaseEpoch: 3n, batchNo: batch.batchNo, reason: TaskRejectReason.STALE_LEASE, message: "epoch 3 is not current (4)" },
    });
    const reason = await stopped.promise;
    assert.ok(reason instanceof StepAbortedError);
    assert.equal(reason.reason, "stopped");

    // The next messages are the other task's: its heartbeat holds only it, then its result.
    stream.send(stepTask("t2", { stepName: "other", stepId: "other" }));
    const heartbeat = await stream.expect("heartbeat");
    assert.deepEqual(heartbeat.tasks.map((t) => t.taskId), ["t2"]);
    const result = await stream.expect("stepResult");
    assert.equal(result.taskId, "t2");
  });

  test("cancel_task aborts the handler and sends a FAILED result", async () => {
    const aborted = gate<unknown>();
    startWorker({
      steps: {
        resize: async (_input, ctx) => {
          ctx.signal.addEventListener("abort", () => aborted.open(ctx.signal.reason));
          // A handler that ignores its signal still ends: the worker stops waiting for it.
          await new Promise(() => {});
        },
      },
    });
    const stream = await coordinator.nextStream();
    await welcome(stream);
    stream.send(stepTask("t1"));
    stream.send({ case: "cancelTask", value: { taskId: "t1", runId: "run-t1", reason: "user asked" } });
    const result = await stream.expect("stepResult");
    assert.equal(result.outcome, StepOutcome.FAILED);
    assert.equal(result.error?.code, "CANCELLED");
    assert.equal(result.error?.message, "user asked");
    const reason = await aborted.promise;
    assert.ok(reason instanceof StepAbortedError && reason.reason === "cancelled");
  });

  test("cancel_requested in a heartbeat ack cancels the task", async () => {
    startWorker({
      steps: {
        resize: async (_input, ctx) => {
          ctx.heartbeat();
          await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
          throw ctx.signal.reason;
        },
      },
    });
    const stream = await coordinator.nextStream();
    await welcome(stream);
    stream.send(stepTask("t1"));
    const heartbeat = await stream.expect("heartbeat");
    assert.deepEqual(heartbeat.tasks.map((t) => [t.taskId, t.leaseEpoch]), [["t1", 1n]]);
    stream.send({ case: "heartbeatAck", value: { leases: [{ taskId: "t1", leaseEpoch: 1n, cancelRequested: true }] } });
    const result = await stream.expect("stepResult");
    assert.equal(result.error?.code, "CANCELLED");
  });

  test("drain: running handlers finish, new tasks are released unstarted, then the stream closes", async () => {
    const finish = gate();
    const firstRunning = gate();
    const started: string[] = [];
    const { worker, running } = startWorker({
      steps: {
        resize: async (input: { url: string }) => {
          started.push(input.url);
          firstRunning.open();
          await finish.promise;
          return "resized";
        },
      },
    });
    const stream = await coordinator.nextStream();
    await welcome(stream);
    stream.send(stepTask("t1", { input: jsonPayload({ url: "first" }) }));
    await firstRunning.promise;
    worker.drain();
    stream.send(stepTask("t2", { input: jsonPayload({ url: "second" }) }));
    finish.open();
    const result = await stream.expect("stepResult");
    assert.equal(result.taskId, "t1");
    stream.send({ case: "taskResultAck", value: { taskId: "t1", leaseEpoch: 1n } });
    const release = await stream.expect("release");
    assert.equal(release.taskId, "t2");
    await stream.halfClosed;
    await running;
    assert.deepEqual(started, ["first"]);
  });

  test("SIGTERM drains the worker when handleSignals is on", async () => {
    const listenersBefore = process.listenerCount("SIGTERM");
    const { running } = startWorker({ handleSignals: true, steps: {} });
    const stream = await coordinator.nextStream();
    await welcome(stream);
    // emit() runs the listeners only: this process is not signalled.
    process.emit("SIGTERM");
    await stream.halfClosed;
    await running;
    assert.equal(process.listenerCount("SIGTERM"), listenersBefore);
  });

  test("a coordinator that refuses hello ends run() with WorkerRefusedError", async () => {
    const { running } = startWorker({ steps: {} });
    const stream = await coordinator.nextStream();
    await stream.expect("hello");
    stream.reset(Code.InvalidArgument, "hello.step_kinds: unknown kind");
    await assert.rejects(running, WorkerRefusedError);
  });
});
