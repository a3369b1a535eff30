/**
 * The gcp-kms provider through the real @google-cloud/kms client (gRPC over TLS with our own CA, and
 * an auth client of ours) against fake-gcp-kms.ts on loopback. Nothing leaves 127.0.0.1: the client
 * gets an explicit auth client, so Application Default Credentials are never looked up.
 */

import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { status as GrpcCode } from "@grpc/grpc-js";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { CorruptionError, ErrorCode, GrpcStatus, InvalidArgumentError, grpcStatusOf } from "../../src/errors.js";
import { encodeEncryptionContext, segmentFileIdentity } from "../../src/crypto/encryption-context.js";
import type { EncryptionContext } from "../../src/crypto/encryption-context.js";
import { GcpKmsKeyProvider, parseGcpEndpoint } from "../../src/crypto/gcp-kms.js";
import type { GcpAuthClient, GcpKmsProviderOptions } from "../../src/crypto/gcp-kms.js";
import { KmsError } from "../../src/crypto/kms.js";
import { openKeyProvider } from "../../src/crypto/open-key-provider.js";
import { SegmentRecordCipher } from "../../src/crypto/record-cipher.js";
import { TestCa } from "../helpers/certs.js";
import { FAKE_GCP_TOKEN, FakeGcpKms } from "./fake-gcp-kms.js";

const CONTEXT: EncryptionContext = { clusterId: "6f1c2a9e-4b7d-4c1e-9a53-0e2f5d8b7c61", fileIdentity: segmentFileIdentity(3) };
const AT = { file: "log/00000003.segment", offset: 208 };
const noSleep = async (): Promise<void> => {};

function authClient(token = FAKE_GCP_TOKEN): GcpAuthClient {
  return { universeDomain: "googleapis.com", getRequestHeaders: async () => new Headers({ authorization: `Bearer ${token}` }) };
}

async function caught(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (e) {
    return e as Error;
  }
  throw new Error("expected a rejection");
}

function expectKmsError(error: Error, code: ErrorCode): KmsError {
  expect(error).toBeInstanceOf(KmsError);
  expect((error as KmsError).code).toBe(code);
  expect(grpcStatusOf[(error as KmsError).code]).toBe(GrpcStatus[code as keyof typeof GrpcStatus]);
  return error as KmsError;
}

let certDir: string;
let ca: Buffer;
let serverCert: { cert: Buffer; key: Buffer };
beforeAll(() => {
  certDir = mkdtempSync(join(tmpdir(), "verity-gcp-kms-"));
  const testCa = new TestCa(certDir);
  const files = testCa.issue("cloudkms");
  ca = testCa.pem();
  serverCert = { cert: readFileSync(files.cert), key: readFileSync(files.key) };
});
afterAll(() => rmSync(certDir, { recursive: true, force: true }));

describe("gcp-kms provider through @google-cloud/kms", () => {
  let fake: FakeGcpKms;
  let keyName: string;
  let providers: GcpKmsKeyProvider[];

  const options = (overrides: Partial<GcpKmsProviderOptions> = {}): GcpKmsProviderOptions => ({
    keyId: keyName, endpoint: fake.endpoint, credentials: authClient(), caCertificates: ca,
    attemptsMax: 2, requestTimeoutMs: 1_000, retryDelayMsInitial: 10, ...overrides,
  });
  const open = async (overrides: Partial<GcpKmsProviderOptions> = {}): Promise<GcpKmsKeyProvider> => {
    const provider = await GcpKmsKeyProvider.open(options(overrides));
    providers.push(provider);
    return provider;
  };

  beforeEach(async () => {
    fake = await FakeGcpKms.start(serverCert);
    keyName = fake.createKey("verity");
    providers = [];
  });
  afterEach(async () => {
    for (const p of providers) await p.close();
    await fake.stop();
  });

  it("generates, unwraps and describes, sending the encoded context as additional authenticated data", async () => {
    const kms = await open();
    const dataKey = await kms.generateDataKey(CONTEXT);
    expect(dataKey.plaintext.length).toBe(32);
    expect(dataKey.wrapped.length).toBeLessThanOrEqual(256);
    expect(dataKey.keyId).toBe(keyName);
    expect(dataKey.keyVersion).toBe(`${keyName}/cryptoKeyVersions/1`);
    expect((await kms.unwrap(dataKey.wrapped, CONTEXT, { keyId: dataKey.keyId, location: AT })).equals(dataKey.plaintext)).toBe(true);
    expect(await kms.describe()).toEqual({ provider: "gcp-kms", keyId: keyName, keyVersion: `${keyName}/cryptoKeyVersions/1`, where: fake.endpoint });
    expect(fake.requests.map((r) => r.method)).toEqual(["Encrypt", "Decrypt", "GetCryptoKey"]);
    expect(fake.requests[0]!.aad!.equals(encodeEncryptionContext(CONTEXT))).toBe(true);
    expect(fake.requests[1]!.name).toBe(keyName);
  });

  it("a wrapped key moved to another file's context, or tampered with, is CorruptionError naming the file", async () => {
    const kms = await open();
    const dataKey = await kms.generateDataKey(CONTEXT);
    const flipped = Buffer.from(dataKey.wrapped);
    flipped[flipped.length - 20]! ^= 1;
    const otherFile = { ...CONTEXT, fileIdentity: segmentFileIdentity(4) };
    const otherCluster = { ...CONTEXT, clusterId: "0d5e3c1a-1111-4c1e-9a53-0e2f5d8b7c61" };
    for (const [wrapped, context] of [[flipped, CONTEXT], [dataKey.wrapped, otherFile], [dataKey.wrapped, otherCluster], [Buffer.alloc(300), CONTEXT]] as const) {
      for (const call of [() => kms.unwrap(wrapped, context, { location: AT }), () => kms.rewrap(wrapped, context, { location: AT })]) {
        const error = await caught(call());
        expect(error).toBeInstanceOf(CorruptionError);
        expect((error as CorruptionError).location).toEqual(AT);
        expect(grpcStatusOf[(error as CorruptionError).code]).toBe(GrpcStatus.DATA_LOSS);
        expect(error.message).toContain("log/00000003.segment at byte offset 208");
      }
    }
  });

  it("a wrong key id is NOT_FOUND naming the key; a malformed one is refused at open", async () => {
    const missing = keyName.replace(/verity$/, "no-such-key");
    const kms = await open({ keyId: missing });
    for (const call of [() => kms.describe(), () => kms.generateDataKey(CONTEXT)]) {
      const error = expectKmsError(await caught(call()), ErrorCode.NOT_FOUND);
      expect(error.message).toContain(missing);
      expect(error.message).toContain("kms_key_id");
    }
    await expect(open({ keyId: "verity" })).rejects.toThrow(InvalidArgumentError);
    await expect(open({ keyId: `${keyName}/cryptoKeyVersions/1` })).rejects.toThrow(/without \/cryptoKeyVersions/);
    await expect(open({ keyId: `${keyName}${"x".repeat(100)}` })).rejects.toThrow(/KMS_KEY_ID_BYTES_MAX/);
  });

  it("rotation: rewrap moves data keys to the new primary version; keys wrapped by the old one still unwrap", async () => {
    const kms = await open();
    const dataKey = await kms.generateDataKey(CONTEXT);
    const clusterId = randomBytes(16);
    const sealed = new SegmentRecordCipher({ dataKey: dataKey.plaintext, clusterId, segmentSequence: 3 })
      .seal({ index: 9, term: 2, kind: 1 }, Buffer.from("an event"));
    const primary = fake.rotateKey(keyName);
    const rewrapped = await kms.rewrap(dataKey.wrapped, CONTEXT, { keyId: dataKey.keyId, location: AT });
    expect(rewrapped).toMatchObject({ keyId: keyName, keyVersion: primary });
    expect(rewrapped.wrapped.equals(dataKey.wrapped)).toBe(false);
    const unwrapped = await kms.unwrap(rewrapped.wrapped, CONTEXT, { keyId: rewrapped.keyId });
    const reader = new SegmentRecordCipher({ dataKey: unwrapped, clusterId, segmentSequence: 3 });
    expect(reader.open({ index: 9, term: 2, kind: 1 }, sealed, { file: AT.file, offset: 512 }).toString()).toBe("an event");
    expect((await kms.unwrap(dataKey.wrapped, CONTEXT)).equals(dataKey.plaintext)).toBe(true);
    expect((await kms.generateDataKey(CONTEXT)).keyVersion).toBe(primary);
    expect((await kms.describe()).keyVersion).toBe(primary);
  });

  it("data wrapped by another CryptoKey is corruption, unless that key is a previous key id; rewrap moves it", async () => {
    const old = await open();
    const dataKey = await old.generateDataKey(CONTEXT);
    const next = fake.createKey("verity-next");
    const strict = await open({ keyId: next });
    const error = await caught(strict.unwrap(dataKey.wrapped, CONTEXT, { keyId: dataKey.keyId, location: AT }));
    expect(error).toBeInstanceOf(CorruptionError);
    expect(error.message).toContain("cannot decrypt it with kms_key_id");
    const moving = await open({ keyId: next, previousKeyIds: [keyName] });
    expect((await moving.unwrap(dataKey.wrapped, CONTEXT, { keyId: dataKey.keyId })).equals(dataKey.plaintext)).toBe(true);
    const moved = await moving.rewrap(dataKey.wrapped, CONTEXT, { keyId: dataKey.keyId });
    expect(moved.keyId).toBe(next);
    expect((await strict.unwrap(moved.wrapped, CONTEXT, { keyId: moved.keyId })).equals(dataKey.plaintext)).toBe(true);
  });

  it("a revoked key (version disabled or destroyed, IAM access removed, credentials refused) is PERMISSION_DENIED", async () => {
    const kms = await open();
    const dataKey = await kms.generateDataKey(CONTEXT);
    for (const [revoke, why] of [
      [() => fake.setVersionState(keyName, "DISABLED"), /DISABLED/],
      [() => fake.setVersionState(keyName, "DESTROYED"), /DESTROYED/],
      [() => { fake.setVersionState(keyName, "ENABLED"); fake.denyAccess(keyName); }, /Permission 'cloudkms/],
    ] as const) {
      revoke();
      const calls = [() => kms.generateDataKey(CONTEXT), () => kms.unwrap(dataKey.wrapped, CONTEXT), () => kms.rewrap(dataKey.wrapped, CONTEXT), () => kms.describe()];
      for (const call of calls) {
        const error = expectKmsError(await caught(call()), ErrorCode.PERMISSION_DENIED);
        expect(error.retryable).toBe(false);
        expect(error.message).toMatch(why);
        expect(error.message).toContain("roles/cloudkms.cryptoKeyEncrypterDecrypter");
      }
    }
    fake.denyAccess(keyName, false);
    expect((await kms.unwrap(dataKey.wrapped, CONTEXT)).equals(dataKey.plaintext)).toBe(true);
    const stranger = await open({ credentials: authClient("ya29.unknown") });
    expect(expectKmsError(await caught(stranger.describe()), ErrorCode.PERMISSION_DENIED).message).toMatch(/did not accept this node's credentials/);
  });

  it("KMS unreachable at start: openKeyProvider retries, then fails UNAVAILABLE naming the endpoint", async () => {
    await fake.stop();
    const retries: number[] = [];
    const started = performance.now();
    const error = expectKmsError(await caught(openKeyProvider({ provider: "gcp-kms", ...options() },
      { retry: { attemptsMax: 3, sleep: noSleep, onRetry: (attempt) => retries.push(attempt) } })), ErrorCode.UNAVAILABLE);
    expect(retries).toEqual([1, 2]);
    expect(error.retryable).toBe(true);
    expect(error.message).toContain(`gcp-kms at ${fake.endpoint}`);
    expect(error.message).toMatch(/cannot reach the KMS/);
    expect(error.message).toMatch(/Gave up after 3 attempts/);
    expect(error.message).toMatch(/kms_endpoint/);
    expect(performance.now() - started).toBeLessThan(10_000);
  });

  it("through openKeyProvider, a revoked key or a wrong key id stops the start at once (no retries)", async () => {
    let retries = 0;
    const retry = { attemptsMax: 3, sleep: noSleep, onRetry: () => { retries++; } };
    fake.setVersionState(keyName, "DISABLED");
    expectKmsError(await caught(openKeyProvider({ provider: "gcp-kms", ...options() }, { retry })), ErrorCode.PERMISSION_DENIED);
    expectKmsError(await caught(openKeyProvider({ provider: "gcp-kms", ...options({ keyId: `${keyName}-missing` }) }, { retry })), ErrorCode.NOT_FOUND);
    expect(retries).toBe(0);
  });

  it("start-up retries succeed once the KMS comes back", async () => {
    await fake.stop();
    const opened = await openKeyProvider({ provider: "gcp-kms", ...options() }, {
      retry: { attemptsMax: 20, delayMsInitial: 50, delayMsMax: 200, onRetry: (attempt) => { if (attempt === 2) void fake.listen(); } },
    });
    try {
      expect(opened.description.keyVersion).toBe(`${keyName}/cryptoKeyVersions/1`);
    } finally {
      await opened.provider.close();
    }
  });

  it("a KMS that never answers times out as UNAVAILABLE within the bound", async () => {
    const kms = await open({ requestTimeoutMs: 200 });
    fake.stallNext(10);
    const started = performance.now();
    const error = expectKmsError(await caught(kms.generateDataKey(CONTEXT)), ErrorCode.UNAVAILABLE);
    expect(error.retryable).toBe(true);
    expect(performance.now() - started).toBeLessThan(5_000);
  });

  it("transient errors are retried by the client; persistent ones (5xx-like, overload) are UNAVAILABLE", async () => {
    const kms = await open({ attemptsMax: 3 });
    fake.failNext(1, GrpcCode.UNAVAILABLE);
    await expect(kms.generateDataKey(CONTEXT)).resolves.toMatchObject({ keyId: keyName });
    for (const code of [GrpcCode.UNAVAILABLE, GrpcCode.INTERNAL, GrpcCode.RESOURCE_EXHAUSTED]) {
      fake.failNext(10, code);
      expectKmsError(await caught(kms.generateDataKey(CONTEXT)), ErrorCode.UNAVAILABLE);
    }
  });

  it("through openKeyProvider, repeated unwraps reach the KMS once (the data key cache)", async () => {
    const { provider, description } = await openKeyProvider({ provider: "gcp-kms", ...options() });
    try {
      expect(description.provider).toBe("gcp-kms");
      const dataKey = await (await open()).generateDataKey(CONTEXT); // made elsewhere: not in this cache yet
      for (let i = 0; i < 5; i++) expect((await provider.unwrap(dataKey.wrapped, CONTEXT)).equals(dataKey.plaintext)).toBe(true);
      expect(fake.requests.filter((r) => r.method === "Decrypt").length).toBe(1);
    } finally {
      await provider.close();
    }
  });

  it("kms_endpoint is host[:port]", () => {
    expect(parseGcpEndpoint(undefined)).toEqual({ host: "cloudkms.googleapis.com", port: 443 });
    expect(parseGcpEndpoint("https://127.0.0.1:8443/")).toEqual({ host: "127.0.0.1", port: 8443 });
    expect(() => parseGcpEndpoint("http://a:b:c")).toThrow(/host\[:port\]/);
  });
});
