/**
 * Reconnect delays: exponential backoff with full jitter.
 *
 * Full jitter (a uniform draw between 0 and the exponential ceiling) spreads the reconnects of
 * many workers that lost the same coordinator at the same instant, so a restarted coordinator
 * is not hit by all of them in the same millisecond (the Python worker does the same).
 *
 * @module
 */

// 2^30 times any sane initial delay is past any cap; keeps the float finite.
const MAX_EXPONENT = 30;

/** Delays for consecutive failed attempts: uniform in [0, min(maxMs, initialMs * 2^n)]. */
export class Backoff {
  #failures = 0;

  /**
   * @param initialMs - The ceiling of the first delay.
   * @param maxMs - The largest ceiling.
   * @param rng - A uniform draw in [0, 1); tests inject a fixed one.
   */
  constructor(
    readonly initialMs: number,
    readonly maxMs: number,
    private readonly rng: () => number = Math.random,
  ) {}

  /** How many delays were drawn since the last {@link reset}. */
  get failures(): number {
    return this.#failures;
  }

  /** Returns the delay before the next attempt and counts one more failure. */
  nextDelayMs(): number {
    const ceiling = Math.min(this.maxMs, this.initialMs * 2 ** Math.min(this.#failures, MAX_EXPONENT));
    this.#failures += 1;
    return this.rng() * ceiling;
  }

  /** Starts again from the first delay (after a successful connection). */
  reset(): void {
    this.#failures = 0;
  }
}
