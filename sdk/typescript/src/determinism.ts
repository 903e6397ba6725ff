/**
 * Deterministic randomness, bit-exact with every other ledgerflow SDK.
 *
 * Workflow replay needs `random()` and `uuid4()` to return the same sequence for a run on
 * every replay and in every language, so the algorithm is fixed by the conformance vectors
 * (`tests/vectors/determinism.json`): Mulberry32 seeded with FNV-1a-32 of the run id's
 * UTF-16 code units.
 *
 * @module
 */

const FNV_OFFSET = 0x811c9dc5;
const FNV_PRIME = 0x01000193;
const HEX = "0123456789abcdef";

/**
 * Hashes `text` with 32-bit FNV-1a over its UTF-16 code units.
 *
 * Code units, not code points: a character outside the Basic Multilingual Plane contributes
 * its two surrogates, which is what `charCodeAt` gives and what the other SDKs reproduce.
 *
 * @param text - The string to hash (a run id).
 * @returns The unsigned 32-bit hash.
 */
export function fnv1a32(text: string): number {
  let h = FNV_OFFSET;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, FNV_PRIME) >>> 0;
  }
  return h >>> 0;
}

/** The Mulberry32 generator: fast and reproducible, not cryptographic. */
export class Mulberry32 {
  #state: number;

  /** @param seed - The seed; only its low 32 bits are used. */
  constructor(seed: number) {
    this.#state = seed >>> 0;
  }

  /** Advances the generator and returns its next unsigned 32-bit output. */
  nextUint32(): number {
    this.#state = (this.#state + 0x6d2b79f5) >>> 0;
    let t = this.#state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** Returns the next float in [0, 1). */
  random(): number {
    return this.nextUint32() / 4294967296;
  }
}

/**
 * The random source of one run: `random()` and `uuid4()` draw from one stream, in call order
 * (a uuid consumes 16 draws), exactly as the other SDKs do.
 *
 * @example
 * ```ts
 * const rng = new DeterministicRandom("run-1");
 * rng.random(); // 0.0648... on every replay, in every SDK
 * ```
 */
export class DeterministicRandom {
  readonly #rng: Mulberry32;

  /** @param runId - The run whose stream this is. */
  constructor(runId: string) {
    this.#rng = new Mulberry32(fnv1a32(runId));
  }

  /** Returns the next float in [0, 1). */
  random(): number {
    return this.#rng.random();
  }

  /** Returns the next v4-shaped uuid (version and variant bits set), lower-case. */
  uuid4(): string {
    const bytes: number[] = [];
    for (let i = 0; i < 16; i++) bytes.push(Math.floor(this.#rng.random() * 256));
    bytes[6] = (bytes[6]! & 0x0f) | 0x40;
    bytes[8] = (bytes[8]! & 0x3f) | 0x80;
    const s = bytes.map((b) => HEX[b >> 4]! + HEX[b & 0x0f]!).join("");
    return `${s.slice(0, 8)}-${s.slice(8, 12)}-${s.slice(12, 16)}-${s.slice(16, 20)}-${s.slice(20, 32)}`;
  }
}
