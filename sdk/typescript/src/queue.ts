/**
 * A minimal unbounded async queue: the request side of a bidi stream, and the scripted test
 * coordinator's mailboxes. Internal.
 *
 * @module
 */

/** Items pushed by one side, consumed in order by one async iterator. */
export class AsyncQueue<T> implements AsyncIterable<T> {
  #items: T[] = [];
  #waiter: ((result: IteratorResult<T>) => void) | undefined;
  #closed = false;

  /** Adds an item; ignored once closed (a closed stream takes nothing more). */
  push(item: T): void {
    if (this.#closed) return;
    if (this.#waiter) {
      const waiter = this.#waiter;
      this.#waiter = undefined;
      waiter({ value: item, done: false });
    } else {
      this.#items.push(item);
    }
  }

  /** Ends the iteration once the items already pushed are consumed. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#waiter && this.#items.length === 0) {
      const waiter = this.#waiter;
      this.#waiter = undefined;
      waiter({ value: undefined, done: true });
    }
  }

  /** Whether {@link close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Returns the next item, or `done` once closed and empty. */
  next(): Promise<IteratorResult<T>> {
    if (this.#items.length > 0) return Promise.resolve({ value: this.#items.shift()!, done: false });
    if (this.#closed) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => (this.#waiter = resolve));
  }

  /**
   * Iterates with a full async generator: connect-node drives request streams with
   * `throw()`/`return()` as well as `next()`. Ending the iteration early closes the queue.
   */
  async *[Symbol.asyncIterator](): AsyncGenerator<T> {
    try {
      for (;;) {
        const next = await this.next();
        if (next.done) return;
        yield next.value;
      }
    } finally {
      this.close();
    }
  }
}
