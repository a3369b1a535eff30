import { randomBytes } from "node:crypto";
import { inspect } from "node:util";
import { describe, expect, it } from "vitest";
import { CachingKeyProvider, DataKeyCache, dataKeyDigest } from "../../src/crypto/data-key-cache.js";
import type { EncryptionContext } from "../../src/crypto/encryption-context.js";
import { segmentFileIdentity } from "../../src/crypto/encryption-context.js";
import type { GeneratedDataKey, KeyDescription, KeyProvider, WrappedDataKey } from "../../src/crypto/kms.js";
import { DATA_KEY_CACHE_ENTRIES_MAX } from "../../src/crypto/crypto-limits.js";

const context = (n: number): EncryptionContext => ({ clusterId: "cluster-1", fileIdentity: segmentFileIdentity(n) });

/** A provider that wraps by XOR with a fixed pad and counts calls (enough to test the cache around it). */
class CountingProvider implements KeyProvider {
  readonly kind = "local" as const;
  unwraps = 0;
  private readonly pad = randomBytes(32);
  private gate: Promise<void> = Promise.resolve();
  hold(): () => void {
    let release!: () => void;
    this.gate = new Promise((resolve) => (release = resolve));
    return release;
  }
  async generateDataKey(_context: EncryptionContext): Promise<GeneratedDataKey> {
    const plaintext = randomBytes(32);
    return { plaintext, wrapped: this.xor(plaintext), keyId: "k", keyVersion: "1" };
  }
  async unwrap(wrapped: Uint8Array): Promise<Buffer> {
    this.unwraps++;
    await this.gate;
    return this.xor(Buffer.from(wrapped));
  }
  async rewrap(wrapped: Uint8Array): Promise<WrappedDataKey> {
    return { wrapped: Buffer.concat([Buffer.from(wrapped)]), keyId: "k", keyVersion: "2" };
  }
  async describe(): Promise<KeyDescription> {
    return { provider: "local", keyId: "k", keyVersion: "1", where: "memory" };
  }
  async close(): Promise<void> {}
  private xor(b: Buffer): Buffer {
    return Buffer.from(b.map((x, i) => x ^ this.pad[i]!));
  }
}

describe("DataKeyCache", () => {
  it("keeps at most entriesMax keys, evicting the least recently used and zeroing it", () => {
    const cache = new DataKeyCache({ entriesMax: 3 });
    const keys = Array.from({ length: 5 }, () => randomBytes(32));
    cache.set("a", keys[0]!);
    cache.set("b", keys[1]!);
    cache.set("c", keys[2]!);
    expect(cache.get("a")!.equals(keys[0]!)).toBe(true); // a is now the most recent
    cache.set("d", keys[3]!); // evicts b
    expect(cache.size).toBe(3);
    expect(cache.get("b")).toBeUndefined();
    cache.set("e", keys[4]!); // evicts c
    expect(cache.get("c")).toBeUndefined();
    expect(cache.get("a")).toBeDefined();
    expect(cache.evictions).toBe(2);
    for (let i = 0; i < 10_000; i++) cache.set(`k${i}`, keys[0]!);
    expect(cache.size).toBe(3);
  });

  it("hands out copies, so zeroing what you got does not damage the cache", () => {
    const cache = new DataKeyCache();
    const key = randomBytes(32);
    cache.set("a", key);
    key.fill(0); // the caller zeroes its own buffer after caching
    const got = cache.get("a")!;
    expect(got.equals(Buffer.alloc(32))).toBe(false);
    got.fill(0);
    expect(cache.get("a")!.equals(Buffer.alloc(32))).toBe(false);
  });

  it("expires entries older than ageMsMax (the bound on how long a revoked key keeps working)", () => {
    let nowMs = 0;
    const cache = new DataKeyCache({ ageMsMax: 1000, now: () => nowMs });
    cache.set("a", randomBytes(32));
    nowMs = 999;
    expect(cache.get("a")).toBeDefined();
    nowMs = 1001;
    expect(cache.get("a")).toBeUndefined();
    expect(cache.size).toBe(0);
  });

  it("never shows a key in inspect or JSON", () => {
    const cache = new DataKeyCache();
    const key = randomBytes(32);
    cache.set("a", key);
    const shown = inspect(cache, { depth: 10, showHidden: true }) + JSON.stringify(cache);
    expect(shown).not.toContain(key.toString("hex"));
    expect(shown).not.toContain(key.toString("base64"));
    expect(JSON.stringify(cache)).toBe(JSON.stringify({ entries: 1, entriesMax: cache.entriesMax }));
  });

  it("refuses bounds outside 1..DATA_KEY_CACHE_ENTRIES_MAX", () => {
    expect(() => new DataKeyCache({ entriesMax: 0 })).toThrow(/DATA_KEY_CACHE_ENTRIES_MAX/);
    expect(() => new DataKeyCache({ entriesMax: DATA_KEY_CACHE_ENTRIES_MAX + 1 })).toThrow(/DATA_KEY_CACHE_ENTRIES_MAX/);
  });

  it("digests bind the context: the same wrapped key for another file is another entry", () => {
    const wrapped = randomBytes(73);
    expect(dataKeyDigest("local", wrapped, context(1))).not.toBe(dataKeyDigest("local", wrapped, context(2)));
    expect(dataKeyDigest("local", wrapped, context(1))).not.toBe(dataKeyDigest("aws-kms", wrapped, context(1)));
    expect(dataKeyDigest("local", wrapped, context(1))).toBe(dataKeyDigest("local", Buffer.from(wrapped), context(1)));
  });
});

describe("CachingKeyProvider", () => {
  it("answers repeated unwraps from the cache, and generated keys without any unwrap", async () => {
    const inner = new CountingProvider();
    const kms = new CachingKeyProvider(inner, new DataKeyCache({ entriesMax: 2 }));
    const generated = await kms.generateDataKey(context(1));
    expect((await kms.unwrap(generated.wrapped, context(1))).equals(generated.plaintext)).toBe(true);
    expect(inner.unwraps).toBe(0);
    // Another context misses (the KMS decides whether the key belongs there).
    await kms.unwrap(generated.wrapped, context(2));
    expect(inner.unwraps).toBe(1);
    // Past the bound, the oldest key is unwrapped by the KMS again.
    const second = await kms.generateDataKey(context(3));
    await kms.unwrap(second.wrapped, context(3));
    expect(inner.unwraps).toBe(1);
    await kms.unwrap(generated.wrapped, context(1));
    expect(inner.unwraps).toBe(2);
  });

  it("shares one KMS call between concurrent unwraps of the same key", async () => {
    const inner = new CountingProvider();
    const kms = new CachingKeyProvider(inner, new DataKeyCache());
    const key = await inner.generateDataKey(context(1));
    const release = inner.hold();
    const pending = Array.from({ length: 50 }, () => kms.unwrap(key.wrapped, context(1)));
    release();
    const results = await Promise.all(pending);
    expect(inner.unwraps).toBe(1);
    for (const r of results) expect(r.equals(key.plaintext)).toBe(true);
    results[0]!.fill(0); // each caller has its own copy
    expect(results[1]!.equals(key.plaintext)).toBe(true);
  });

  it("close() forgets every key", async () => {
    const cache = new DataKeyCache();
    const kms = new CachingKeyProvider(new CountingProvider(), cache);
    await kms.generateDataKey(context(1));
    expect(cache.size).toBe(1);
    await kms.close();
    expect(cache.size).toBe(0);
  });
});
