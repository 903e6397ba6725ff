/**
 * JSON payloads: the default encoding of inputs, outputs and signal bodies.
 *
 * @module
 */
import { create } from "@bufbuild/protobuf";

import { type Payload, PayloadSchema } from "./gen/ledgerflow/v1/common_pb.js";
import { LedgerflowError } from "./errors.js";

/** The encoding name of a JSON payload. */
export const JSON_ENCODING = "json/plain";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * Encodes a value as a JSON payload. `undefined` is encoded as `null`, since JSON has no
 * undefined and every SDK must decode the payload.
 */
export function jsonPayload(value: unknown): Payload {
  return create(PayloadSchema, {
    encoding: JSON_ENCODING,
    data: encoder.encode(JSON.stringify(value ?? null)),
  });
}

/**
 * Decodes a JSON payload; an absent or empty payload is `null`.
 *
 * @throws {@link LedgerflowError} if the payload has another encoding.
 */
export function payloadValue(payload: Payload | undefined): unknown {
  if (payload === undefined || payload.data.length === 0) return null;
  if (payload.encoding !== "" && payload.encoding !== JSON_ENCODING) {
    throw new LedgerflowError(`payload encoding ${payload.encoding} is not ${JSON_ENCODING}`);
  }
  return JSON.parse(decoder.decode(payload.data)) as unknown;
}
