/**
 * A bounded LRU of unwrapped data keys, so that reopening a segment or projection does not call the
 * KMS each time (AWS KMS bills and throttles per request). Memory only: nothing here is ever written,
 * logged or serialized (inspect and JSON show the entry count, never a key), and evicted keys are
 * zeroed.
 *
 * Entries are found by SHA-256 over (provider, wrapped key, encryption context), never by the
 * wrapped key alone: a wrapped key copied into another file's header must miss the cache and reach
 * the KMS, which refuses it for the wrong context. Entries older than `ageMsMax` are unwrapped again,
 * which bounds how long a key revoked in the KMS stays usable for files opened after the revocation.
 */

import { createHash } from "node:crypto";
import { InvalidArgumentError } from "../errors.js";
import {
  DATA_KEY_BYTES,
  DATA_KEY_CACHE_AGE_MS_DEFAULT,
  DATA_KEY_CACHE_ENTRIES_DEFAULT,
  DATA_KEY_CACHE_ENTRIES_MAX,
  DATA_KEY_UNWRAPS_INFLIGHT_MAX,
} from "./crypto-limits.js";
import type { EncryptionContext } from "./encryption-context.js";
import { encodeEncryptionContext } from "./encryption-context.js";
import type { GeneratedDataKey, KeyDescription, KeyProvider, KmsProviderKind, UnwrapOptions, WrappedDataKey } from "./kms.js";

export interface DataKeyCacheOptions {
  /** Entries at most (1 .. DATA_KEY_CACHE_ENTRIES_MAX); the least recently used goes first. */
  readonly entriesMax?: number;
  /** An entry is used for at most this long after it was unwrapped. */
  readonly ageMsMax?: number;
  /** Injected clock in milliseconds (monotonic); defaults to performance.now. */
  readonly now?: () => number;
}

interface Entry {
  readonly key: Buffer;
  readonly storedAtMs: number;
}

/** The cache's lookup key for a wrapped key in a context. */
export function dataKeyDigest(provider: KmsProviderKind, wrapped: Uint8Array, context: EncryptionContext): string {
  const length = Buffer.alloc(4);
  length.writeUInt32LE(wrapped.length, 0);
  return createHash("sha256").update(provider).update("\0").update(length).update(wrapped)
    .update(encodeEncryptionContext(context)).digest("hex");
}

export class DataKeyCache {
  readonly entriesMax: number;
  readonly ageMsMax: number;
  private readonly now: () => number;
  /** Invariant: size <= entriesMax; Map order is least recently used first. */
  private readonly entries = new Map<string, Entry>();
  /** Counters for metrics (verity_encryption_key_cache_*). */
  hits = 0;
  misses = 0;
  evictions = 0;

  constructor(options: DataKeyCacheOptions = {}) {
    this.entriesMax = options.entriesMax ?? DATA_KEY_CACHE_ENTRIES_DEFAULT;
    this.ageMsMax = options.ageMsMax ?? DATA_KEY_CACHE_AGE_MS_DEFAULT;
    this.now = options.now ?? (() => performance.now());
    if (!Number.isSafeInteger(this.entriesMax) || this.entriesMax < 1 || this.entriesMax > DATA_KEY_CACHE_ENTRIES_MAX) {
      throw new InvalidArgumentError(`data key cache entries ${this.entriesMax} must be 1 to DATA_KEY_CACHE_ENTRIES_MAX (${DATA_KEY_CACHE_ENTRIES_MAX})`);
    }
    if (!(this.ageMsMax > 0)) throw new InvalidArgumentError(`data key cache age ${this.ageMsMax} ms must be positive`);
  }

  get size(): number {
    return this.entries.size;
  }

  /** A copy of the cached key (the caller may zero it), or undefined. */
  get(digest: string): Buffer | undefined {
    const entry = this.entries.get(digest);
    if (entry === undefined) {
      this.misses++;
      return undefined;
    }
    this.entries.delete(digest);
    if (this.now() - entry.storedAtMs > this.ageMsMax) {
      entry.key.fill(0);
      this.misses++;
      return undefined;
    }
    this.entries.set(digest, entry); // most recently used now
    this.hits++;
    return Buffer.from(entry.key);
  }

  /** Stores a copy of `key`, evicting (and zeroing) the least recently used past the bound. */
  set(digest: string, key: Uint8Array): void {
    if (key.length !== DATA_KEY_BYTES) throw new InvalidArgumentError(`a data key is ${DATA_KEY_BYTES} bytes, not ${key.length}`);
    const old = this.entries.get(digest);
    if (old !== undefined) {
      this.entries.delete(digest);
      old.key.fill(0);
    }
    this.entries.set(digest, { key: Buffer.from(key), storedAtMs: this.now() });
    while (this.entries.size > this.entriesMax) {
      const [oldest, entry] = this.entries.entries().next().value as [string, Entry];
      this.entries.delete(oldest);
      entry.key.fill(0);
      this.evictions++;
    }
  }

  /** Forgets every key (zeroing it): on close, and when keys are revoked on purpose. */
  clear(): void {
    for (const entry of this.entries.values()) entry.key.fill(0);
    this.entries.clear();
  }

  toJSON(): { entries: number; entriesMax: number } {
    return { entries: this.entries.size, entriesMax: this.entriesMax };
  }

  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return `DataKeyCache { entries: ${this.entries.size}, entriesMax: ${this.entriesMax} }`;
  }
}

/**
 * A KeyProvider that answers unwraps from a DataKeyCache and shares one KMS call between concurrent
 * unwraps of the same key (at most DATA_KEY_UNWRAPS_INFLIGHT_MAX shared at once; past it calls go
 * straight to the KMS). Generated keys are cached too: the segment that made a key reads it next.
 */
export class CachingKeyProvider implements KeyProvider {
  readonly kind: KmsProviderKind;
  private readonly inflight = new Map<string, Promise<Buffer>>();

  constructor(private readonly inner: KeyProvider, readonly cache: DataKeyCache) {
    this.kind = inner.kind;
  }

  async generateDataKey(context: EncryptionContext): Promise<GeneratedDataKey> {
    const key = await this.inner.generateDataKey(context);
    this.cache.set(dataKeyDigest(this.kind, key.wrapped, context), key.plaintext);
    return key;
  }

  async unwrap(wrapped: Uint8Array, context: EncryptionContext, options?: UnwrapOptions): Promise<Buffer> {
    const digest = dataKeyDigest(this.kind, wrapped, context);
    const cached = this.cache.get(digest);
    if (cached !== undefined) return cached;
    const pending = this.inflight.get(digest);
    if (pending !== undefined) return Buffer.from(await pending);
    const call = this.inner.unwrap(wrapped, context, options);
    if (this.inflight.size >= DATA_KEY_UNWRAPS_INFLIGHT_MAX) {
      const key = await call;
      this.cache.set(digest, key);
      return key;
    }
    this.inflight.set(digest, call);
    try {
      const key = await call;
      this.cache.set(digest, key);
      return Buffer.from(key);
    } finally {
      this.inflight.delete(digest);
    }
  }

  async rewrap(wrapped: Uint8Array, context: EncryptionContext, options?: UnwrapOptions): Promise<WrappedDataKey> {
    const result = await this.inner.rewrap(wrapped, context, options);
    const known = this.cache.get(dataKeyDigest(this.kind, wrapped, context));
    if (known !== undefined) {
      this.cache.set(dataKeyDigest(this.kind, result.wrapped, context), known);
      known.fill(0);
    }
    return result;
  }

  describe(): Promise<KeyDescription> {
    return this.inner.describe();
  }

  /**
   * Re-reads key material after a rotation, for providers that hold it in memory (the local key
   * file: LocalKeyProvider.reload); a no-op for the others, whose KMS rotates server-side.
   */
  async reload(): Promise<void> {
    const inner = this.inner as KeyProvider & { reload?: () => Promise<void> };
    if (typeof inner.reload === "function") await inner.reload();
  }

  async close(): Promise<void> {
    this.cache.clear();
    await this.inner.close();
  }
}
