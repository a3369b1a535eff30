import { randomBytes } from "node:crypto";
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { CorruptionError, ErrorCode, VerityError } from "../../src/errors.js";
import { segmentFileIdentity } from "../../src/crypto/encryption-context.js";
import type { EncryptionContext } from "../../src/crypto/encryption-context.js";
import { KmsError } from "../../src/crypto/kms.js";
import {
  LOCAL_WRAPPED_KEY_BYTES,
  LocalKeyProvider,
  initLocalKeyFile,
  readLocalKeyFile,
  rotateLocalKeyFile,
} from "../../src/crypto/local-kms.js";
import { openKeyProvider } from "../../src/crypto/open-key-provider.js";
import { SegmentRecordCipher } from "../../src/crypto/record-cipher.js";

const CONTEXT: EncryptionContext = { clusterId: "6f1c2a9e-4b7d-4c1e-9a53-0e2f5d8b7c61", fileIdentity: segmentFileIdentity(5) };
const HEADER_AT = { file: "log/00000005.segment", offset: 208 };

let dir: string;
let keyFile: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "verity-local-kms-"));
  keyFile = join(dir, "master.key");
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function caught(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  throw new Error("expected a rejection");
}

describe("local master key file", () => {
  it("init-local creates a 0600 JSON key file with one version, and never overwrites", async () => {
    const summary = await initLocalKeyFile(keyFile);
    expect(summary.keyId).toMatch(/^local:[0-9a-f-]{36}$/);
    expect(summary.keyVersion).toBe("1");
    expect((await stat(keyFile)).mode & 0o777).toBe(0o600);
    const json = JSON.parse(await readFile(keyFile, "utf8")) as Record<string, unknown>;
    expect(json["format"]).toBe("verity-local-kms");
    expect(json["current_version"]).toBe(1);
    expect(typeof json["sha256"]).toBe("string");
    const before = await readFile(keyFile);
    const error = await caught(initLocalKeyFile(keyFile));
    expect((error as VerityError).code).toBe(ErrorCode.ALREADY_EXISTS);
    expect((error as Error).message).toMatch(/never overwrites/);
    expect((await readFile(keyFile)).equals(before)).toBe(true);
  });

  for (const mode of [0o644, 0o640, 0o604, 0o660, 0o620]) {
    it(`refuses a key file with mode ${mode.toString(8)}, saying chmod 600`, async () => {
      await initLocalKeyFile(keyFile);
      await chmod(keyFile, mode);
      const error = await caught(LocalKeyProvider.open(keyFile));
      expect(error).toBeInstanceOf(KmsError);
      expect((error as KmsError).code).toBe(ErrorCode.FAILED_PRECONDITION);
      expect((error as Error).message).toContain(`chmod 600 ${keyFile}`);
      await chmod(keyFile, 0o600);
      await expect(LocalKeyProvider.open(keyFile)).resolves.toBeInstanceOf(LocalKeyProvider);
    });
  }

  it("refuses a damaged key file, and names a missing one as NOT_FOUND", async () => {
    await initLocalKeyFile(keyFile);
    const text = await readFile(keyFile, "utf8");
    const json = JSON.parse(text) as { versions: { key: string }[] };
    json.versions[0]!.key = randomBytes(32).toString("base64"); // a changed key, checksum left as it was
    await writeFile(keyFile, JSON.stringify(json), { mode: 0o600 });
    await expect(readLocalKeyFile(keyFile)).rejects.toThrow(/damaged: its sha256 does not match/);
    await writeFile(keyFile, "not json", { mode: 0o600 });
    await expect(readLocalKeyFile(keyFile)).rejects.toThrow(/damaged: it is not JSON/);
    const missing = await caught(readLocalKeyFile(join(dir, "nope.key")));
    expect((missing as KmsError).code).toBe(ErrorCode.NOT_FOUND);
  });
});

describe("LocalKeyProvider", () => {
  it("generates 32-byte data keys whose wrapped form unwraps to the same key", async () => {
    await initLocalKeyFile(keyFile);
    const kms = await LocalKeyProvider.open(keyFile);
    const key = await kms.generateDataKey(CONTEXT);
    expect(key.plaintext.length).toBe(32);
    expect(key.wrapped.length).toBe(LOCAL_WRAPPED_KEY_BYTES);
    expect(key.keyId).toBe(kms.keyId);
    expect(key.keyVersion).toBe("1");
    expect((await kms.unwrap(key.wrapped, CONTEXT, { keyId: key.keyId, location: HEADER_AT })).equals(key.plaintext)).toBe(true);
    expect(await kms.describe()).toEqual({ provider: "local", keyId: kms.keyId, keyVersion: "1", where: keyFile });
    await kms.close();
  });

  it("every bit flip in a wrapped key, and a wrong context, give CorruptionError naming the file", async () => {
    await initLocalKeyFile(keyFile);
    const kms = await LocalKeyProvider.open(keyFile);
    const key = await kms.generateDataKey(CONTEXT);
    for (let bit = 0; bit < key.wrapped.length * 8; bit++) {
      const damaged = Buffer.from(key.wrapped);
      damaged[bit >> 3]! ^= 1 << (bit & 7);
      const error = await caught(kms.unwrap(damaged, CONTEXT, { location: HEADER_AT }));
      // A flip in the version field names a version the file does not have: NOT_FOUND, which says so.
      if (bit >= 9 * 8 && bit < 13 * 8 && error instanceof KmsError) {
        expect(error.code).toBe(ErrorCode.NOT_FOUND);
        continue;
      }
      expect(error, `bit ${bit}`).toBeInstanceOf(CorruptionError);
      expect((error as CorruptionError).location).toEqual(HEADER_AT);
    }
    for (const other of [{ ...CONTEXT, fileIdentity: segmentFileIdentity(6) }, { ...CONTEXT, clusterId: "another-cluster" }]) {
      const error = await caught(kms.unwrap(key.wrapped, other, { location: HEADER_AT }));
      expect(error).toBeInstanceOf(CorruptionError);
      expect((error as Error).message).toContain("log/00000005.segment at byte offset 208");
    }
    await expect(kms.unwrap(key.wrapped.subarray(0, 40), CONTEXT, { location: HEADER_AT })).rejects.toThrow(CorruptionError);
  });

  it("a different master key file gives CorruptionError naming the file and both keys", async () => {
    await initLocalKeyFile(keyFile);
    const otherFile = join(dir, "other.key");
    await initLocalKeyFile(otherFile);
    const right = await LocalKeyProvider.open(keyFile);
    const wrong = await LocalKeyProvider.open(otherFile);
    const key = await right.generateDataKey(CONTEXT);
    const error = await caught(wrong.unwrap(key.wrapped, CONTEXT, { location: HEADER_AT }));
    expect(error).toBeInstanceOf(CorruptionError);
    expect((error as Error).message).toContain("log/00000005.segment");
    expect((error as Error).message).toContain("another master key");
    expect((error as Error).message).toContain(wrong.keyId);
    // The header naming a key that is not ours is refused the same way.
    await expect(right.unwrap(key.wrapped, CONTEXT, { keyId: wrong.keyId, location: HEADER_AT })).rejects.toThrow(CorruptionError);
  });

  it("rotation adds a version; rewrap moves data keys to it without touching record ciphertexts", async () => {
    await initLocalKeyFile(keyFile);
    const kms = await LocalKeyProvider.open(keyFile);
    const key = await kms.generateDataKey(CONTEXT);
    const clusterId = randomBytes(16);
    const records = new SegmentRecordCipher({ dataKey: key.plaintext, clusterId, segmentSequence: 5 });
    const bodies = Array.from({ length: 20 }, (_, i) => randomBytes(100 + i));
    const sealed = bodies.map((body, i) => records.seal({ index: 100 + i, term: 3, kind: 1 }, body));
    const sealedCopy = sealed.map((s) => Buffer.from(s));

    const rotated = await rotateLocalKeyFile(keyFile);
    expect(rotated.keyVersion).toBe("2");
    expect(rotated.versions).toBe(2);
    expect((await stat(keyFile)).mode & 0o777).toBe(0o600);

    // The running provider picks version 2 up on reload; old wrapped keys still unwrap.
    await kms.reload();
    expect((await kms.describe()).keyVersion).toBe("2");
    expect((await kms.unwrap(key.wrapped, CONTEXT)).equals(key.plaintext)).toBe(true);
    const rewrapped = await kms.rewrap(key.wrapped, CONTEXT, { location: HEADER_AT });
    expect(rewrapped.keyVersion).toBe("2");
    expect(rewrapped.wrapped.equals(key.wrapped)).toBe(false);
    expect(rewrapped.wrapped.length).toBe(key.wrapped.length);
    // Already current: returned unchanged, nothing to write.
    expect((await kms.rewrap(rewrapped.wrapped, CONTEXT)).wrapped.equals(rewrapped.wrapped)).toBe(true);

    // A node that opens the rotated file unwraps the re-wrapped key and reads the untouched records.
    const fresh = await LocalKeyProvider.open(keyFile);
    const dataKey = await fresh.unwrap(rewrapped.wrapped, CONTEXT);
    expect(dataKey.equals(key.plaintext)).toBe(true);
    const reader = new SegmentRecordCipher({ dataKey, clusterId, segmentSequence: 5 });
    sealed.forEach((s, i) => {
      expect(s.equals(sealedCopy[i]!)).toBe(true);
      expect(reader.open({ index: 100 + i, term: 3, kind: 1 }, s, { file: "log/00000005.segment", offset: 0 }).equals(bodies[i]!)).toBe(true);
    });
    // New data keys are wrapped under version 2.
    expect((await fresh.generateDataKey(CONTEXT)).keyVersion).toBe("2");
  });

  it("an unwrap that needs a version rotated in after open reloads the file by itself", async () => {
    await initLocalKeyFile(keyFile);
    const stale = await LocalKeyProvider.open(keyFile);
    await rotateLocalKeyFile(keyFile);
    const current = await LocalKeyProvider.open(keyFile);
    const key = await current.generateDataKey(CONTEXT);
    expect(key.keyVersion).toBe("2");
    expect((await stale.unwrap(key.wrapped, CONTEXT)).equals(key.plaintext)).toBe(true);
  });

  it("a key file older than the data (a lost rotation) is NOT_FOUND naming the version; a replaced key file is refused on reload", async () => {
    await initLocalKeyFile(keyFile);
    const oldCopy = await readFile(keyFile);
    await rotateLocalKeyFile(keyFile);
    const kms = await LocalKeyProvider.open(keyFile);
    const key = await kms.generateDataKey(CONTEXT);
    await writeFile(keyFile, oldCopy, { mode: 0o600 }); // someone restored the key file from before the rotation
    const old = await LocalKeyProvider.open(keyFile);
    const error = await caught(old.unwrap(key.wrapped, CONTEXT, { location: HEADER_AT }));
    expect((error as KmsError).code).toBe(ErrorCode.NOT_FOUND);
    expect((error as Error).message).toMatch(/version 2 .* older than the data/);

    await rm(keyFile);
    await initLocalKeyFile(keyFile); // a different key under the same name
    await expect(kms.reload()).rejects.toThrow(/replaced by a different key/);
  });

  it("refuses a second rotation while one is under way (or was interrupted)", async () => {
    await initLocalKeyFile(keyFile);
    await writeFile(`${keyFile}.rotate.tmp`, "left over", { mode: 0o600 });
    await expect(rotateLocalKeyFile(keyFile)).rejects.toThrow(/another rotation is under way/);
    await rm(`${keyFile}.rotate.tmp`);
    await expect(rotateLocalKeyFile(keyFile)).resolves.toMatchObject({ keyVersion: "2" });
  });

  it("a closed provider refuses to work and holds no key material", async () => {
    await initLocalKeyFile(keyFile);
    const kms = await LocalKeyProvider.open(keyFile);
    await kms.close();
    await expect(kms.generateDataKey(CONTEXT)).rejects.toThrow(/closed/);
  });
});

describe("openKeyProvider with kms_provider = \"local\"", () => {
  it("opens the key file, checks it and caches unwrapped keys; a key file others can read stops the start at once", async () => {
    await initLocalKeyFile(keyFile);
    const { provider, description } = await openKeyProvider({ provider: "local", keyId: keyFile });
    expect(description).toMatchObject({ provider: "local", keyVersion: "1", where: keyFile });
    const key = await provider.generateDataKey(CONTEXT);
    expect((await provider.unwrap(key.wrapped, CONTEXT)).equals(key.plaintext)).toBe(true);
    expect(provider.cache.hits).toBe(1);
    await provider.close();
    await chmod(keyFile, 0o644);
    let attempts = 0;
    await expect(openKeyProvider({ provider: "local", keyId: keyFile }, { retry: { onRetry: () => attempts++ } })).rejects.toThrow(/chmod 600/);
    expect(attempts).toBe(0); // not retryable: retrying cannot fix a file mode
  });
});

describe("openKeyProvider with kms_provider = \"local\": the failure scenarios every provider is tested for", () => {
  it("a wrong kms_key_id (no such file) is NOT_FOUND naming the path, at once: retrying cannot create the file", async () => {
    let attempts = 0;
    const missing = join(dir, "no-such.key");
    const error = await caught(openKeyProvider({ provider: "local", keyId: missing }, { retry: { onRetry: () => attempts++ } }));
    expect(error).toBeInstanceOf(KmsError);
    expect((error as KmsError).code).toBe(ErrorCode.NOT_FOUND);
    expect((error as KmsError).message).toContain(missing);
    expect((error as KmsError).message).toContain("kms_key_id");
    expect(attempts).toBe(0);
  });

  it("an unusable key path (a directory) stops the start at once with an error naming it", async () => {
    let attempts = 0;
    const error = await caught(openKeyProvider({ provider: "local", keyId: dir }, { retry: { onRetry: () => attempts++ } }));
    expect(error).toBeInstanceOf(VerityError);
    expect((error as VerityError).message).toContain(dir);
    expect(attempts).toBe(0);
  });

  it("a revoked key file (replaced by another master key) keeps the node from unwrapping: CorruptionError naming the file and both keys", async () => {
    await initLocalKeyFile(keyFile);
    const before = await openKeyProvider({ provider: "local", keyId: keyFile });
    const dataKey = await before.provider.generateDataKey(CONTEXT);
    await before.provider.close();
    await rm(keyFile);
    await initLocalKeyFile(keyFile);
    const after = await openKeyProvider({ provider: "local", keyId: keyFile });
    try {
      const error = await caught(after.provider.unwrap(dataKey.wrapped, CONTEXT, { keyId: dataKey.keyId, location: HEADER_AT }));
      expect(error).toBeInstanceOf(CorruptionError);
      expect((error as CorruptionError).message).toContain("log/00000005.segment");
      expect((error as CorruptionError).message).toContain(dataKey.keyId);
    } finally {
      await after.provider.close();
    }
  });
});
