// Reference oracle: runs the reference TypeScript algorithms (DESIGN.md §3) as a test oracle.
//
// The reference sources are someone else's code and are NOT in this repository. At start-up
// this script reads them from `<repo>/../shared/reference` (or $LEDGERFLOW_REFERENCE_DIR),
// extracts `000_*.txt` as ledger.ts and the first hunk of `003_*.txt` as determinism.ts into a
// temporary directory, transpiles both with the `typescript` package from
// sdk/typescript/node_modules (transpileModule, ESM output) and imports them.
//
// Protocol: one JSON request per stdin line, one JSON response per stdout line, in order, so
// one node process serves a whole test session. Failures answer {"error": "..."}. Ops:
//   {"op":"reduce","events":[...]}                -> {"snapshots":[...]}  one per runId, first-seen
//                                                    order, each reduced from
//                                                    createEmptyPlayRunLedgerSnapshot({runId})
//   {"op":"reduceOne","runId":"r","events":[...]} -> {"snapshot":{...}}   all events into r's
//                                                    snapshot, ungrouped (other runs' events are
//                                                    handed to the reducer, which ignores them)
//   {"op":"slice","bufferLines":[...],"bufferTotalCount":n,"sentCount":n}
//                                                 -> {"slice":{"lines":[...],"channelOffset":n}|null}
//   {"op":"statusPatch","patch":{...},"previousSnapshot":{...}|"previousEvents":[...],
//    "now":ms,"source":"worker"}                  -> {"events":[...]}  (previousEvents are reduced
//                                                    from createEmptyPlayRunLedgerSnapshot
//                                                    ({runId: patch.runId}))
//   {"op":"random","runId":"r","count":n}         -> {"values":[...]}  createRandom(r), n draws
//   {"op":"uuid","runId":"r","count":n}           -> {"values":[...]}  createRandomUUID(createRandom(r))
//   {"op":"sequence","runId":"r","calls":["random","uuid",...]}
//                                                 -> {"values":[...]}  one stream, calls interleaved
//   {"op":"hash","runId":"r"}                     -> {"hash":n}        hashSeed(r)
//   {"op":"ping"}                                 -> {"ok":true}
// Usage: node tests/oracle/reference_oracle.mjs   (driven by tests/reference_oracle.py)

import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const referenceDir = resolve(
  process.env.LEDGERFLOW_REFERENCE_DIR || join(repoRoot, '..', 'shared', 'reference'),
);

function fail(message) {
  process.stderr.write(`reference oracle: ${message}\n`);
  process.exit(3);
}

function findReferenceFile(prefix) {
  let names;
  try {
    names = readdirSync(referenceDir);
  } catch (err) {
    fail(`cannot read reference directory ${referenceDir}: ${err.message}`);
  }
  const matches = names.filter((name) => name.startsWith(prefix) && name.endsWith('.txt')).sort();
  if (matches.length !== 1) {
    fail(`expected exactly one ${prefix}*.txt in ${referenceDir}, found ${matches.length}`);
  }
  return join(referenceDir, matches[0]);
}

// Rebuild the source of hunk number `hunkIndex` (0-based) of a package diff: after a 3-line
// header, "@@ -0,0 +1,N @@" starts a file of N lines; each line is its number on a line of its
// own, then "+ code" (or a lone "+" for a blank line).
function extractHunk(path, hunkIndex) {
  const rawLines = readFileSync(path, 'utf8').split('\n');
  const hunks = [];
  let current = null;
  let lineNo = null;
  for (const raw of rawLines.slice(3)) {
    const header = /^@@ -0,0 \+1,(\d+) @@$/.exec(raw);
    if (header) {
      current = { size: Number(header[1]), lines: new Map() };
      hunks.push(current);
      lineNo = null;
    } else if (current === null) {
      continue;
    } else if (lineNo === null && /^\d+$/.test(raw)) {
      lineNo = Number(raw);
    } else if (lineNo !== null && (raw === '+' || raw.startsWith('+ '))) {
      current.lines.set(lineNo, raw.slice(2));
      lineNo = null;
    } else if (raw !== '') {
      fail(`${path}: unexpected line ${JSON.stringify(raw.slice(0, 80))}`);
    }
  }
  const hunk = hunks[hunkIndex];
  if (!hunk) fail(`${path}: no hunk #${hunkIndex + 1}`);
  const out = [];
  for (let i = 1; i <= hunk.size; i++) {
    if (!hunk.lines.has(i)) fail(`${path}: hunk #${hunkIndex + 1} lacks line ${i}`);
    out.push(hunk.lines.get(i));
  }
  return `${out.join('\n')}\n`;
}

const requireFromSdk = createRequire(join(repoRoot, 'sdk', 'typescript', 'package.json'));
let ts;
try {
  ts = requireFromSdk('typescript');
} catch (err) {
  fail(`cannot load typescript from sdk/typescript/node_modules (run npm ci): ${err.message}`);
}

function transpile(source, fileName) {
  const result = ts.transpileModule(source, {
    fileName,
    reportDiagnostics: true,
    compilerOptions: {
      module: ts.ModuleKind.ESNext,
      target: ts.ScriptTarget.ES2022,
      isolatedModules: true,
    },
  });
  const errors = (result.diagnostics ?? []).filter(
    (d) => d.category === ts.DiagnosticCategory.Error,
  );
  if (errors.length > 0) {
    fail(`${fileName}: ${ts.flattenDiagnosticMessageText(errors[0].messageText, '\n')}`);
  }
  return result.outputText;
}

const workDir = mkdtempSync(join(tmpdir(), 'ledgerflow-oracle-'));
let ledger;
let determinism;
try {
  const ledgerJs = join(workDir, 'ledger.mjs');
  const determinismJs = join(workDir, 'determinism.mjs');
  writeFileSync(ledgerJs, transpile(extractHunk(findReferenceFile('000_'), 0), 'ledger.ts'));
  writeFileSync(
    determinismJs,
    transpile(extractHunk(findReferenceFile('003_'), 0), 'determinism.ts'),
  );
  ledger = await import(pathToFileURL(ledgerJs).href);
  determinism = await import(pathToFileURL(determinismJs).href);
} finally {
  rmSync(workDir, { recursive: true, force: true });
}

function requireString(value, name) {
  if (typeof value !== 'string') throw new Error(`${name} must be a string`);
  return value;
}

function requireArray(value, name) {
  if (!Array.isArray(value)) throw new Error(`${name} must be an array`);
  return value;
}

function requireCount(value) {
  if (!Number.isInteger(value) || value < 0) throw new Error('count must be an integer >= 0');
  return value;
}

function emptySnapshot(runId) {
  return ledger.createEmptyPlayRunLedgerSnapshot({ runId });
}

const handlers = {
  ping: () => ({ ok: true }),
  reduce: (req) => {
    const byRun = new Map();
    for (const event of requireArray(req.events, 'events')) {
      const runId = requireString(event?.runId, 'events[].runId');
      if (!byRun.has(runId)) byRun.set(runId, []);
      byRun.get(runId).push(event);
    }
    const snapshots = [];
    for (const [runId, events] of byRun) {
      snapshots.push(ledger.reducePlayRunLedgerEvents(emptySnapshot(runId), events));
    }
    return { snapshots };
  },
  reduceOne: (req) => ({
    snapshot: ledger.reducePlayRunLedgerEvents(
      emptySnapshot(requireString(req.runId, 'runId')),
      requireArray(req.events, 'events'),
    ),
  }),
  slice: (req) => ({
    slice: ledger.slicePositionalLogLines({
      bufferLines: requireArray(req.bufferLines, 'bufferLines'),
      bufferTotalCount: req.bufferTotalCount,
      sentCount: req.sentCount,
    }),
  }),
  statusPatch: (req) => {
    const patch = req.patch;
    if (!patch || typeof patch !== 'object') throw new Error('patch must be an object');
    const previousSnapshot =
      req.previousSnapshot ??
      ledger.reducePlayRunLedgerEvents(
        emptySnapshot(requireString(patch.runId, 'patch.runId')),
        requireArray(req.previousEvents ?? [], 'previousEvents'),
      );
    return {
      events: ledger.buildPlayRunLedgerEventsFromStatusPatch({
        patch,
        previousSnapshot,
        ...(req.now !== undefined ? { now: req.now } : {}),
        ...(req.source !== undefined ? { source: req.source } : {}),
      }),
    };
  },
  random: (req) => {
    const rng = determinism.createRandom(requireString(req.runId, 'runId'));
    return { values: Array.from({ length: requireCount(req.count) }, () => rng()) };
  },
  uuid: (req) => {
    const uuid = determinism.createRandomUUID(
      determinism.createRandom(requireString(req.runId, 'runId')),
    );
    return { values: Array.from({ length: requireCount(req.count) }, () => uuid()) };
  },
  sequence: (req) => {
    const rng = determinism.createRandom(requireString(req.runId, 'runId'));
    const uuid = determinism.createRandomUUID(rng);
    return {
      values: requireArray(req.calls, 'calls').map((call) => {
        if (call === 'random') return rng();
        if (call === 'uuid') return uuid();
        throw new Error(`unknown call ${JSON.stringify(call)}`);
      }),
    };
  },
  hash: (req) => ({ hash: determinism.hashSeed(requireString(req.runId, 'runId')) }),
};

function handle(line) {
  try {
    const req = JSON.parse(line);
    const handler = Object.hasOwn(handlers, req?.op) ? handlers[req.op] : undefined;
    if (!handler) throw new Error(`unknown op ${JSON.stringify(req?.op)}`);
    return JSON.stringify(handler(req));
  } catch (err) {
    return JSON.stringify({
      error: err instanceof Error ? err.message : String(err),
      ...(err instanceof Error && err.stack ? { stack: err.stack } : {}),
    });
  }
}

// Split stdin on "\n" only (never on U+2028 & co.), answer each line in order.
let pending = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  pending += chunk;
  let newline = pending.indexOf('\n');
  while (newline >= 0) {
    const line = pending.slice(0, newline);
    pending = pending.slice(newline + 1);
    if (line.trim() !== '') process.stdout.write(`${handle(line)}\n`);
    newline = pending.indexOf('\n');
  }
});
process.stdin.on('end', () => {
  if (pending.trim() !== '') process.stdout.write(`${handle(pending)}\n`);
});
