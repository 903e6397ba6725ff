// Runs one case of tests/vectors/status_patches.json, as tests/ledger/test_vectors.py does.
import assert from "node:assert/strict";

import { EventSource, emptySnapshot, eventsFromStatusPatch, reduceEvents } from "../../src/index.js";
import {
  comparable,
  eventFromJson,
  eventToJson,
  type Json,
  type JsonObject,
  statusPatchFromJson,
} from "./reference-json.js";

const SOURCES: Record<string, EventSource> = {
  worker: EventSource.WORKER,
  coordinator: EventSource.COORDINATOR,
  system: EventSource.SYSTEM,
};

/** The case's expected events with ledgerflow's documented deviation applied. */
function expectedEvents(c: JsonObject): JsonObject[] {
  const expected = (c["events"] as JsonObject[]).map((e) => ({ ...e }));
  const deviation = c["ledgerflow_deviation"] as JsonObject | undefined;
  if (deviation !== undefined) {
    const replace = deviation["replaceType"] as { from: string; to: string };
    const matching = expected.filter((e) => e["type"] === replace.from);
    assert.equal(matching.length, 1, "a deviation case has exactly one terminal event");
    matching[0]!["type"] = replace.to;
  }
  return expected;
}

export function runStatusPatchCase(c: JsonObject): void {
  const patchJson = c["patch"] as JsonObject;
  const runId = patchJson["runId"] as string;
  const previous = reduceEvents(emptySnapshot(runId), (c["previousEvents"] as JsonObject[]).map(eventFromJson));
  const events = eventsFromStatusPatch(
    statusPatchFromJson(patchJson),
    previous,
    BigInt(c["now"] as number) * 1_000_000n,
    SOURCES[(c["source"] as string | undefined) ?? "worker"],
  );
  assert.deepEqual(comparable(events.map(eventToJson) as Json), comparable(expectedEvents(c) as Json));
}
