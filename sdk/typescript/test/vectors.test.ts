// The shared conformance vectors (tests/vectors/*.json) against the TypeScript SDK.
//
// The same files run under pytest (tests/ledger/test_vectors.py); every vector file must have
// a runner here, so a vector added for one SDK cannot silently skip the other.
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { describe, test } from "node:test";
import { fileURLToPath } from "node:url";

import {
  DeterministicRandom,
  emptySnapshot,
  fnv1a32,
  reduceEvents,
  slicePositionalLogLines,
} from "../src/index.js";
import {
  comparable,
  eventFromJson,
  type Json,
  type JsonObject,
  snapshotToJson,
} from "./support/reference-json.js";
import { runStatusPatchCase } from "./support/status-patch-vectors.js";

const VECTORS = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "tests", "vectors");

type Case = JsonObject;

function loadCases(file: string): Case[] {
  const data = JSON.parse(readFileSync(join(VECTORS, file), "utf8")) as JsonObject;
  assert.match(String(data["about"]), /generate\.py/);
  const cases = data["cases"] as Case[];
  assert.ok(cases.length > 0, `${file} has no cases`);
  return cases;
}

function caseName(c: Case): string {
  return String(c["name"] ?? c["runId"] ?? "?").slice(0, 80);
}

function reduceReference(runId: string, events: JsonObject[]) {
  return reduceEvents(emptySnapshot(runId), events.map(eventFromJson));
}

const RUNNERS: Record<string, (cases: Case[]) => void> = {
  "determinism.json": (cases) => {
    for (const c of cases) {
      const runId = c["runId"] as string;
      test(`determinism ${JSON.stringify(runId).slice(0, 40)}`, () => {
        const rng = new DeterministicRandom(runId);
        if ("calls" in c) {
          const values = (c["calls"] as string[]).map((call) =>
            call === "random" ? rng.random() : rng.uuid4(),
          );
          assert.deepEqual(values, c["values"]);
          return;
        }
        assert.equal(fnv1a32(runId), c["hash"]);
        const randoms = (c["random"] as number[]).map(() => rng.random());
        assert.deepEqual(randoms, c["random"]);
        const fresh = new DeterministicRandom(runId);
        assert.deepEqual(
          (c["uuids"] as string[]).map(() => fresh.uuid4()),
          c["uuids"],
        );
      });
    }
  },
  "slicing.json": (cases) => {
    for (const c of cases) {
      test(`slicing: ${caseName(c)}`, () => {
        const got = slicePositionalLogLines(
          c["bufferLines"] as string[],
          c["bufferTotalCount"] as number,
          c["sentCount"] as number,
        );
        assert.deepEqual(got, c["expected"]);
      });
    }
  },
  "ledgers.json": (cases) => {
    for (const c of cases) {
      test(`ledger: ${caseName(c)}`, () => {
        const events = c["events"] as JsonObject[];
        let snapshots;
        if (c["mode"] === "single") {
          snapshots = [reduceReference(c["runId"] as string, events)];
        } else {
          const groups = new Map<string, JsonObject[]>();
          for (const e of events) {
            const runId = e["runId"] as string;
            groups.set(runId, [...(groups.get(runId) ?? []), e]);
          }
          snapshots = [...groups].map(([runId, group]) => reduceReference(runId, group));
        }
        assert.deepEqual(
          comparable(snapshots.map(snapshotToJson) as Json),
          comparable(c["snapshots"] as Json),
        );
      });
    }
  },
  "status_patches.json": (cases) => {
    for (const c of cases) test(`status patch: ${caseName(c)}`, () => runStatusPatchCase(c));
  },
};

describe("conformance vectors", () => {
  test("every vector file has a runner", () => {
    const files = readdirSync(VECTORS).filter((f) => f.endsWith(".json"));
    assert.ok(files.length >= 4, `expected vector files in ${VECTORS}`);
    assert.deepEqual(files.filter((f) => !(f in RUNNERS)), []);
  });

  for (const [file, run] of Object.entries(RUNNERS)) {
    describe(file, () => run(loadCases(file)));
  }
});
