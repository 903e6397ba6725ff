/**
 * The client: start runs, await their results, watch their snapshots, tail their logs,
 * signal and cancel them (`RunService`).
 *
 * @module
 */
import { type Client as ConnectClient, Code, ConnectError, createClient } from "@connectrpc/connect";

import { type ConnectionOptions, type OwnedTransport, grpcTransport, resolveConnection } from "./address.js";
import { type LedgerflowError, fromConnectError, runEndedError, unavailableError } from "./errors.js";
import { type LogLine, RunStatus, type RunSnapshot } from "./gen/ledgerflow/v1/ledger_pb.js";
import { RunService } from "./gen/ledgerflow/v1/run_service_pb.js";
import { jsonPayload, payloadValue } from "./payload.js";
import { isTerminal } from "./status.js";
import { durationFromNanos, NANOS_PER_MILLI } from "./time.js";

/** Options of {@link Client.start}. */
export interface StartOptions {
  /** The run's id, chosen by the client; a retry with the same id returns the same run. */
  runId?: string;
  /** A key that makes a retried start return the run the first start created. */
  idempotencyKey?: string;
  /** The workflow's version; empty when unversioned. */
  workflowVersion?: string;
  /** Labels for filtering. */
  tags?: string[];
  /** Bounds the run's whole life, in milliseconds. */
  executionTimeoutMs?: number;
  /**
   * The namespace the run lives in. Default: the token's namespace, or `default` for a token
   * of every namespace (or a coordinator without tokens).
   */
  namespace?: string;
}

/** What {@link Client.start} returns. */
export interface StartedRun {
  /** The run's id (the one given, or the coordinator's). */
  readonly runId: string;
  /** False when the start was a retry that found the run already created. */
  readonly created: boolean;
  /** The run's snapshot right after the start. */
  readonly snapshot: RunSnapshot;
}

/** Options of calls that stream. */
export interface StreamOptions {
  /** Ends the stream early (the iteration then throws the signal's reason). */
  signal?: AbortSignal;
}

/**
 * A connection to a ledgerflow coordinator's `RunService`.
 *
 * @example
 * ```ts
 * const client = Client.connect("127.0.0.1:7170");
 * // or, to a coordinator with --auth-tokens and TLS:
 * // Client.connect("coordinator:7170", { token: process.env.LEDGERFLOW_TOKEN, tls: { ca: caPem } });
 * const { runId } = await client.start("order.checkout", { orderId: 42 }, { idempotencyKey: "order-42" });
 * const receipt = await client.result(runId); // throws RunFailedError, RunCancelledError, ...
 * client.close();
 * ```
 */
export class Client {
  /** The generated RunService client, for calls this class does not wrap (ListRuns, GetEvents...). */
  readonly runs: ConnectClient<typeof RunService>;
  readonly #owned: OwnedTransport;
  #closed = false;

  private constructor(
    readonly address: string,
    owned: OwnedTransport,
  ) {
    this.#owned = owned;
    this.runs = createClient(RunService, owned.transport);
  }

  /**
   * Creates a client for the coordinator at `address`: `host:port`, or an `http://` or
   * `https://` URL. No I/O happens until the first call.
   *
   * @param options - A bearer token (`client` scope) and TLS; see {@link ConnectionOptions}.
   * @throws {@link InvalidArgumentError} if an option is malformed (checked here, not at the
   *   first call).
   */
  static connect(address: string, options: ConnectionOptions = {}): Client {
    return new Client(address, grpcTransport(resolveConnection(address, options)));
  }

  /** Closes the connection; calls in flight fail. */
  close(): void {
    this.#closed = true;
    this.#owned.close();
  }

  /**
   * Starts a run of `workflow` with `input` (encoded as JSON).
   *
   * @throws {@link RunAlreadyExistsError} if `runId` names a run of another workflow.
   */
  async start(workflow: string, input: unknown, options: StartOptions = {}): Promise<StartedRun> {
    const response = await this.#call(() =>
      this.runs.startRun({
        workflowName: workflow,
        workflowVersion: options.workflowVersion ?? "",
        input: jsonPayload(input),
        runId: options.runId ?? "",
        idempotencyKey: options.idempotencyKey ?? "",
        tags: options.tags ?? [],
        namespace: options.namespace ?? "",
        executionTimeout:
          options.executionTimeoutMs === undefined
            ? undefined
            : durationFromNanos(BigInt(options.executionTimeoutMs) * NANOS_PER_MILLI),
      }),
    );
    const snapshot = response.run!;
    return { runId: snapshot.runId, created: response.created, snapshot };
  }

  /** Returns the run's current snapshot. @throws {@link RunNotFoundError} */
  async getRun(runId: string): Promise<RunSnapshot> {
    const response = await this.#call(() => this.runs.getRun({ runId }));
    return response.run!;
  }

  /**
   * Waits for the run to end and returns its result (decoded JSON).
   *
   * @throws {@link RunFailedError}, {@link RunCancelledError}, {@link RunTimedOutError} or
   *   {@link RunTerminatedError} (all {@link RunEndedError}) when it did not complete.
   */
  async result<T = unknown>(runId: string, options: StreamOptions = {}): Promise<T> {
    let last: RunSnapshot | undefined;
    // Only the last snapshot matters: the coordinator skips the ones in between.
    for await (const snapshot of this.#follow(runId, options, true)) last = snapshot;
    if (last === undefined || !isTerminal(last.status)) {
      throw new Error(`watch of run ${runId} ended before the run did`);
    }
    if (last.status === RunStatus.COMPLETED) return payloadValue(last.result) as T;
    throw runEndedError(last);
  }

  /**
   * Yields the run's snapshot, then one per committed change, until the run is terminal (the
   * terminal snapshot is the last one). A slow consumer gets the latest snapshot, never a
   * backlog. If the coordinator ends the stream early (it is shutting down), the watch resumes
   * on a new stream from the last snapshot seen.
   */
  watch(runId: string, options: StreamOptions = {}): AsyncGenerator<RunSnapshot> {
    return this.#follow(runId, options, false);
  }

  async *#follow(
    runId: string,
    options: StreamOptions,
    skipIntermediate: boolean,
  ): AsyncGenerator<RunSnapshot> {
    let afterSeq = 0n;
    for (;;) {
      const stream = this.runs.watchRun(
        { runId, afterSeq, skipIntermediate },
        { signal: options.signal },
      );
      try {
        for await (const response of stream) {
          const snapshot = response.snapshot!;
          afterSeq = snapshot.lastSeq;
          yield snapshot;
          if (isTerminal(snapshot.status)) return;
        }
      } catch (err) {
        throw this.#error(err, options.signal);
      }
    }
  }

  /**
   * Yields the run's stored log lines from `fromSeq` (1 = the first line). With `follow`, waits
   * for new lines until the run ends and every line was sent; otherwise stops at the last line
   * stored now.
   */
  async *tailLogs(
    runId: string,
    options: StreamOptions & { fromSeq?: number; follow?: boolean } = {},
  ): AsyncGenerator<LogLine> {
    const stream = this.runs.tailLogs(
      { runId, fromSeq: BigInt(options.fromSeq ?? 0), follow: options.follow ?? false },
      { signal: options.signal },
    );
    try {
      for await (const response of stream) yield* response.lines;
    } catch (err) {
      throw this.#error(err, options.signal);
    }
  }

  /**
   * Sends a signal to the run. A retry with the same `requestId` is recorded once.
   *
   * @throws {@link FailedPreconditionError} if the run has ended.
   */
  async signal(
    runId: string,
    name: string,
    payload?: unknown,
    options: { requestId?: string; identity?: string } = {},
  ): Promise<{ seq: bigint; duplicate: boolean }> {
    const response = await this.#call(() =>
      this.runs.signalRun({
        runId,
        signalName: name,
        payload: jsonPayload(payload),
        requestId: options.requestId ?? "",
        identity: options.identity ?? "",
      }),
    );
    return { seq: response.seq, duplicate: response.duplicate };
  }

  /**
   * Asks the run to cancel (compensations run, then it ends cancelled).
   *
   * @throws {@link FailedPreconditionError} if the run has ended.
   */
  async cancel(
    runId: string,
    options: { reason?: string; identity?: string } = {},
  ): Promise<{ seq: bigint; alreadyRequested: boolean }> {
    const response = await this.#call(() =>
      this.runs.cancelRun({ runId, reason: options.reason ?? "", identity: options.identity ?? "" }),
    );
    return { seq: response.seq, alreadyRequested: response.alreadyRequested };
  }

  async #call<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw this.#error(err);
    }
  }

  #error(err: unknown, signal?: AbortSignal): LedgerflowError {
    // The coordinator never answers CANCELLED, but connect-node words a connection closed under
    // a call as a CANCEL of its stream: a mutual-TLS handshake refused for want of a client
    // certificate, plaintext sent to a TLS port, a coordinator gone mid-call (grpcio, and so
    // the Python SDK, say UNAVAILABLE). Only a cancel the caller asked for (its signal, or
    // close()) is one.
    if (err instanceof ConnectError && err.code === Code.Canceled && !signal?.aborted && !this.#closed) {
      return unavailableError(this.address, `the connection closed under the call (${err.rawMessage})`, err);
    }
    return fromConnectError(err, this.address);
  }
}
