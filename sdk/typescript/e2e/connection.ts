// What the end-to-end scripts share: where the coordinator is and how to present themselves,
// read from the environment as the Python CLI reads it — LEDGERFLOW_ADDRESS,
// LEDGERFLOW_TOKEN, LEDGERFLOW_TLS_CA (a CA file: connect over TLS trusting it) — plus
// LEDGERFLOW_E2E_TLS_CERT and LEDGERFLOW_E2E_TLS_KEY, a client certificate for mutual TLS
// (the CLI has no flag for one yet). And how a script reports the error it ends with.
import { readFileSync } from "node:fs";

import { Code, ConnectError } from "@connectrpc/connect";

import type { ConnectionOptions } from "../src/index.js";

/** The coordinator's address and the connection options the environment asks for. */
export function connectionFromEnv(): { address: string; options: ConnectionOptions } {
  const env = process.env;
  const address = env.LEDGERFLOW_ADDRESS || "127.0.0.1:7170";
  const options: ConnectionOptions = {};
  if (env.LEDGERFLOW_TOKEN) options.token = env.LEDGERFLOW_TOKEN;
  if (env.LEDGERFLOW_TLS_CA) {
    const cert = env.LEDGERFLOW_E2E_TLS_CERT;
    const key = env.LEDGERFLOW_E2E_TLS_KEY;
    options.tls = {
      ca: readFileSync(env.LEDGERFLOW_TLS_CA),
      ...(cert && key ? { cert: readFileSync(cert), key: readFileSync(key) } : {}),
    };
  }
  return { address, options };
}

/**
 * Prints `{"error": {name, code, message}}` (code: the gRPC status the error came from, if
 * any) as the script's last stdout line and sets exit status 1, so a test can assert on it.
 */
export function reportError(err: unknown): void {
  const cause = err instanceof Error ? err.cause : undefined;
  const status = cause instanceof ConnectError ? cause : err instanceof ConnectError ? err : undefined;
  console.log(
    JSON.stringify({
      error: {
        name: err instanceof Error ? err.name : typeof err,
        code: status === undefined ? null : Code[status.code],
        message: err instanceof Error ? err.message : String(err),
      },
    }),
  );
  process.exitCode = 1;
}
