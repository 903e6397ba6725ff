// A TypeScript client for the cross-language end-to-end tests: starts the Python
// workflow "polyglot", watches its snapshots to the end, and prints one JSON line per
// status change, then {"result": ...}.
import { Client } from "../src/index.js";

const address = process.env.LEDGERFLOW_ADDRESS ?? "127.0.0.1:7170";
const runId = process.argv[2] ?? "ts-watched";
const client = Client.connect(address);
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
} finally {
  client.close();
}
