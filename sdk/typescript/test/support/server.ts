// A real `ledgerflow server` subprocess on SQLite, for tests that need the coordinator.
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

/** The repository root (sdk/typescript/test/support -> four levels up). */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "..");

/** The CI venv's `ledgerflow` (scripts/test.sh creates .venv before the node tests run). */
export const LEDGERFLOW_BIN = process.env["LEDGERFLOW_BIN"] ?? join(REPO_ROOT, ".venv", "bin", "ledgerflow");

/** A running coordinator. */
export interface Server {
  readonly address: string;
  /** Sends SIGTERM and waits for the process to exit; removes its database. */
  stop(): Promise<void>;
}

/** Starts `ledgerflow server` on a free loopback port and waits until it listens. */
export async function startServer(extraArgs: string[] = []): Promise<Server> {
  if (!existsSync(LEDGERFLOW_BIN)) {
    throw new Error(`${LEDGERFLOW_BIN} is missing: run 'bash scripts/test.sh' once to create .venv`);
  }
  const dir = mkdtempSync(join(tmpdir(), "ledgerflow-ts-"));
  const child = spawn(
    LEDGERFLOW_BIN,
    [
      "server",
      "--listen",
      "127.0.0.1:0",
      "--database-url",
      `sqlite+aiosqlite:///${join(dir, "x.db")}`,
      ...extraArgs,
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  let stderr = "";
  child.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<number | null>((done) => child.on("exit", (code) => done(code)));
  const lines = createInterface({ input: child.stdout! });
  const first = await new Promise<string>((done, fail) => {
    lines.once("line", done);
    void exited.then((code) => fail(new Error(`ledgerflow server exited ${code}:\n${stderr}`)));
  });
  // Keep draining stdout so the server never blocks on a full pipe.
  lines.on("line", () => {});
  const match = /listening on (\S+)/.exec(first);
  if (!match) {
    child.kill("SIGKILL");
    throw new Error(`unexpected first line from ledgerflow server: ${first}`);
  }
  return {
    address: match[1]!,
    async stop() {
      await stopProcess(child, exited);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function stopProcess(child: ChildProcess, exited: Promise<number | null>): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
  await exited;
}
