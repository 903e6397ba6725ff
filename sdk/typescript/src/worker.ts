/**
 * The step worker: runs TypeScript step handlers for ledgerflow runs.
 *
 * A {@link StepWorker} opens `WorkerService.Connect` (one bidi gRPC stream), says `hello` with
 * the worker kinds it serves, and runs each `step_task` it is given through the handler
 * registered under the task's `step_name` (`docs/worker-protocol.md`, "Step tasks"). What the
 * handler logs, reports and checkpoints travels in `event_batch`es; its return value (or error)
 * in a `step_result`, sent once every batch is acknowledged.
 *
 * Reconnect. When the stream breaks, running handlers go on; every batch and result not yet
 * acknowledged is kept per task and sent again, unchanged (same batch numbers, same log
 * offsets), right after the next `welcome`, whose `hello` claimed the tasks in `held_tasks`.
 * Delays are exponential with full jitter; each attempt opens a new HTTP/2 session, so a
 * restarted coordinator (or another one behind the address) is found again.
 *
 * Dead streams. The coordinator answers every heartbeat; when nothing at all has come back for
 * a lease duration after a heartbeat, the worker gives the stream up and reconnects.
 *
 * Drain. {@link StepWorker.drain} (SIGTERM/SIGINT by default) ends the worker: tasks offered
 * from then on are held unstarted ("parked") and handed back with `release` when the stream
 * closes (releasing them at once would have the coordinator offer them straight back to the
 * free capacity), running handlers finish and their results are acknowledged, then the stream
 * is closed and {@link StepWorker.run} returns. After `drainTimeoutMs` the handlers still
 * running are aborted and released. A coordinator's `drain` ends only the session: the worker
 * stops taking tasks on it, closes it once its running handlers are done (or at the deadline,
 * keeping the rest, which the next `hello` claims) and reconnects.
 *
 * @module
 */
import { hostname } from "node:os";
import { randomUUID } from "node:crypto";

import { type MessageInitShape, create } from "@bufbuild/protobuf";
import type { Duration } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";

import { type Connection, type ConnectionOptions, grpcTransport, resolveConnection } from "./address.js";
import { Backoff } from "./backoff.js";
import { LedgerflowError, WorkerRefusedError } from "./errors.js";
import type { ErrorInfo } from "./gen/ledgerflow/v1/common_pb.js";
import type { LedgerEvent } from "./gen/ledgerflow/v1/ledger_pb.js";
import {
  CheckpointMode,
  type StepRequest,
  type StepResult,
  StepOutcome,
  StepResultSchema,
} from "./gen/ledgerflow/v1/step_pb.js";
import {
  type ConnectRequest,
  ConnectRequestSchema,
  type ConnectResponse,
  type EventBatch,
  EventBatchSchema,
  TaskRejectReason,
  type TaskRejected,
  type Welcome,
  WorkerService,
} from "./gen/ledgerflow/v1/worker_service_pb.js";
import { jsonPayload, payloadValue } from "./payload.js";
import { AsyncQueue } from "./queue.js";
import { StepAbortedError, StepContext, StepFailure, errorInfo } from "./step-context.js";
import { durationFromNanos, durationNanos, NANOS_PER_MILLI, timestampFromDate } from "./time.js";
import { SDK_VERSION } from "./version.js";

/**
 * A step handler: gets the step's decoded JSON input and its context, returns the output
 * (JSON-encodable) or throws to fail the attempt.
 */
// `any` by default so handlers can declare their input's type without a cast.
export type StepHandler<I = any, O = unknown> = (input: I, ctx: StepContext) => O | Promise<O>;

/** Options of a {@link StepWorker}. */
export interface StepWorkerOptions extends ConnectionOptions {
  /**
   * The coordinator: `host:port`, or an `http://` or `https://` URL. With `--auth-tokens` it
   * needs a `token` with the `worker` scope.
   */
  address: string;
  /** The worker kinds served (`hello.step_kinds`): steps scheduled with `worker_kind=` one of them. */
  kinds: string[];
  /** Handlers by step name (a task's `step_name`). */
  steps: Record<string, StepHandler>;
  /** The most step tasks run at once. Default 10. */
  maxConcurrentTasks?: number;
  /**
   * Serve only steps of runs in this namespace (`hello.namespace`). Default: the token's
   * namespace, or every namespace for a token of all (or a coordinator without tokens).
   */
  namespace?: string;
  /** Identifies the worker process across reconnects. Default: a new UUID. */
  workerId?: string;
  /** A human-readable name. Default `host:pid`. */
  identity?: string;
  /** How long {@link StepWorker.drain} lets handlers finish before releasing them. Default 10 s. */
  drainTimeoutMs?: number;
  /** Drain on SIGTERM and SIGINT while {@link StepWorker.run} runs. Default true. */
  handleSignals?: boolean;
  /** How long an event waits for others to share its batch. Default 10 ms. */
  batchLingerMs?: number;
  /** Events per batch at most. Default 100. */
  maxBatchEvents?: number;
  /** Reconnect delays: the first ceiling and the largest one. Default 100 ms and 5 s. */
  reconnect?: { initialMs?: number; maxMs?: number };
  /** Called with errors the worker recovers from (a broken stream, a refused batch...). */
  onError?: (error: unknown) => void;
}

type Phase = "parked" | "running" | "finishing" | "resulted" | "gone";

interface Task {
  readonly request: StepRequest;
  readonly taskId: string;
  readonly epoch: bigint;
  phase: Phase;
  /** Events not yet in a batch. */
  pending: LedgerEvent[];
  /** Sent, not yet acknowledged batches, in batch order (Map keeps insertion order). */
  readonly unacked: Map<bigint, EventBatch>;
  nextBatchNo: bigint;
  /** The result once sent; resent after a reconnect until acknowledged. */
  result?: StepResult;
  /** Set when the coordinator refused a batch as malformed: the attempt fails with it. */
  failure?: ErrorInfo;
  readonly abort: AbortController;
  linger?: NodeJS.Timeout;
}

interface Session {
  readonly outbox: AsyncQueue<ConnectRequest>;
  readonly abort: AbortController;
  welcomed: boolean;
  closing: boolean;
  heartbeatMs: number;
  leaseMs: number;
  /** When the first heartbeat nothing answered yet was sent (ms epoch), else null. */
  unansweredSince: number | null;
  /** Set by the coordinator's drain: take no task on this session, close it when idle. */
  draining: boolean;
  readonly timers: Set<NodeJS.Timeout>;
}

const DEFAULT_HEARTBEAT_MS = 2_000;
const DEFAULT_LEASE_MS = 10_000;
// After the worker half-closes, how long the coordinator has to end the stream.
const CLOSE_TIMEOUT_MS = 5_000;
// Statuses that end a stream before welcome and would end the next attempt the same way.
const REFUSALS = new Set([Code.InvalidArgument, Code.Unimplemented, Code.Unauthenticated, Code.PermissionDenied]);

/** Wakes whoever waits for task state to change; no lost wake-ups (waiters re-check). */
class Changes {
  #waiters: (() => void)[] = [];
  next(): Promise<void> {
    return new Promise((resolve) => this.#waiters.push(resolve));
  }
  notify(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const wake of waiters) wake();
  }
}

/**
 * Runs step handlers for a ledgerflow coordinator.
 *
 * @example
 * ```ts
 * const worker = new StepWorker({
 *   address: "127.0.0.1:7170",
 *   kinds: ["images"],
 *   steps: {
 *     resize: async (input: { url: string }, ctx) => {
 *       ctx.log.info(`resizing ${input.url}`);
 *       ctx.progress(1, 1);
 *       return { url: input.url + "?w=200" };
 *     },
 *   },
 * });
 * await worker.run(); // until SIGTERM, or worker.drain()
 * ```
 */
export class StepWorker {
  /** Identifies this worker across its reconnects. */
  readonly workerId: string;
  /** The human-readable name sent in `hello`. */
  readonly identity: string;

  readonly #options: StepWorkerOptions;
  readonly #connection: Connection;
  readonly #tasks = new Map<string, Task>();
  readonly #changes = new Changes();
  readonly #backoff: Backoff;
  #session: Session | undefined;
  #running = false;
  #draining = false;
  #drainTimer: NodeJS.Timeout | undefined;
  #welcomeWaiters: (() => void)[] = [];

  /**
   * Configures a worker; nothing connects before {@link run}.
   *
   * @throws {@link LedgerflowError} without kinds; {@link InvalidArgumentError} if the address,
   *   the token or the TLS material is malformed.
   */
  constructor(options: StepWorkerOptions) {
    if (options.kinds.length === 0) throw new LedgerflowError("a StepWorker needs at least one kind");
    this.#connection = resolveConnection(options.address, options);
    this.#options = options;
    this.workerId = options.workerId ?? randomUUID();
    this.identity = options.identity ?? `${hostname()}:${process.pid}`;
    this.#backoff = new Backoff(options.reconnect?.initialMs ?? 100, options.reconnect?.maxMs ?? 5_000);
  }

  /** Whether a welcomed stream is open now. */
  get connected(): boolean {
    return this.#session?.welcomed === true;
  }

  /** Resolves at the next `welcome` (at once if a welcomed stream is open). */
  waitConnected(): Promise<void> {
    if (this.connected) return Promise.resolve();
    return new Promise((resolve) => this.#welcomeWaiters.push(resolve));
  }

  /**
   * Connects and runs tasks until {@link drain} finished, reconnecting whenever the stream breaks.
   *
   * @throws {@link WorkerRefusedError} if the coordinator refuses the session for good (a status
   *   such as INVALID_ARGUMENT before `welcome`), which a reconnect would not change.
   */
  async run(): Promise<void> {
    if (this.#running) throw new LedgerflowError("StepWorker.run is already running");
    this.#running = true;
    const onSignal = () => this.drain();
    if (this.#options.handleSignals ?? true) {
      process.on("SIGTERM", onSignal);
      process.on("SIGINT", onSignal);
    }
    try {
      while (!this.#finished()) {
        try {
          await this.#runSession();
        } catch (err) {
          if (err instanceof WorkerRefusedError) throw err;
          this.#report(err);
        }
        if (this.#finished()) break;
        // Any change (a drain, its deadline) ends the wait early; the loop re-checks.
        const delay = this.#backoff.nextDelayMs();
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([
          new Promise<void>((resolve) => (timer = setTimeout(resolve, delay))),
          this.#changes.next(),
        ]);
        clearTimeout(timer);
      }
    } finally {
      process.off("SIGTERM", onSignal);
      process.off("SIGINT", onSignal);
      clearTimeout(this.#drainTimer);
      for (const task of this.#tasks.values()) this.#drop(task, "released", "the worker stopped");
      this.#running = false;
    }
  }

  /**
   * Stops taking tasks, lets running handlers finish (at most `timeoutMs`, by default the
   * `drainTimeoutMs` option, then they are aborted and handed back), then closes the stream;
   * {@link run} then returns.
   */
  drain(timeoutMs?: number): void {
    if (this.#draining) return;
    this.#draining = true;
    this.#drainTimer = setTimeout(() => {
      for (const task of [...this.#tasks.values()]) {
        this.#send({ case: "release", value: { taskId: task.taskId, leaseEpoch: task.epoch, reason: "worker draining" } });
        this.#drop(task, "released", "the worker is draining and handed the task back");
      }
      this.#changed();
    }, timeoutMs ?? this.#options.drainTimeoutMs ?? 10_000);
    this.#changed();
  }

  #finished(): boolean {
    return this.#draining && this.#tasks.size === 0 && this.#session === undefined;
  }

  #report(err: unknown): void {
    this.#options.onError?.(err);
  }

  #changed(): void {
    this.#closeIfIdle();
    this.#changes.notify();
  }

  async #until(predicate: () => boolean): Promise<void> {
    while (!predicate()) await this.#changes.next();
  }

  // -- the stream ------------------------------------------------------------------------------

  #heldTasks() {
    return [...this.#tasks.values()].map((t) => ({ taskId: t.taskId, leaseEpoch: t.epoch }));
  }

  async #runSession(): Promise<void> {
    const owned = grpcTransport(this.#connection);
    const client = createClient(WorkerService, owned.transport);
    const session: Session = {
      outbox: new AsyncQueue(),
      abort: new AbortController(),
      welcomed: false,
      closing: false,
      heartbeatMs: DEFAULT_HEARTBEAT_MS,
      leaseMs: DEFAULT_LEASE_MS,
      unansweredSince: null,
      draining: false,
      timers: new Set(),
    };
    this.#session = session;
    session.outbox.push(
      create(ConnectRequestSchema, {
        message: {
          case: "hello",
          value: {
            workerId: this.workerId,
            identity: this.identity,
            language: "typescript",
            sdkVersion: SDK_VERSION,
            stepKinds: this.#options.kinds,
            maxConcurrentTasks: this.#options.maxConcurrentTasks ?? 10,
            heldTasks: this.#heldTasks(),
            namespace: this.#options.namespace ?? "",
          },
        },
      }),
    );
    // A coordinator that accepted the stream but never says welcome is as good as unreachable.
    this.#after(session, DEFAULT_LEASE_MS, () => session.welcomed || session.abort.abort());
    try {
      for await (const response of client.connect(session.outbox, { signal: session.abort.signal })) {
        session.unansweredSince = null;
        if (!session.welcomed) {
          if (response.message.case !== "welcome") {
            throw new LedgerflowError(`expected welcome, got ${String(response.message.case)}`);
          }
          this.#onWelcome(session, response.message.value);
        } else {
          this.#handle(session, response);
        }
      }
    } catch (err) {
      const status = err instanceof ConnectError ? err : undefined;
      if (!session.welcomed && status !== undefined && REFUSALS.has(status.code)) {
        throw new WorkerRefusedError(`the coordinator refused the session: ${status.rawMessage}`, { cause: err });
      }
      if (!session.closing) throw err;
    } finally {
      for (const timer of session.timers) clearTimeout(timer);
      session.outbox.close();
      this.#session = undefined;
      owned.close();
      this.#changed();
    }
  }

  #after(session: Session, ms: number, fn: () => void): void {
    const timer = setTimeout(() => {
      session.timers.delete(timer);
      fn();
    }, ms);
    session.timers.add(timer);
  }

  #onWelcome(session: Session, welcome: Welcome): void {
    session.welcomed = true;
    if (welcome.heartbeatInterval) session.heartbeatMs = millis(welcome.heartbeatInterval);
    if (welcome.leaseDuration) session.leaseMs = millis(welcome.leaseDuration);
    this.#backoff.reset();
    const beat = () => {
      if (session.closing) return;
      const now = Date.now();
      if (session.unansweredSince !== null && now - session.unansweredSince >= session.leaseMs) {
        this.#report(new LedgerflowError("no answer from the coordinator for a lease period; reconnecting"));
        session.abort.abort();
        return;
      }
      this.#heartbeat();
      this.#after(session, session.heartbeatMs, beat);
    };
    this.#after(session, session.heartbeatMs, beat);
    // Resend what the broken stream may have lost, unchanged: the coordinator acknowledges a
    // batch it already appended as a duplicate, and ingests log lines by position.
    for (const task of this.#tasks.values()) {
      for (const batch of task.unacked.values()) this.#send({ case: "eventBatch", value: batch });
      this.#flush(task);
      if (task.result) this.#send({ case: "stepResult", value: task.result });
    }
    for (const wake of this.#welcomeWaiters.splice(0)) wake();
    this.#changed();
  }

  #send(message: MessageInitShape<typeof ConnectRequestSchema>["message"]): void {
    const session = this.#session;
    // Without a welcomed stream nothing is lost: unacknowledged state is resent after welcome.
    if (session?.welcomed && !session.closing) {
      session.outbox.push(create(ConnectRequestSchema, { message }));
    }
  }

  #heartbeat(): void {
    const session = this.#session;
    if (!session?.welcomed || session.closing) return;
    session.unansweredSince ??= Date.now();
    this.#send({ case: "heartbeat", value: { tasks: this.#heldTasks() } });
  }

  /** Half-closes a draining session once none of its tasks still runs. */
  #closeIfIdle(): void {
    const session = this.#session;
    if (!session?.welcomed || session.closing) return;
    if (!(this.#draining || session.draining)) return;
    const tasks = [...this.#tasks.values()];
    if (tasks.some((t) => t.phase !== "parked")) return;
    this.#closeSession(session);
  }

  #closeSession(session: Session): void {
    if (session.closing) return;
    for (const task of this.#tasks.values()) {
      if (task.phase !== "parked") continue;
      this.#send({ case: "release", value: { taskId: task.taskId, leaseEpoch: task.epoch, reason: "draining" } });
      this.#drop(task, "released", "handed back unstarted");
    }
    session.closing = true;
    session.outbox.close();
    this.#after(session, CLOSE_TIMEOUT_MS, () => session.abort.abort());
  }

  #handle(session: Session, response: ConnectResponse): void {
    const m = response.message;
    switch (m.case) {
      case "stepTask":
        this.#onStepTask(session, m.value);
        return;
      case "workflowTask":
        // This worker registers no workflow; hand it straight back.
        this.#send({
          case: "release",
          value: { taskId: m.value.taskId, leaseEpoch: m.value.leaseEpoch, reason: "a step worker runs no workflows" },
        });
        return;
      case "eventBatchAck": {
        const task = this.#tasks.get(m.value.taskId);
        if (task?.epoch === m.value.leaseEpoch && task.unacked.delete(m.value.batchNo)) this.#changed();
        return;
      }
      case "taskResultAck": {
        const task = this.#tasks.get(m.value.taskId);
        if (task?.epoch === m.value.leaseEpoch && task.phase === "resulted") {
          task.phase = "gone";
          this.#tasks.delete(task.taskId);
          this.#changed();
        }
        return;
      }
      case "taskRejected":
        this.#onRejected(m.value);
        return;
      case "heartbeatAck":
        for (const lease of m.value.leases) {
          if (lease.cancelRequested) this.#cancel(lease.taskId, lease.leaseEpoch, "the run was cancelled");
        }
        return;
      case "cancelTask":
        this.#cancel(m.value.taskId, undefined, m.value.reason || "the run was cancelled");
        return;
      case "drain":
        session.draining = true;
        if (m.value.deadlineTime) {
          const left = Number(m.value.deadlineTime.seconds) * 1000 + m.value.deadlineTime.nanos / 1e6 - Date.now();
          // At the deadline the session closes anyway; running tasks stay held and are claimed
          // again by the next hello, so no work is lost or repeated.
          this.#after(session, Math.max(0, left), () => this.#closeSession(session));
        }
        this.#changed();
        return;
      default:
        return;
    }
  }

  // -- tasks -----------------------------------------------------------------------------------

  #onStepTask(session: Session, request: StepRequest): void {
    const existing = this.#tasks.get(request.taskId);
    if (existing !== undefined) {
      if (existing.epoch >= request.leaseEpoch) return;
      // Our lease lapsed and the task came back with a new epoch: the old attempt is stale.
      this.#drop(existing, "stopped", "superseded by a newer lease of the same task");
    }
    const parked = this.#draining || session.draining;
    const task: Task = {
      request,
      taskId: request.taskId,
      epoch: request.leaseEpoch,
      phase: parked ? "parked" : "running",
      pending: [],
      unacked: new Map(),
      nextBatchNo: 1n,
      abort: new AbortController(),
    };
    this.#tasks.set(task.taskId, task);
    if (!parked) void this.#execute(task);
  }

  #cancel(taskId: string, epoch: bigint | undefined, reason: string): void {
    const task = this.#tasks.get(taskId);
    if (task === undefined || (epoch !== undefined && task.epoch !== epoch)) return;
    if (task.phase === "running") task.abort.abort(new StepAbortedError("cancelled", reason));
  }

  #onRejected(rejected: TaskRejected): void {
    const task = this.#tasks.get(rejected.taskId);
    if (task === undefined || task.epoch !== rejected.leaseEpoch) return;
    const reason = TaskRejectReason[rejected.reason] ?? String(rejected.reason);
    this.#report(new LedgerflowError(`task ${task.taskId} rejected (${reason}): ${rejected.message}`));
    switch (rejected.reason) {
      case TaskRejectReason.INVALID:
      case TaskRejectReason.TOO_LARGE: {
        if (task.failure !== undefined) break; // refused twice: nothing more to try
        task.failure = errorInfo(
          new StepFailure(`the coordinator refused ${rejected.batchNo ? `batch ${rejected.batchNo}` : "the result"}: ${rejected.message}`, {
            code: reason,
            nonRetryable: true,
          }),
        );
        task.pending = [];
        task.unacked.clear();
        if (task.phase === "running") {
          task.abort.abort(new StepAbortedError("stopped", task.failure.message));
        } else if (task.phase === "resulted") {
          task.result = this.#buildResult(task, { failure: task.failure });
          this.#send({ case: "stepResult", value: task.result });
        }
        this.#changed();
        return;
      }
      default:
        break;
    }
    // STALE_LEASE, UNKNOWN_TASK, RUN_FINISHED (and a second refusal): append nothing more.
    this.#drop(task, "stopped", rejected.message || reason);
    this.#changed();
  }

  /** Forgets a task: its handler is aborted and nothing more is sent for it. */
  #drop(task: Task, reason: "stopped" | "released", message: string): void {
    if (task.phase === "gone") return;
    task.phase = "gone";
    clearTimeout(task.linger);
    task.abort.abort(new StepAbortedError(reason, message));
    this.#tasks.delete(task.taskId);
  }

  #emit(task: Task, event: LedgerEvent): void {
    if (task.phase !== "running") return; // a stopped or finished attempt appends nothing more
    const last = task.pending.at(-1);
    const add = event.payload.case === "logAppended" ? event.payload.value : undefined;
    const prev = last?.payload.case === "logAppended" ? last.payload.value : undefined;
    // Consecutive lines of one channel travel as one positional event.
    if (
      add !== undefined &&
      prev !== undefined &&
      prev.channel === add.channel &&
      prev.channelOffset !== undefined &&
      prev.channelOffset + BigInt(prev.lines.length) === add.channelOffset
    ) {
      prev.lines.push(...add.lines);
    } else {
      task.pending.push(event);
    }
    if (task.pending.length >= (this.#options.maxBatchEvents ?? 100)) this.#flush(task);
    else task.linger ??= setTimeout(() => this.#flush(task), this.#options.batchLingerMs ?? 10);
  }

  #flush(task: Task): void {
    clearTimeout(task.linger);
    task.linger = undefined;
    if (task.pending.length === 0 || task.phase === "gone") return;
    const batch = create(EventBatchSchema, {
      taskId: task.taskId,
      leaseEpoch: task.epoch,
      batchNo: task.nextBatchNo,
      events: task.pending,
    });
    task.nextBatchNo += 1n;
    task.pending = [];
    task.unacked.set(batch.batchNo, batch);
    this.#send({ case: "eventBatch", value: batch });
  }

  async #execute(task: Task): Promise<void> {
    const { request } = task;
    const ctx = new StepContext(
      request,
      { emit: (event) => this.#emit(task, event), heartbeat: () => this.#heartbeat() },
      task.abort.signal,
    );
    const capture = request.checkpoint?.mode !== CheckpointMode.DISABLED;
    if (capture) {
      ctx.checkpoint(request.checkpoint?.summaryHint || `started ${request.stepName} (attempt ${request.attempt})`);
    }
    const startTime = new Date();
    let timeout: NodeJS.Timeout | undefined;
    if (request.timeout) {
      const ms = millis(request.timeout);
      timeout = setTimeout(
        () => task.abort.abort(new StepAbortedError("timeout", `step ${request.stepId} timed out after ${ms} ms`)),
        ms,
      );
    }
    let outcome: { output: unknown } | { error: unknown };
    try {
      const handler = this.#options.steps[request.stepName];
      if (handler === undefined) {
        throw new StepFailure(`no handler for step ${request.stepName} on this worker`, { code: "STEP_NOT_FOUND" });
      }
      const input = payloadValue(request.input);
      // The race lets a cancel or a timeout end the attempt even if the handler ignores its signal.
      outcome = { output: await abortable(Promise.resolve().then(() => handler(input, ctx)), task.abort.signal) };
    } catch (error) {
      outcome = { error };
    } finally {
      clearTimeout(timeout);
    }
    if (task.phase !== "running") return; // stopped or released: nothing more counts
    if (capture) ctx.recordLogTail();
    task.phase = "finishing";
    this.#flush(task);
    // The result follows only committed events, so a step's logs are never behind its end.
    await this.#until(() => task.unacked.size === 0 || task.phase !== "finishing");
    if (task.phase !== "finishing") return;
    task.result = this.#buildResult(task, {
      ...outcome,
      failure: task.failure,
      startTime,
      finishTime: new Date(),
      ctx,
    });
    task.phase = "resulted";
    this.#send({ case: "stepResult", value: task.result });
    this.#changed();
  }

  #buildResult(
    task: Task,
    o: { output?: unknown; error?: unknown; failure?: ErrorInfo; startTime?: Date; finishTime?: Date; ctx?: StepContext },
  ): StepResult {
    const { request } = task;
    const failed = o.failure !== undefined || "error" in o;
    let output;
    let error = o.failure ?? ("error" in o ? errorInfo(o.error) : undefined);
    if (!failed) {
      try {
        output = jsonPayload(o.output);
      } catch (err) {
        error = errorInfo(new StepFailure(`the step's output is not JSON-encodable: ${String(err)}`, { cause: err }));
      }
    }
    return create(StepResultSchema, {
      taskId: task.taskId,
      leaseEpoch: task.epoch,
      runId: request.runId,
      stepId: request.stepId,
      attempt: request.attempt,
      workerKind: request.workerKind,
      outcome: error === undefined ? StepOutcome.COMPLETED : StepOutcome.FAILED,
      output: error === undefined ? output : undefined,
      error,
      startTime: o.startTime ? timestampFromDate(o.startTime) : task.result?.startTime,
      finishTime: o.finishTime ? timestampFromDate(o.finishTime) : task.result?.finishTime,
      metrics:
        o.ctx && o.startTime && o.finishTime
          ? {
              duration: durationFromNanos(BigInt(o.finishTime.getTime() - o.startTime.getTime()) * NANOS_PER_MILLI),
              stdoutLineCount: BigInt(o.ctx.linesLogged),
              checkpointCount: BigInt(o.ctx.checkpointCount),
            }
          : task.result?.metrics,
    });
  }
}

function millis(d: Duration): number {
  return Number(durationNanos(d) / NANOS_PER_MILLI);
}

/** Settles with `promise`, or rejects with the signal's reason as soon as it aborts. */
function abortable<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        resolve(value);
      },
      (err) => {
        signal.removeEventListener("abort", onAbort);
        reject(err);
      },
    );
  });
}
