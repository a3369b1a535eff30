/**
 * The azure-keyvault provider through the real @azure/keyvault-keys client (HTTPS with our own CA,
 * Key Vault's challenge authentication, a TokenCredential of ours) against fake-azure-keyvault.ts on
 * loopback. Nothing leaves 127.0.0.1: no @azure/identity credential is used here.
 */

import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { CorruptionError, ErrorCode, GrpcStatus, InvalidArgumentError, grpcStatusOf } from "../../src/errors.js";
import { AzureKeyVaultKeyProvider, azureCredentialFromEnvironment, parseAzureKeyId } from "../../src/crypto/azure-keyvault.js";
import type { AzureKeyVaultProviderOptions, AzureTokenCredential } from "../../src/crypto/azure-keyvault.js";
import { segmentFileIdentity } from "../../src/crypto/encryption-context.js";
import type { EncryptionContext } from "../../src/crypto/encryption-context.js";
import { KmsError } from "../../src/crypto/kms.js";
import { openKeyProvider } from "../../src/crypto/open-key-provider.js";
import { SegmentRecordCipher } from "../../src/crypto/record-cipher.js";
import { encryptionSettingsOf } from "../../src/server/encryption-settings.js";
import { TestCa } from "../helpers/certs.js";
import { FAKE_AZURE_TOKEN, FakeAzureKeyVault } from "./fake-azure-keyvault.js";

const CONTEXT: EncryptionContext = { clusterId: "6f1c2a9e-4b7d-4c1e-9a53-0e2f5d8b7c61", fileIdentity: segmentFileIdentity(3) };
const AT = { file: "log/00000003.segment", offset: 208 };
const noSleep = async (): Promise<void> => {};

function tokenCredential(token = FAKE_AZURE_TOKEN): AzureTokenCredential & { scopes: string[] } {
  const scopes: string[] = [];
  return {
    scopes,
    getToken: async (scope) => {
      scopes.push(...(Array.isArray(scope) ? scope : [scope]));
      return { token, expiresOnTimestamp: Date.now() + 3_600_000 };
    },
  };
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
  if (!(error instanceof KmsError)) throw error;
  expect(error.code).toBe(code);
  expect(grpcStatusOf[error.code]).toBe(GrpcStatus[code as keyof typeof GrpcStatus]);
  return error;
}

let certDir: string;
let ca: Buffer;
let serverCert: { cert: Buffer; key: Buffer };
beforeAll(() => {
  certDir = mkdtempSync(join(tmpdir(), "verity-azure-kv-"));
  const testCa = new TestCa(certDir);
  const files = testCa.issue("keyvault");
  ca = testCa.pem();
  serverCert = { cert: readFileSync(files.cert), key: readFileSync(files.key) };
});
afterAll(() => rmSync(certDir, { recursive: true, force: true }));

describe("azure-keyvault provider through @azure/keyvault-keys", () => {
  let vault: FakeAzureKeyVault;
  let keyUrl: string;
  let providers: AzureKeyVaultKeyProvider[];

  const options = (overrides: Partial<AzureKeyVaultProviderOptions> = {}): AzureKeyVaultProviderOptions => ({
    keyId: keyUrl, credential: tokenCredential(), caCertificates: ca, attemptsMax: 2, requestTimeoutMs: 1_000, retryDelayMsInitial: 10, ...overrides,
  });
  const open = async (overrides: Partial<AzureKeyVaultProviderOptions> = {}): Promise<AzureKeyVaultKeyProvider> => {
    const provider = await AzureKeyVaultKeyProvider.open(options(overrides));
    providers.push(provider);
    return provider;
  };

  beforeEach(async () => {
    vault = await FakeAzureKeyVault.start(serverCert);
    keyUrl = vault.createKey("verity");
    providers = [];
  });
  afterEach(async () => {
    for (const p of providers) await p.close();
    await vault.stop();
  });

  it("generates, unwraps and describes; the stored key id names the version; RSA-2048 wraps fit the header", async () => {
    const credential = tokenCredential();
    const kms = await open({ credential });
    const version = vault.currentVersion("verity");
    const dataKey = await kms.generateDataKey(CONTEXT);
    expect(dataKey.plaintext.length).toBe(32);
    expect(dataKey.wrapped.length).toBe(256);
    expect(dataKey.keyId).toBe(`${keyUrl}/${version}`);
    expect(dataKey.keyVersion).toBe(version);
    expect((await kms.unwrap(dataKey.wrapped, CONTEXT, { keyId: dataKey.keyId, location: AT })).equals(dataKey.plaintext)).toBe(true);
    expect(await kms.describe()).toEqual({ provider: "azure-keyvault", keyId: `${keyUrl}/${version}`, keyVersion: version, where: vault.url });
    expect(credential.scopes).toContain("https://vault.azure.net/.default"); // from the challenge
    expect(vault.requests.some((r) => !r.authorized)).toBe(true); // the challenge round trip happened
    const posts = vault.requests.filter((r) => r.method === "POST" && r.authorized).map((r) => r.path);
    expect(posts).toEqual([`/keys/verity/${version}/wrapkey`, `/keys/verity/${version}/unwrapkey`]);
  });

  it("a wrapped key moved to another file's or cluster's context, or tampered with, is CorruptionError naming the file", async () => {
    const kms = await open();
    const dataKey = await kms.generateDataKey(CONTEXT);
    const flipped = Buffer.from(dataKey.wrapped);
    flipped[100]! ^= 1;
    const otherFile = { ...CONTEXT, fileIdentity: segmentFileIdentity(4) };
    const otherCluster = { ...CONTEXT, clusterId: "0d5e3c1a-1111-4c1e-9a53-0e2f5d8b7c61" };
    for (const [wrapped, context] of [[flipped, CONTEXT], [dataKey.wrapped, otherFile], [dataKey.wrapped, otherCluster], [Buffer.alloc(300), CONTEXT]] as const) {
      for (const call of [() => kms.unwrap(wrapped, context, { keyId: dataKey.keyId, location: AT }), () => kms.rewrap(wrapped, context, { keyId: dataKey.keyId, location: AT })]) {
        const error = await caught(call());
        expect(error).toBeInstanceOf(CorruptionError);
        expect((error as CorruptionError).location).toEqual(AT);
        expect(grpcStatusOf[(error as CorruptionError).code]).toBe(GrpcStatus.DATA_LOSS);
        expect(error.message).toContain("log/00000003.segment at byte offset 208");
      }
    }
  });

  it("a wrong key id is NOT_FOUND naming the key; malformed or over-long key ids are refused at open", async () => {
    const kms = await open({ keyId: `${vault.url}/keys/no-such-key` });
    for (const call of [() => kms.describe(), () => kms.generateDataKey(CONTEXT)]) {
      const error = expectKmsError(await caught(call()), ErrorCode.NOT_FOUND);
      expect(error.message).toContain("no-such-key");
      expect(error.message).toContain("kms_key_id");
    }
    const wrongVersion = await open({ keyId: `${keyUrl}/0123456789abcdef0123456789abcdef` });
    expectKmsError(await caught(wrongVersion.describe()), ErrorCode.NOT_FOUND);
    for (const bad of ["verity", "http://127.0.0.1/keys/verity", `${vault.url}/secrets/verity`, `${vault.url}/keys/a_b`]) {
      await expect(open({ keyId: bad })).rejects.toThrow(InvalidArgumentError);
    }
    await expect(open({ keyId: `${vault.url}/keys/${"k".repeat(100)}` })).rejects.toThrow(/KMS_KEY_ID_BYTES_MAX/);
  });

  it("rotation: rewrap moves data keys to the current version; keys wrapped by older versions still unwrap", async () => {
    const kms = await open();
    const dataKey = await kms.generateDataKey(CONTEXT);
    const clusterId = randomBytes(16);
    const sealed = new SegmentRecordCipher({ dataKey: dataKey.plaintext, clusterId, segmentSequence: 3 })
      .seal({ index: 9, term: 2, kind: 1 }, Buffer.from("an event"));
    const next = vault.rotateKey("verity");
    const rewrapped = await kms.rewrap(dataKey.wrapped, CONTEXT, { keyId: dataKey.keyId, location: AT });
    expect(rewrapped).toMatchObject({ keyId: `${keyUrl}/${next}`, keyVersion: next });
    const unwrapped = await kms.unwrap(rewrapped.wrapped, CONTEXT, { keyId: rewrapped.keyId });
    const reader = new SegmentRecordCipher({ dataKey: unwrapped, clusterId, segmentSequence: 3 });
    expect(reader.open({ index: 9, term: 2, kind: 1 }, sealed, { file: AT.file, offset: 512 }).toString()).toBe("an event");
    expect((await kms.unwrap(dataKey.wrapped, CONTEXT, { keyId: dataKey.keyId })).equals(dataKey.plaintext)).toBe(true);
    expect((await kms.describe()).keyVersion).toBe(next);
    expect((await kms.generateDataKey(CONTEXT)).keyVersion).toBe(next); // describe refreshed the current version
  });

  it("a key pinned to a version keeps using it; another key is corruption unless it is a previous key id", async () => {
    const old = await open();
    const dataKey = await old.generateDataKey(CONTEXT);
    const nextUrl = vault.createKey("verity-next");
    const strict = await open({ keyId: nextUrl });
    const error = await caught(strict.unwrap(dataKey.wrapped, CONTEXT, { keyId: dataKey.keyId, location: AT }));
    expect(error).toBeInstanceOf(CorruptionError);
    const moving = await open({ keyId: nextUrl, previousKeyIds: [keyUrl] });
    expect((await moving.unwrap(dataKey.wrapped, CONTEXT, { keyId: dataKey.keyId })).equals(dataKey.plaintext)).toBe(true);
    const moved = await moving.rewrap(dataKey.wrapped, CONTEXT, { keyId: dataKey.keyId });
    expect(moved.keyId).toBe(`${nextUrl}/${vault.currentVersion("verity-next")}`);
    expect((await strict.unwrap(moved.wrapped, CONTEXT, { keyId: moved.keyId })).equals(dataKey.plaintext)).toBe(true);

    const pinnedVersion = vault.currentVersion("verity");
    vault.rotateKey("verity");
    const pinned = await open({ keyId: `${keyUrl}/${pinnedVersion}` });
    expect((await pinned.generateDataKey(CONTEXT)).keyVersion).toBe(pinnedVersion);
  });

  it("oct-HSM keys (Managed HSM) wrap with A256KW in 72 bytes", async () => {
    const hsmKey = vault.createKey("verity-hsm", "oct-HSM");
    const kms = await open({ keyId: hsmKey });
    const dataKey = await kms.generateDataKey(CONTEXT);
    expect(dataKey.wrapped.length).toBe(72);
    expect((await kms.unwrap(dataKey.wrapped, CONTEXT, { keyId: dataKey.keyId })).equals(dataKey.plaintext)).toBe(true);
    expect(await caught(kms.unwrap(dataKey.wrapped, { ...CONTEXT, fileIdentity: "log/segment/00000099" }, { keyId: dataKey.keyId }))).toBeInstanceOf(CorruptionError);
  });

  it("an RSA key too large for the header, or one without wrapKey, is refused at start saying what to use", async () => {
    const big = vault.createKey("verity-3072", "RSA", 3072);
    expect(expectKmsError(await caught((await open({ keyId: big })).describe()), ErrorCode.FAILED_PRECONDITION).message).toMatch(/RSA-3072.*use an RSA 2048 key/);
    vault.setKeyOperations("verity", ["sign", "verify"]);
    expect(expectKmsError(await caught((await open()).describe()), ErrorCode.FAILED_PRECONDITION).message).toMatch(/does not allow wrapKey and unwrapKey/);
  });

  it("a revoked key (disabled, access removed, token refused) is PERMISSION_DENIED", async () => {
    const kms = await open();
    const dataKey = await kms.generateDataKey(CONTEXT);
    for (const [revoke, why] of [
      [() => vault.setEnabled("verity", false), /disabled key/],
      [() => { vault.setEnabled("verity", true); vault.denyAccess("verity"); }, /does not have keys/],
    ] as const) {
      revoke();
      const calls = [() => kms.unwrap(dataKey.wrapped, CONTEXT, { keyId: dataKey.keyId }), () => kms.rewrap(dataKey.wrapped, CONTEXT, { keyId: dataKey.keyId }),
        () => kms.describe(), () => kms.generateDataKey(CONTEXT)];
      for (const call of calls) {
        const error = expectKmsError(await caught(call()), ErrorCode.PERMISSION_DENIED);
        expect(error.retryable).toBe(false);
        expect(error.message).toMatch(why);
        expect(error.message).toContain("wrapKey and unwrapKey permissions");
      }
    }
    vault.denyAccess("verity", false);
    expect((await kms.unwrap(dataKey.wrapped, CONTEXT, { keyId: dataKey.keyId })).equals(dataKey.plaintext)).toBe(true);
    const stranger = await open({ credential: tokenCredential("unknown-token") });
    expect(expectKmsError(await caught(stranger.describe()), ErrorCode.PERMISSION_DENIED).message).toMatch(/did not accept this node's token/);
  });

  it("Key Vault unreachable at start: openKeyProvider retries, then fails UNAVAILABLE naming the vault", async () => {
    await vault.stop();
    const retries: number[] = [];
    const error = expectKmsError(await caught(openKeyProvider({ provider: "azure-keyvault", ...options() },
      { retry: { attemptsMax: 3, sleep: noSleep, onRetry: (attempt) => retries.push(attempt) } })), ErrorCode.UNAVAILABLE);
    expect(retries).toEqual([1, 2]);
    expect(error.retryable).toBe(true);
    expect(error.message).toContain(`azure-keyvault at ${vault.url}`);
    expect(error.message).toMatch(/Gave up after 3 attempts/);
    expect(error.message).toMatch(/kms_endpoint/);
  });

  it("through openKeyProvider, a revoked key or a wrong key id stops the start at once (no retries)", async () => {
    let retries = 0;
    const retry = { attemptsMax: 3, sleep: noSleep, onRetry: () => { retries++; } };
    vault.setEnabled("verity", false);
    expectKmsError(await caught(openKeyProvider({ provider: "azure-keyvault", ...options() }, { retry })), ErrorCode.PERMISSION_DENIED);
    expectKmsError(await caught(openKeyProvider({ provider: "azure-keyvault", ...options({ keyId: `${vault.url}/keys/missing` }) }, { retry })), ErrorCode.NOT_FOUND);
    expect(retries).toBe(0);
  });

  it("start-up retries succeed once Key Vault comes back", async () => {
    await vault.stop();
    const opened = await openKeyProvider({ provider: "azure-keyvault", ...options() }, {
      retry: { attemptsMax: 20, delayMsInitial: 50, delayMsMax: 200, onRetry: (attempt) => { if (attempt === 2) void vault.listen(); } },
    });
    try {
      expect(opened.description.keyVersion).toBe(vault.currentVersion("verity"));
    } finally {
      await opened.provider.close();
    }
  });

  it("a vault that never answers times out as UNAVAILABLE within the bound", async () => {
    const kms = await open({ requestTimeoutMs: 200 });
    await kms.describe();
    vault.stallNext(10);
    const started = performance.now();
    const error = expectKmsError(await caught(kms.generateDataKey(CONTEXT)), ErrorCode.UNAVAILABLE);
    expect(error.retryable).toBe(true);
    expect(performance.now() - started).toBeLessThan(5_000);
  });

  it("transient 5xx and 429 are retried by the client; persistent ones are UNAVAILABLE", async () => {
    const kms = await open({ attemptsMax: 3 });
    await kms.describe();
    vault.failNext(1, 503);
    await expect(kms.generateDataKey(CONTEXT)).resolves.toMatchObject({ keyVersion: vault.currentVersion("verity") });
    for (const status of [500, 503, 429]) {
      vault.failNext(10, status);
      expectKmsError(await caught(kms.generateDataKey(CONTEXT)), ErrorCode.UNAVAILABLE);
    }
  });

  it("kms_endpoint sends requests elsewhere while stored key ids keep the vault's URL", async () => {
    const kms = await open({ keyId: "https://verity-test.vault.azure.net/keys/verity", endpoint: vault.url });
    const dataKey = await kms.generateDataKey(CONTEXT);
    expect(dataKey.keyId).toBe(`https://verity-test.vault.azure.net/keys/verity/${vault.currentVersion("verity")}`);
    expect((await kms.unwrap(dataKey.wrapped, CONTEXT, { keyId: dataKey.keyId })).equals(dataKey.plaintext)).toBe(true);
  });

  it("parses key ids", () => {
    expect(parseAzureKeyId("https://v.vault.azure.net/keys/k")).toEqual({ vault: "https://v.vault.azure.net", name: "k", version: undefined });
    expect(parseAzureKeyId("https://v.vault.azure.net/keys/k/abc123")).toMatchObject({ version: "abc123" });
  });
});

describe("verity-server settings for gcp-kms and azure-keyvault", () => {
  const section = (kmsProvider: "gcp-kms" | "azure-keyvault", kmsKeyId: string) => ({
    enabled: true, kmsProvider, kmsKeyId, kmsEndpoint: "https://127.0.0.1:8443", region: undefined, kmsPreviousKeyIds: ["old"],
  });

  it("gcp-kms uses Application Default Credentials, kms_endpoint and kms_previous_key_ids", () => {
    const key = "projects/p/locations/l/keyRings/r/cryptoKeys/k";
    expect(encryptionSettingsOf(section("gcp-kms", key), {})).toEqual({
      provider: "gcp-kms", keyId: key, credentials: "application-default", endpoint: "https://127.0.0.1:8443", previousKeyIds: ["old"],
    });
  });

  it("azure-keyvault takes a service principal from the environment, all three variables or none", () => {
    const key = "https://v.vault.azure.net/keys/k";
    const mapped = encryptionSettingsOf(section("azure-keyvault", key), { AZURE_TENANT_ID: "t", AZURE_CLIENT_ID: "c", AZURE_CLIENT_SECRET: "s" });
    expect(mapped).toMatchObject({ provider: "azure-keyvault", keyId: key, endpoint: "https://127.0.0.1:8443", previousKeyIds: ["old"] });
    expect(typeof (mapped as { credential: AzureTokenCredential }).credential.getToken).toBe("function");
    expect(() => azureCredentialFromEnvironment({ AZURE_TENANT_ID: "t" })).toThrow(/AZURE_TENANT_ID set but AZURE_CLIENT_ID, AZURE_CLIENT_SECRET not/);
    expect(() => azureCredentialFromEnvironment({})).not.toThrow();
  });
});
