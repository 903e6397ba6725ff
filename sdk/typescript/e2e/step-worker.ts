// A TypeScript step worker for the cross-language end-to-end tests (tests/e2e/test_polyglot.py).
// Serves the kind "images": the step "resize" logs, reports progress, and — when
// LEDGERFLOW_E2E_GATE names a file — waits for that file before it finishes, so a test
// can kill this process mid-step. Each start of the handler appends a line to
// $LEDGERFLOW_E2E_MARKS/resize, so the test can count real executions. The connection comes
// from the environment (./connection.ts); a worker the coordinator refuses (a bad token)
// prints {"error": ...} and exits 1.
import { appendFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

import { StepWorker } from "../src/index.js";
import { connectionFromEnv, reportError } from "./connection.js";

const { address, options } = connectionFromEnv();
const marks = process.env.LEDGERFLOW_E2E_MARKS ?? ".";
const gate = process.env.LEDGERFLOW_E2E_GATE;

const worker = new StepWorker({
  ...options,
  address,
  kinds: ["images"],
  steps: {
    resize: async (input: { name: string; width: number }, ctx) => {
      appendFileSync(join(marks, "resize"), `attempt ${ctx.attempt}\n`);
      ctx.log.info(`resizing ${input.name} to ${input.width}px`);
      ctx.progress(1, 2, "downloaded");
      if (gate !== undefined) {
        appendFileSync(join(marks, "waiting"), "yes\n");
        // A file is the simplest gate between processes.
        while (!existsSync(gate)) await sleep(10);
      }
      ctx.progress(2, 2, "resized");
      ctx.log.info("done");
      return { name: input.name, width: input.width, by: "typescript" };
    },
  },
});
console.log("step worker ready");
await worker.run().catch(reportError);
