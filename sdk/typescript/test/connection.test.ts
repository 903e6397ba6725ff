// Connection options (`token`, `tls`): checked before any I/O; the token travels as a bearer
// header on unary calls and on every kind of stream (seen by real servers: a recording
// connect-node server, the scripted worker coordinator, and `ledgerflow server --auth-tokens`);
// refusals surface as the SDK's errors and never echo the token. The TLS handshakes against a
// real coordinator (trusted CA, missing CA, mutual TLS) are in
// tests/security/test_typescript_auth.py, which generates the certificates.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { type Http2Server, type ServerHttp2Session, createServer } from "node:http2";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { inspect } from "node:util";
import { after, before, describe, test } from "node:test";

import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";

import {
  Client,
  CoordinatorUnavailableError,
  InvalidArgumentError,
  LedgerflowError,
  PermissionDeniedError,
  RunService,
  RunSnapshotSchema,
  RunStatus,
  StepWorker,
  type StepWorkerOptions,
  WorkerRefusedError,
} from "../src/index.js";
import { resolveConnection } from "../src/address.js";
import { ScriptedCoordinator } from "./support/scripted-coordinator.js";
import { type Server, startServer } from "./support/server.js";

const TOKEN = "lf_unit-test-token_0123456789";

function workerOptions(extra: Partial<StepWorkerOptions> = {}): StepWorkerOptions {
  return { address: "127.0.0.1:1", kinds: ["images"], steps: {}, handleSignals: false, ...extra };
}

/** Asserts `fn` throws InvalidArgumentError naming `field`, without echoing `secret`. */
function assertInvalid(fn: () => unknown, field: string, secret?: string): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof InvalidArgumentError, String(err));
    assert.equal(err.field, field);
    if (secret !== undefined) assert.ok(!inspect(err).includes(secret), "the error echoes the secret");
    return true;
  });
}

function newToken(): string {
  return `lf_${randomBytes(32).toString("base64url")}`;
}

describe("connection options are checked before any I/O", () => {
  test("a token must be printable ASCII without whitespace; the error does not echo it", () => {
    for (const bad of ["", "lf_with space", "lf_new\nline", "lf_tab\t", "lf_ünïcode"]) {
      assertInvalid(() => Client.connect("127.0.0.1:1", { token: bad }), "token", bad || undefined);
      assertInvalid(() => new StepWorker(workerOptions({ token: bad })), "token", bad || undefined);
    }
  });

  test("the address scheme and tls agree", () => {
    assertInvalid(() => Client.connect("grpc://127.0.0.1:1"), "address");
    assertInvalid(() => Client.connect("http://127.0.0.1:1", { tls: true }), "tls");
    assertInvalid(() => new StepWorker(workerOptions({ address: "http://127.0.0.1:1", tls: {} })), "tls");
    assert.equal(resolveConnection("127.0.0.1:1").url, "http://127.0.0.1:1");
    assert.equal(resolveConnection("127.0.0.1:1", { tls: false }).url, "http://127.0.0.1:1");
    assert.equal(resolveConnection("127.0.0.1:1", { tls: true }).url, "https://127.0.0.1:1");
    assert.equal(resolveConnection("127.0.0.1:1", { tls: {} }).url, "https://127.0.0.1:1");
    assert.equal(resolveConnection("https://coordinator:443").url, "https://coordinator:443");
    assert.equal(resolveConnection("HTTPS://coordinator:443").url, "HTTPS://coordinator:443");
    // tls: false with an https:// address is not a contradiction: the address decides.
    assert.equal(resolveConnection("https://coordinator:443", { tls: false }).url, "https://coordinator:443");
  });

  test("TLS material is parsed up front", () => {
    const key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
    assertInvalid(() => Client.connect("127.0.0.1:1", { tls: { ca: "" } }), "tls.ca");
    assertInvalid(() => Client.connect("127.0.0.1:1", { tls: { ca: "not a certificate" } }), "tls.ca");
    const broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    assertInvalid(() => Client.connect("127.0.0.1:1", { tls: { ca: Buffer.from(broken) } }), "tls.ca");
    assertInvalid(() => Client.connect("127.0.0.1:1", { tls: { cert: broken } }), "tls.key");
    assertInvalid(() => Client.connect("127.0.0.1:1", { tls: { key } }), "tls.cert");
    assertInvalid(() => new StepWorker(workerOptions({ tls: { cert: broken, key } })), "tls.cert", "AAAA");
  });

  test("a client or worker does not show its token when inspected", () => {
    const client = Client.connect("127.0.0.1:1", { token: TOKEN });
    const worker = new StepWorker(workerOptions({ token: TOKEN }));
    try {
      for (const shown of [inspect(client, { depth: 8, showHidden: true }), inspect(worker, { depth: 8 })]) {
        assert.ok(!shown.includes(TOKEN));
      }
    } finally {
      client.close();
    }
  });
});

/** A RunService that records each call's `authorization` header (null when absent). */
class RecordingServer {
  readonly seen: { method: string; authorization: string | null }[] = [];
  readonly #sessions = new Set<ServerHttp2Session>();
  #server!: Http2Server;
  address = "";

  static async start(): Promise<RecordingServer> {
    const server = new RecordingServer();
    const snapshot = (runId: string) => create(RunSnapshotSchema, { runId, status: RunStatus.COMPLETED, lastSeq: 1n });
    const handler = connectNodeAdapter({
      grpc: true,
      grpcWeb: false,
      connect: false,
      routes: (router) =>
        router.service(RunService, {
          getRun: (request, context) => {
            server.#record("getRun", context.requestHeader);
            return { run: snapshot(request.runId) };
          },
          async *watchRun(request, context) {
            server.#record("watchRun", context.requestHeader);
            if (request.runId === "r1") {
              yield { snapshot: snapshot(request.runId) };
              return;
            }
            // A run that never ends: the stream stays open until the client aborts it, or
            // ("drop") the server drops the connection under it.
            yield { snapshot: create(RunSnapshotSchema, { runId: request.runId, status: RunStatus.RUNNING }) };
            if (request.runId === "drop") server.#dropConnections();
            await new Promise((resolve) => context.signal.addEventListener("abort", resolve));
          },
          async *tailLogs(_request, context) {
            server.#record("tailLogs", context.requestHeader);
          },
        }),
    });
    server.#server = createServer(handler);
    server.#server.on("session", (session: ServerHttp2Session) => {
      server.#sessions.add(session);
      session.on("close", () => server.#sessions.delete(session));
    });
    await new Promise<void>((resolve) => server.#server.listen(0, "127.0.0.1", resolve));
    server.address = `127.0.0.1:${(server.#server.address() as AddressInfo).port}`;
    return server;
  }

  #record(method: string, header: Headers): void {
    this.seen.push({ method, authorization: header.get("authorization") });
  }

  #dropConnections(): void {
    for (const session of this.#sessions) session.destroy();
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.#server.close(() => resolve());
      this.#dropConnections();
    });
  }
}

describe("the token travels as a bearer header", () => {
  let server: RecordingServer;
  before(async () => {
    server = await RecordingServer.start();
  });
  after(async () => {
    await server.close();
  });

  async function callEverything(client: Client): Promise<void> {
    try {
      await client.getRun("r1");
      for await (const _ of client.watch("r1"));
      for await (const _ of client.tailLogs("r1"));
    } finally {
      client.close();
    }
  }

  test("on unary calls and server streams, when given", async () => {
    server.seen.length = 0;
    await callEverything(Client.connect(server.address, { token: TOKEN }));
    assert.deepEqual(server.seen, [
      { method: "getRun", authorization: `Bearer ${TOKEN}` },
      { method: "watchRun", authorization: `Bearer ${TOKEN}` },
      { method: "tailLogs", authorization: `Bearer ${TOKEN}` },
    ]);
  });

  test("not at all without a token", async () => {
    server.seen.length = 0;
    await callEverything(Client.connect(`http://${server.address}`));
    assert.deepEqual(
      server.seen.map((s) => s.authorization),
      [null, null, null],
    );
  });

  test("on the worker's bidi stream, on every reconnect", async () => {
    const coordinator = await ScriptedCoordinator.start();
    const worker = new StepWorker(
      workerOptions({ address: coordinator.address, token: TOKEN, reconnect: { initialMs: 1, maxMs: 5 }, onError: () => {} }),
    );
    const running = worker.run();
    try {
      const first = await coordinator.nextStream();
      assert.equal(first.requestHeader.get("authorization"), `Bearer ${TOKEN}`);
      await first.expect("hello");
      first.reset(Code.Unavailable, "scripted reset");
      const second = await coordinator.nextStream();
      assert.equal(second.requestHeader.get("authorization"), `Bearer ${TOKEN}`);
      await second.expect("hello");
      // Welcomed, the session closes as soon as the drain below begins.
      second.send({ case: "welcome", value: { sessionId: "s2", coordinatorId: "scripted" } });
      await worker.waitConnected();
    } finally {
      worker.drain(0);
      await running;
      await coordinator.close();
    }
  });

  test("a connection dropped under a stream is CoordinatorUnavailableError; the caller's abort is not", async () => {
    const client = Client.connect(server.address);
    try {
      await assert.rejects(
        (async () => {
          for await (const _ of client.watch("drop"));
        })(),
        CoordinatorUnavailableError,
      );
      const abort = new AbortController();
      await assert.rejects(
        (async () => {
          for await (const _ of client.watch("hang", { signal: abort.signal })) abort.abort();
        })(),
        (err: unknown) => {
          assert.ok(err instanceof LedgerflowError && !(err instanceof CoordinatorUnavailableError), String(err));
          return true;
        },
      );
    } finally {
      client.close();
    }
  });

  test("a TLS handshake with a plaintext server is CoordinatorUnavailableError", async () => {
    const client = Client.connect(server.address, { tls: true, token: TOKEN });
    try {
      await assert.rejects(client.getRun("r1"), (err: unknown) => {
        assert.ok(err instanceof CoordinatorUnavailableError, String(err));
        assert.match(err.message, /TLS handshake failed/);
        assert.ok(!err.message.includes(TOKEN));
        return true;
      });
    } finally {
      client.close();
    }
  });
});

describe("against ledgerflow server --auth-tokens", () => {
  const tokens = { worker: newToken(), client: newToken() };
  let dir: string;
  let coordinator: Server;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "ledgerflow-ts-tokens-"));
    const file = join(dir, "tokens.toml");
    const entry = (name: string, token: string, scope: string) =>
      `[[tokens]]\nname = "${name}"\nsha256 = "${createHash("sha256").update(token).digest("hex")}"\nscopes = ["${scope}"]\n\n`;
    writeFileSync(file, entry("ts-worker", tokens.worker, "worker") + entry("ts-app", tokens.client, "client"));
    coordinator = await startServer(["--auth-tokens", file]);
  });

  after(async () => {
    await coordinator.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Asserts the call was refused with `code`, as a LedgerflowError that does not echo `token`. */
  function refused(code: Code, token?: string) {
    return (err: unknown) => {
      assert.ok(err instanceof LedgerflowError, String(err));
      assert.ok(!(err instanceof CoordinatorUnavailableError), String(err));
      assert.ok(err.cause instanceof ConnectError);
      assert.equal(err.cause.code, code);
      if (token !== undefined) assert.ok(!inspect(err, { depth: 8 }).includes(token));
      return true;
    };
  }

  test("a client token starts and reads runs", async () => {
    const client = Client.connect(coordinator.address, { token: tokens.client });
    try {
      const started = await client.start("producer.demo", null, { runId: "with-token" });
      assert.equal(started.created, true);
      assert.equal((await client.getRun("with-token")).runId, "with-token");
    } finally {
      client.close();
    }
  });

  test("no token or an unknown one is UNAUTHENTICATED, on calls and streams", async () => {
    const wrong = newToken();
    for (const options of [{}, { token: wrong }]) {
      const client = Client.connect(coordinator.address, options);
      try {
        await assert.rejects(client.start("producer.demo", null), refused(Code.Unauthenticated, wrong));
        await assert.rejects(
          (async () => {
            for await (const _ of client.watch("with-token"));
          })(),
          refused(Code.Unauthenticated, wrong),
        );
      } finally {
        client.close();
      }
    }
  });

  test("a worker token is PermissionDeniedError on RunService", async () => {
    const client = Client.connect(coordinator.address, { token: tokens.worker });
    try {
      await assert.rejects(client.getRun("with-token"), (err: unknown) => {
        assert.ok(err instanceof PermissionDeniedError, String(err));
        assert.match(err.message, /lacks the 'client' scope/);
        return refused(Code.PermissionDenied, tokens.worker)(err);
      });
    } finally {
      client.close();
    }
  });

  test("a step worker with a worker token is welcomed; with a client token it is refused for good", async () => {
    const welcomed = new StepWorker(workerOptions({ address: coordinator.address, token: tokens.worker }));
    const running = welcomed.run();
    await welcomed.waitConnected();
    welcomed.drain(0);
    await running;

    const denied = new StepWorker(workerOptions({ address: coordinator.address, token: tokens.client }));
    await assert.rejects(denied.run(), (err: unknown) => {
      assert.ok(err instanceof WorkerRefusedError, String(err));
      assert.ok(err.cause instanceof ConnectError);
      assert.equal(err.cause.code, Code.PermissionDenied);
      assert.ok(!inspect(err, { depth: 8 }).includes(tokens.client));
      return true;
    });
  });
});
