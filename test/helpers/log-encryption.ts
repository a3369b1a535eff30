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
