import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { create, fromBinary, fromJson, toBinary, toJson } from "@bufbuild/protobuf";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";

import {
  EventSource,
  LedgerEventSchema,
  PayloadSchema,
  RunCreatedSchema,
  emptySnapshot,
  reduceEvents,
} from "../src/index.js";

const encoder = new TextEncoder();

function runCreatedEvent() {
  return create(LedgerEventSchema, {
    runId: "run-1",
    seq: 1n,
    eventTime: timestampFromDate(new Date("2026-01-02T03:04:05.678Z")),
    source: EventSource.CLIENT,
    payload: {
      case: "runCreated",
      value: create(RunCreatedSchema, {
        workflowName: "order.checkout",
        input: create(PayloadSchema, {
          encoding: "json/plain",
          data: encoder.encode('{"order_id":42}'),
        }),
        tags: ["a", "b"],
        idempotencyKey: "key-1",
      }),
    },
  });
}

describe("LedgerEvent", () => {
  test("round-trips through the binary wire format", () => {
    const event = runCreatedEvent();
    const bytes = toBinary(LedgerEventSchema, event);
    assert.ok(bytes.length > 0);

    const decoded = fromBinary(LedgerEventSchema, bytes);
    assert.equal(decoded.runId, "run-1");
    assert.equal(decoded.seq, 1n);
    assert.equal(decoded.source, EventSource.CLIENT);
    assert.ok(decoded.eventTime);
    assert.equal(timestampDate(decoded.eventTime).toISOString(), "2026-01-02T03:04:05.678Z");
    assert.equal(decoded.payload.case, "runCreated");
    if (decoded.payload.case === "runCreated") {
      assert.equal(decoded.payload.value.workflowName, "order.checkout");
      assert.deepEqual(decoded.payload.value.tags, ["a", "b"]);
      assert.deepEqual(decoded.payload.value.input?.data, encoder.encode('{"order_id":42}'));
    }
    assert.deepEqual(toBinary(LedgerEventSchema, decoded), bytes);
  });

  test("uses the proto3 JSON mapping", () => {
    const json = toJson(LedgerEventSchema, runCreatedEvent());
    assert.deepEqual(json, {
      runId: "run-1",
      seq: "1",
      eventTime: "2026-01-02T03:04:05.678Z",
      source: "EVENT_SOURCE_CLIENT",
      runCreated: {
        workflowName: "order.checkout",
        input: { encoding: "json/plain", data: "eyJvcmRlcl9pZCI6NDJ9" },
        tags: ["a", "b"],
        idempotencyKey: "key-1",
      },
    });
    const back = fromJson(LedgerEventSchema, json);
    assert.deepEqual(toBinary(LedgerEventSchema, back), toBinary(LedgerEventSchema, runCreatedEvent()));
  });

  test("an empty event has no payload case", () => {
    const empty = fromBinary(LedgerEventSchema, new Uint8Array());
    assert.equal(empty.payload.case, undefined);
    assert.equal(empty.seq, 0n);
  });
});

describe("reducer", () => {
  test("run_created records the run's identity: namespace, parent, idempotency key", () => {
    const event = runCreatedEvent();
    if (event.payload.case === "runCreated") {
      event.payload.value.namespace = "billing";
      event.payload.value.parentRunId = "parent-1";
    }
    const snap = reduceEvents(emptySnapshot("run-1"), [event]);
    assert.equal(snap.namespace, "billing");
    assert.equal(snap.parentRunId, "parent-1");
    assert.equal(snap.idempotencyKey, "key-1");
  });
});
