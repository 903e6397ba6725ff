// A scripted coordinator: a real connect-node gRPC server (HTTP/2 plaintext, loopback, port 0)
// implementing WorkerService.Connect, whose replies the test writes message by message. The
// worker under test talks to it over a real network stream; nothing about the stream is mocked.
import assert from "node:assert/strict";
import { type Http2Server, type ServerHttp2Session, createServer } from "node:http2";
import type { AddressInfo } from "node:net";

import { type MessageInitShape, create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";

import {
  type ConnectRequest,
  type ConnectResponse,
  ConnectResponseSchema,
  WorkerService,
} from "../../src/index.js";
import { AsyncQueue } from "../../src/queue.js";

type Response = MessageInitShape<typeof ConnectResponseSchema>["message"];
type RequestCase = NonNullable<ConnectRequest["message"]["case"]>;
type RequestOf<K extends RequestCase> = Extract<ConnectRequest["message"], { case: K }>["value"];

/** One worker stream as the coordinator sees it. */
export class ScriptedStream {
  readonly #inbox = new AsyncQueue<ConnectRequest>();
  readonly #outbox = new AsyncQueue<ConnectResponse | Error>();
  #ended = false;
  /** Resolves when the worker half-closed its side. */
  readonly halfClosed: Promise<void>;
  #markHalfClosed!: () => void;

  /** @param requestHeader - The HTTP/2 request headers the worker opened the stream with. */
  constructor(readonly requestHeader: Headers = new Headers()) {
    this.halfClosed = new Promise((resolve) => (this.#markHalfClosed = resolve));
  }

  /** @internal */
  async *serve(requests: AsyncIterable<ConnectRequest>): AsyncIterable<ConnectResponse> {
    void (async () => {
      try {
        for await (const request of requests) this.#inbox.push(request);
      } catch {
        // The worker reset the stream: its half is over either way.
      }
      this.#inbox.close();
      this.#markHalfClosed();
      // As the real coordinator does: a worker that closed its side ends the session.
      this.end();
    })();
    for await (const item of this.#outbox) {
      if (item instanceof Error) throw item;
      yield item;
    }
  }

  /** Returns the worker's next message. */
  async recv(): Promise<ConnectRequest> {
    const next = await this.#inbox.next();
    assert.ok(!next.done, "the worker closed the stream");
    return next.value;
  }

  /** Returns the worker's next message, asserting its kind. */
  async expect<K extends RequestCase>(kind: K): Promise<RequestOf<K>> {
    const message = (await this.recv()).message;
    assert.equal(message.case, kind, `expected ${kind}, got ${String(message.case)}`);
    return message.value as RequestOf<K>;
  }

  /** Sends a message to the worker. */
  send(message: Response): void {
    this.#outbox.push(create(ConnectResponseSchema, { message }));
  }

  /** Ends the stream with an error status: a forced reset as the worker sees it. */
  reset(code: Code = Code.Unavailable, message = "scripted reset"): void {
    this.#outbox.push(new ConnectError(message, code));
    this.#outbox.close();
    this.#ended = true;
  }

  /** Ends the stream with status OK. */
  end(): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#outbox.close();
  }
}

/** The server: hands each new worker stream to the test. */
export class ScriptedCoordinator {
  readonly #streams = new AsyncQueue<ScriptedStream>();
  readonly #sessions = new Set<ServerHttp2Session>();
  #server!: Http2Server;
  address = "";

  static async start(): Promise<ScriptedCoordinator> {
    const coordinator = new ScriptedCoordinator();
    const handler = connectNodeAdapter({
      grpc: true,
      grpcWeb: false,
      connect: false,
      routes: (router) =>
        router.service(WorkerService, {
          connect: (requests, context) => {
            const stream = new ScriptedStream(context.requestHeader);
            coordinator.#streams.push(stream);
            return stream.serve(requests);
          },
        }),
    });
    coordinator.#server = createServer(handler);
    coordinator.#server.on("session", (session: ServerHttp2Session) => {
      coordinator.#sessions.add(session);
      session.on("close", () => coordinator.#sessions.delete(session));
    });
    await new Promise<void>((resolve) => coordinator.#server.listen(0, "127.0.0.1", resolve));
    const { port } = coordinator.#server.address() as AddressInfo;
    coordinator.address = `127.0.0.1:${port}`;
    return coordinator;
  }

  /** Returns the next stream a worker opens. */
  async nextStream(): Promise<ScriptedStream> {
    const next = await this.#streams.next();
    assert.ok(!next.done);
    return next.value;
  }

  /** Stops listening and drops every open connection. */
  async close(): Promise<void> {
    this.#streams.close();
    await new Promise<void>((resolve) => {
      this.#server.close(() => resolve());
      // Open HTTP/2 sessions would keep close() waiting.
      for (const session of this.#sessions) session.destroy();
    });
  }
}
