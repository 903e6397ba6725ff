// The TypeScript half of examples/polyglot: a step worker for the kind "polyglot-ts".
//
// Run it from sdk/typescript, whose node_modules provide tsx and the SDK's
// dependencies (this file imports the SDK's sources by relative path):
//
//   cd sdk/typescript && npm ci --ignore-scripts   # once
//   node --import tsx ../../examples/polyglot/worker.ts
//
// LEDGERFLOW_ADDRESS names the coordinator (default 127.0.0.1:7170). It prints
// "polyglot worker ready" once it is set up, and drains on SIGTERM / Ctrl-C.
import { createHash } from "node:crypto";

import { StepWorker } from "../../sdk/typescript/src/index.js";

interface Changes {
  version: string;
  changes: string[];
}

interface Rendered {
  markdown: string;
  sha256: string;
  by: string;
}

const address = process.env.LEDGERFLOW_ADDRESS ?? "127.0.0.1:7170";

const worker = new StepWorker({
  address,
  kinds: ["polyglot-ts"],
  steps: {
    render_notes: async (input: Changes, ctx): Promise<Rendered> => {
      ctx.log.info(`rendering ${input.changes.length} changes for ${input.version}`);
      const lines = [`# Release ${input.version}`, ""];
      for (const [i, change] of input.changes.entries()) {
        if (ctx.signal.aborted) throw ctx.signal.reason; // cancelled, timed out, lease lost
        lines.push(`- ${change}`);
        ctx.progress(i + 1, input.changes.length, change);
      }
      const markdown = lines.join("\n") + "\n";
      const sha256 = createHash("sha256").update(markdown).digest("hex");
      ctx.log.info(`rendered ${markdown.length} bytes, sha256 ${sha256.slice(0, 12)}`);
      return { markdown, sha256, by: `typescript (node ${process.version})` };
    },
  },
});
console.log("polyglot worker ready");
await worker.run();
