// A TypeScript client for the cross-language end-to-end tests: starts the Python
// workflow "polyglot", watches its snapshots to the end, and prints one JSON line per
// status change, then {"result": ...} — or, when a call fails, {"error": ...} and exits 1.
// The connection comes from the environment (./connection.ts): tests/e2e/test_polyglot.py
// connects in plaintext, tests/security/test_typescript_auth.py with a token and TLS.
import { Client } from "../src/index.js";
import { connectionFromEnv, reportError } from "./connection.js";

const { address, options } = connectionFromEnv();
const runId = process.argv[2] ?? "ts-watched";
const client = Client.connect(address, options);
try {
  await client.start("polyglot", "from-typescript.png", { runId });
  let last = -1;
  for await (const snap of client.watch(runId)) {
    if (snap.status !== last) {
      last = snap.status;
      console.log(JSON.stringify({ status: snap.status }));
    }
  }
  console.log(JSON.stringify({ result: await client.result(runId) }));
} catch (err) {
  reportError(err);
} finally {
  client.close();
}
