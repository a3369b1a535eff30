/**
 * At-rest encryption for log tests: the existing suites run once in plaintext and once encrypted
 * (`LOG_VARIANTS`), with a real local master key file (in a temporary directory, mode 0600) and the
 * data key cache, as the server uses them. `FlakyKeyProvider` lets a test take the KMS down.
 */

import { afterAll, beforeAll } from "vitest";
import { join } from "node:path";
import type { AtRestEncryption } from "../../src/crypto/at-rest.js";
import { CachingKeyProvider, DataKeyCache } from "../../src/crypto/data-key-cache.js";
import type { EncryptionContext } from "../../src/crypto/encryption-context.js";
import type { GeneratedDataKey, KeyDescription, KeyProvider, UnwrapOptions, WrappedDataKey } from "../../src/crypto/kms.js";
import { kmsUnavailable } from "../../src/crypto/kms.js";
import { LocalKeyProvider, initLocalKeyFile } from "../../src/crypto/local-kms.js";
import { uuidFromBytes } from "../../src/log/meta-state.js";
import { inspectFrame } from "../../src/log/record.js";
import { readLimitsFor } from "../../src/log/segment-scan.js";
import { decodeSegmentHeader } from "../../src/log/segment-header.js";
import { SEGMENT_HEADER_BYTES } from "../../src/limits.js";
import { CLUSTER_ID, tempDir } from "./log-fixtures.js";

/** A provider that fails with UNAVAILABLE while `down` is set (a KMS outage), and counts calls. */
export class FlakyKeyProvider implements KeyProvider {
  readonly kind;
  down = false;
  generated = 0;
  constructor(private readonly inner: KeyProvider) {
    this.kind = inner.kind;
  }
  private check(operation: "generate-data-key" | "unwrap" | "rewrap" | "describe"): void {
    if (this.down) throw kmsUnavailable(this.kind, operation, "test", "the KMS is down (test)");
  }
  async generateDataKey(context: EncryptionContext): Promise<GeneratedDataKey> {
    this.check("generate-data-key");
    this.generated++;
    return this.inner.generateDataKey(context);
  }
  async unwrap(wrapped: Uint8Array, context: EncryptionContext, options?: UnwrapOptions): Promise<Buffer> {
    this.check("unwrap");
    return this.inner.unwrap(wrapped, context, options);
  }
  async rewrap(wrapped: Uint8Array, context: EncryptionContext, options?: UnwrapOptions): Promise<WrappedDataKey> {
    this.check("rewrap");
    return this.inner.rewrap(wrapped, context, options);
  }
  async describe(): Promise<KeyDescription> {
    this.check("describe");
    return this.inner.describe();
  }
  async close(): Promise<void> {
    await this.inner.close();
  }
}

/** A new local master key file in a temporary directory, and a provider on it (with the cache). */
export async function localKeyForTests(clusterId: Uint8Array = CLUSTER_ID): Promise<{
  encryption: AtRestEncryption; keyFile: string; local: LocalKeyProvider; cleanup: () => Promise<void>;
}> {
  const dir = tempDir("log-key");
  const keyFile = join(dir.path, "master.key");
  await initLocalKeyFile(keyFile);
  const local = await LocalKeyProvider.open(keyFile);
  const provider = new CachingKeyProvider(local, new DataKeyCache());
  return {
    encryption: { provider, clusterId: uuidFromBytes(clusterId) },
    keyFile,
    local,
    cleanup: async () => {
      await provider.close();
      dir.cleanup();
    },
  };
}

export type LogVariantName = "plaintext" | "encrypted";
export const LOG_VARIANTS: readonly LogVariantName[] = ["plaintext", "encrypted"];

/**
 * In a `describe.each(LOG_VARIANTS)` block: returns a getter of the block's encryption (undefined
 * for "plaintext"), set up before the block's tests and closed after them.
 */
export function encryptionFor(variant: LogVariantName): () => AtRestEncryption | undefined {
  let key: Awaited<ReturnType<typeof localKeyForTests>> | undefined;
  beforeAll(async () => {
    if (variant === "encrypted") key = await localKeyForTests();
  });
  afterAll(async () => {
    await key?.cleanup();
    key = undefined;
  });
  return () => key?.encryption;
}

/** One whole frame of a segment file, with the unit it belongs to (a plaintext record is a unit of its own). */
export interface FrameAt {
  offset: number;
  end: number;
  index: number;
  /** Position in its unit and the unit's record count (0 and 1 in a plaintext segment). */
  position: number;
  count: number;
  /** File offsets of the unit's first frame and just past its last, and the unit's first index. */
  unitStart: number;
  unitEnd: number;
  unitFirstIndex: number;
}

/**
 * The frames of a segment file (plaintext or encrypted), up to the first one that is not whole and
 * valid. Frames of a unit whose last frame is missing get unitEnd = Infinity.
 */
export function segmentFrames(bytes: Uint8Array): FrameAt[] {
  const header = decodeSegmentHeader(bytes);
  if (!header.ok) return [];
  const limits = readLimitsFor(header.header);
  const frames: FrameAt[] = [];
  let offset = SEGMENT_HEADER_BYTES;
  // Bounded by the file: every pass consumes a frame.
  while (offset < bytes.length) {
    const info = inspectFrame(bytes, offset, bytes.length, limits);
    if (info.status !== "ok") break;
    const position = info.unit?.position ?? 0;
    const unitStart = offset - (info.unit?.backBytes ?? 0);
    frames.push({
      offset, end: offset + info.frameBytes, index: info.index, position, count: info.unit?.count ?? 1,
      unitStart, unitEnd: Infinity, unitFirstIndex: info.index - position,
    });
    offset += info.frameBytes;
  }
  for (const f of frames) {
    const last = frames.find((g) => g.unitStart === f.unitStart && g.position === f.count - 1);
    if (last !== undefined) f.unitEnd = last.end;
  }
  return frames;
}
