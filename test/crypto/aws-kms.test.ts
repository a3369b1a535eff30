/**
 * The aws-kms provider against a fake AWS KMS on loopback (fake-aws-kms.ts), through the SDK stand-in
 * and, when @aws-sdk/client-kms is installed, through the real SDK: the same scenarios on both.
 */

import { randomBytes } from "node:crypto";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { CorruptionError, ErrorCode, GrpcStatus, grpcStatusOf } from "../../src/errors.js";
import { AWS_KMS_SDK_PACKAGE, AwsKmsKeyProvider, credentialsFromEnvironment, loadAwsKmsSdk } from "../../src/crypto/aws-kms.js";
import type { AwsKmsProviderOptions, AwsKmsSdk } from "../../src/crypto/aws-kms.js";
import { segmentFileIdentity } from "../../src/crypto/encryption-context.js";
import type { EncryptionContext } from "../../src/crypto/encryption-context.js";
import { KmsError, retryWhileUnavailable } from "../../src/crypto/kms.js";
import { openKeyProvider } from "../../src/crypto/open-key-provider.js";
import { SegmentRecordCipher } from "../../src/crypto/record-cipher.js";
import { awsKmsSdkStandIn } from "./aws-kms-sdk-stand-in.js";
import { FakeAwsKms } from "./fake-aws-kms.js";

const realSdk: AwsKmsSdk | undefined = await loadAwsKmsSdk().catch(() => undefined);
const sdks: [string, AwsKmsSdk][] = [["the SDK stand-in", awsKmsSdkStandIn]];
if (realSdk !== undefined) sdks.push([AWS_KMS_SDK_PACKAGE, realSdk]);

const CONTEXT: EncryptionContext = { clusterId: "6f1c2a9e-4b7d-4c1e-9a53-0e2f5d8b7c61", fileIdentity: segmentFileIdentity(3) };
const AT = { file: "log/00000003.segment", offset: 208 };
const CREDENTIALS = { accessKeyId: "AKIDVERITYTEST", secretAccessKey: "verity-test-secret" };
const noSleep = async (): Promise<void> => {};

async function caught(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (e) {
    return e as Error;
  }
  throw new Error("expected a rejection");
}

function expectKmsError(error: Error, code: ErrorCode, grpc: number): KmsError {
  expect(error).toBeInstanceOf(KmsError);
  expect((error as KmsError).code).toBe(code);
  expect(grpcStatusOf[(error as KmsError).code]).toBe(grpc);
  return error as KmsError;
}

describe.each(sdks)("aws-kms provider through %s", (_name, sdk) => {
  let fake: FakeAwsKms;
  let key: { keyId: string; arn: string };
  let providers: AwsKmsKeyProvider[];

  const open = async (overrides: Partial<AwsKmsProviderOptions> = {}): Promise<AwsKmsKeyProvider> => {
    const provider = await AwsKmsKeyProvider.open({
      keyId: key.arn, region: fake.region, endpoint: fake.endpoint, credentials: CREDENTIALS, sdk,
      attemptsMax: 2, connectTimeoutMs: 500, requestTimeoutMs: 500, ...overrides,
    });
    providers.push(provider);
    return provider;
  };

  beforeEach(async () => {
    fake = await FakeAwsKms.start();
    key = fake.createKey("verity");
    providers = [];
  });
  afterEach(async () => {
    for (const p of providers) await p.close();
    await fake.stop();
  });

  it("generates, unwraps and describes, sending the encryption context that names cluster and file", async () => {
    const kms = await open();
    const dataKey = await kms.generateDataKey(CONTEXT);
    expect(dataKey.plaintext.length).toBe(32);
    expect(dataKey.wrapped.length).toBeLessThanOrEqual(256);
    expect(dataKey.keyId).toBe(key.arn);
    expect(dataKey.keyVersion).toBe(fake.currentMaterialId(key.keyId));
    expect((await kms.unwrap(dataKey.wrapped, CONTEXT, { keyId: dataKey.keyId, location: AT })).equals(dataKey.plaintext)).toBe(true);
    expect(await kms.describe()).toMatchObject({ provider: "aws-kms", keyId: key.arn, keyVersion: fake.currentMaterialId(key.keyId) });
    expect(fake.requests.map((r) => r.operation)).toEqual(["GenerateDataKey", "Decrypt", "DescribeKey"]);
    expect(fake.requests[0]!.encryptionContext).toEqual({ "verity:cluster": CONTEXT.clusterId, "verity:file": "log/segment/00000003" });
    expect(fake.requests[1]!.keyId).toBe(key.arn); // Decrypt always names the key it must use
  });

  it("accepts an alias as kms_key_id and stores the key ARN", async () => {
    const kms = await open({ keyId: "alias/verity" });
    const dataKey = await kms.generateDataKey(CONTEXT);
    expect(dataKey.keyId).toBe(key.arn);
    expect((await kms.unwrap(dataKey.wrapped, CONTEXT, { keyId: dataKey.keyId })).equals(dataKey.plaintext)).toBe(true);
  });

  it("a tampered wrapped key, or one moved to another file's header, is CorruptionError naming the file", async () => {
    const kms = await open();
    const dataKey = await kms.generateDataKey(CONTEXT);
    const flipped = Buffer.from(dataKey.wrapped);
    flipped[flipped.length - 20]! ^= 1;
    for (const [wrapped, context] of [[flipped, CONTEXT], [dataKey.wrapped, { ...CONTEXT, fileIdentity: segmentFileIdentity(4) }]] as const) {
      const error = await caught(kms.unwrap(wrapped, context, { location: AT }));
      expect(error).toBeInstanceOf(CorruptionError);
      expect((error as CorruptionError).location).toEqual(AT);
      expect(grpcStatusOf[(error as CorruptionError).code]).toBe(GrpcStatus.DATA_LOSS);
      expect(error.message).toContain("log/00000003.segment at byte offset 208");
    }
  });

  it("a wrong key id is NOT_FOUND naming the key, at start and when making keys", async () => {
    const kms = await open({ keyId: `arn:aws:kms:${fake.region}:111122223333:key/00000000-0000-0000-0000-000000000000` });
    const atStart = expectKmsError(await caught(kms.describe()), ErrorCode.NOT_FOUND, GrpcStatus.NOT_FOUND);
    expect(atStart.message).toContain("00000000-0000-0000-0000-000000000000");
    expect(atStart.message).toContain("kms_key_id");
    expectKmsError(await caught(kms.generateDataKey(CONTEXT)), ErrorCode.NOT_FOUND, GrpcStatus.NOT_FOUND);
  });

  it("data wrapped by another key is corruption, unless that key is a previous key id; rewrap moves it", async () => {
    const old = await open();
    const dataKey = await old.generateDataKey(CONTEXT);
    const next = fake.createKey();
    const strict = await open({ keyId: next.arn });
    const error = await caught(strict.unwrap(dataKey.wrapped, CONTEXT, { keyId: dataKey.keyId, location: AT }));
    expect(error).toBeInstanceOf(CorruptionError);
    expect(error.message).toContain("another key than kms_key_id");

    const moving = await open({ keyId: next.arn, previousKeyIds: [key.arn] });
    expect((await moving.unwrap(dataKey.wrapped, CONTEXT, { keyId: dataKey.keyId })).equals(dataKey.plaintext)).toBe(true);
    const moved = await moving.rewrap(dataKey.wrapped, CONTEXT, { keyId: dataKey.keyId });
    expect(moved.keyId).toBe(next.arn);
    expect((await strict.unwrap(moved.wrapped, CONTEXT, { keyId: moved.keyId })).equals(dataKey.plaintext)).toBe(true);
  });

  it("a revoked key (disabled, pending deletion, access removed) is PERMISSION_DENIED saying why", async () => {
    const kms = await open();
    const dataKey = await kms.generateDataKey(CONTEXT);
    for (const [revoke, why] of [
      [() => fake.setKeyState(key.keyId, "Disabled"), /disabled/],
      [() => fake.setKeyState(key.keyId, "PendingDeletion"), /pending deletion/],
      [() => { fake.setKeyState(key.keyId, "Enabled"); fake.denyAccess(key.keyId); }, /not authorized/],
    ] as const) {
      revoke();
      for (const call of [kms.generateDataKey(CONTEXT), kms.unwrap(dataKey.wrapped, CONTEXT), kms.rewrap(dataKey.wrapped, CONTEXT), kms.describe()]) {
        const error = expectKmsError(await caught(call), ErrorCode.PERMISSION_DENIED, GrpcStatus.PERMISSION_DENIED);
        expect(error.retryable).toBe(false);
        expect(error.message).toMatch(why);
      }
    }
    fake.denyAccess(key.keyId, false);
    expect((await kms.unwrap(dataKey.wrapped, CONTEXT)).equals(dataKey.plaintext)).toBe(true);
  });

  it("credentials the KMS does not know are PERMISSION_DENIED", async () => {
    const kms = await open({ credentials: { accessKeyId: "AKIDUNKNOWN", secretAccessKey: "x" } });
    expectKmsError(await caught(kms.generateDataKey(CONTEXT)), ErrorCode.PERMISSION_DENIED, GrpcStatus.PERMISSION_DENIED);
  });

  it("an unreachable KMS at start is UNAVAILABLE after bounded retries, with a clear message", async () => {
    const kms = await open();
    await fake.stop();
    const retries: number[] = [];
    const error = expectKmsError(
      await caught(retryWhileUnavailable(() => kms.describe(), { attemptsMax: 3, sleep: noSleep, onRetry: (attempt) => retries.push(attempt) })),
      ErrorCode.UNAVAILABLE, GrpcStatus.UNAVAILABLE);
    expect(error.retryable).toBe(true);
    expect(retries).toEqual([1, 2]);
    expect(error.message).toContain(fake.endpoint);
    expect(error.message).toMatch(/cannot reach the KMS/);
    expect(error.message).toMatch(/Gave up after 3 attempts/);
    expect(error.message).toMatch(/kms_endpoint/);
  });

  it("through openKeyProvider: unreachable fails after the retries naming the endpoint; revoked and wrong keys stop the start at once", async () => {
    const settings = { provider: "aws-kms", keyId: key.arn, region: fake.region, endpoint: fake.endpoint, credentials: CREDENTIALS, sdk } as const;
    let retries = 0;
    const retry = { attemptsMax: 3, sleep: noSleep, onRetry: () => { retries++; } };
    fake.setKeyState(key.keyId, "Disabled");
    expect(expectKmsError(await caught(openKeyProvider(settings, { retry })), ErrorCode.PERMISSION_DENIED, GrpcStatus.PERMISSION_DENIED).message).toMatch(/disabled/);
    expectKmsError(await caught(openKeyProvider({ ...settings, keyId: "alias/no-such-key" }, { retry })), ErrorCode.NOT_FOUND, GrpcStatus.NOT_FOUND);
    expect(retries).toBe(0);
    await fake.stop();
    const error = expectKmsError(await caught(openKeyProvider(settings, { retry })), ErrorCode.UNAVAILABLE, GrpcStatus.UNAVAILABLE);
    expect(retries).toBe(2);
    expect(error.message).toContain(`aws-kms at ${fake.endpoint}`);
    expect(error.message).toMatch(/Gave up after 3 attempts/);
  });

  it("start-up retries succeed once the KMS comes back", async () => {
    const port = fake.port;
    await fake.stop();
    const opened = await openKeyProvider(
      { provider: "aws-kms", keyId: key.arn, region: fake.region, endpoint: `http://127.0.0.1:${port}`, credentials: CREDENTIALS, sdk },
      { retry: { attemptsMax: 5, sleep: noSleep, onRetry: (attempt) => { if (attempt === 2) void fake.listen(port); } } },
    );
    try {
      expect(opened.description.keyId).toBe(key.arn);
    } finally {
      await opened.provider.close();
    }
  });

  it("a KMS that accepts and never answers times out as UNAVAILABLE", async () => {
    const kms = await open({ requestTimeoutMs: 200 });
    fake.stallNext(10);
    const started = performance.now();
    const error = expectKmsError(await caught(kms.generateDataKey(CONTEXT)), ErrorCode.UNAVAILABLE, GrpcStatus.UNAVAILABLE);
    expect(error.retryable).toBe(true);
    expect(performance.now() - started).toBeLessThan(5_000);
  });

  it("transient KMS errors are retried by the client; persistent ones are UNAVAILABLE", async () => {
    const kms = await open({ attemptsMax: 3 });
    fake.failNext(1, "KMSInternalException", 500);
    await expect(kms.generateDataKey(CONTEXT)).resolves.toMatchObject({ keyId: key.arn });
    fake.failNext(10, "ThrottlingException", 400);
    expectKmsError(await caught(kms.generateDataKey(CONTEXT)), ErrorCode.UNAVAILABLE, GrpcStatus.UNAVAILABLE);
  });

  it("rotation: rewrap puts the data key under the new key material; segment bodies stay as they are", async () => {
    const kms = await open();
    const dataKey = await kms.generateDataKey(CONTEXT);
    const clusterId = randomBytes(16);
    const records = new SegmentRecordCipher({ dataKey: dataKey.plaintext, clusterId, segmentSequence: 3 });
    const sealed = records.seal({ index: 9, term: 2, kind: 1 }, Buffer.from("an event"));
    const material = fake.rotateKey(key.keyId);
    const rewrapped = await kms.rewrap(dataKey.wrapped, CONTEXT, { keyId: dataKey.keyId, location: AT });
    expect(rewrapped.keyVersion).toBe(material);
    expect(rewrapped.keyId).toBe(key.arn);
    expect(rewrapped.wrapped.equals(dataKey.wrapped)).toBe(false);
    const unwrapped = await kms.unwrap(rewrapped.wrapped, CONTEXT);
    const reader = new SegmentRecordCipher({ dataKey: unwrapped, clusterId, segmentSequence: 3 });
    expect(reader.open({ index: 9, term: 2, kind: 1 }, sealed, { file: AT.file, offset: 512 }).toString()).toBe("an event");
    expect((await kms.unwrap(dataKey.wrapped, CONTEXT)).equals(dataKey.plaintext)).toBe(true); // old material still decrypts
    expect((await kms.generateDataKey(CONTEXT)).keyVersion).toBe(material);
  });

  it("through openKeyProvider, repeated unwraps reach the KMS once (the data key cache)", async () => {
    const { provider } = await openKeyProvider({ provider: "aws-kms", keyId: key.arn, region: fake.region, endpoint: fake.endpoint, credentials: CREDENTIALS, sdk });
    try {
      const dataKey = await provider.generateDataKey(CONTEXT);
      const other = await (await open()).generateDataKey({ ...CONTEXT, fileIdentity: segmentFileIdentity(9) });
      const before = fake.requests.filter((r) => r.operation === "Decrypt").length;
      for (let i = 0; i < 5; i++) {
        await provider.unwrap(dataKey.wrapped, CONTEXT);
        await provider.unwrap(other.wrapped, { ...CONTEXT, fileIdentity: segmentFileIdentity(9) });
      }
      expect(fake.requests.filter((r) => r.operation === "Decrypt").length - before).toBe(1);
    } finally {
      await provider.close();
    }
  });
});

describe("aws-kms without the SDK, credentials, and the fake KMS's wire protocol", () => {
  it.skipIf(realSdk !== undefined)(`says to install ${AWS_KMS_SDK_PACKAGE} when it is missing`, async () => {
    const error = expectKmsError(await caught(loadAwsKmsSdk()), ErrorCode.FAILED_PRECONDITION, GrpcStatus.FAILED_PRECONDITION);
    expect(error.message).toContain(`npm install ${AWS_KMS_SDK_PACKAGE}`);
  });

  it("credentialsFromEnvironment is explicit and says what is missing", () => {
    expect(() => credentialsFromEnvironment({})).toThrow(/AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY/);
    expect(credentialsFromEnvironment({ AWS_ACCESS_KEY_ID: "a", AWS_SECRET_ACCESS_KEY: "b", AWS_SESSION_TOKEN: "c" }))
      .toEqual({ accessKeyId: "a", secretAccessKey: "b", sessionToken: "c" });
  });

  it("the fake speaks JSON 1.1 with X-Amz-Target: TrentService.<Operation> and AWS error shapes", async () => {
    const fake = await FakeAwsKms.start();
    try {
      const { arn } = fake.createKey();
      const post = (target: string, body: object, auth = true): Promise<Response> => fetch(fake.endpoint + "/", {
        method: "POST",
        headers: {
          "content-type": "application/x-amz-json-1.1", "x-amz-target": target,
          ...(auth ? { authorization: "AWS4-HMAC-SHA256 Credential=AKIDVERITYTEST/20260101/us-east-1/kms/aws4_request, Signature=0" } : {}),
        },
        body: JSON.stringify(body),
      });
      const ok = await post("TrentService.Encrypt", { KeyId: arn, Plaintext: Buffer.from("hello").toString("base64"), EncryptionContext: { a: "b" } });
      expect(ok.status).toBe(200);
      expect(ok.headers.get("content-type")).toBe("application/x-amz-json-1.1");
      const { CiphertextBlob } = await ok.json() as { CiphertextBlob: string };
      const decrypted = await (await post("TrentService.Decrypt", { CiphertextBlob, EncryptionContext: { a: "b" } })).json() as { Plaintext: string; KeyId: string };
      expect(Buffer.from(decrypted.Plaintext, "base64").toString()).toBe("hello");
      expect(decrypted.KeyId).toBe(arn);
      const wrongContext = await post("TrentService.Decrypt", { CiphertextBlob, EncryptionContext: { a: "c" } });
      expect(wrongContext.status).toBe(400);
      expect(await wrongContext.json()).toMatchObject({ __type: "InvalidCiphertextException" });
      expect(wrongContext.headers.get("x-amzn-errortype")).toBe("InvalidCiphertextException:");
      expect(await (await post("TrentService.Nope", {})).json()).toMatchObject({ __type: "UnknownOperationException" });
      expect(await (await post("TrentService.DescribeKey", { KeyId: arn }, false)).json()).toMatchObject({ __type: "MissingAuthenticationTokenException" });
    } finally {
      await fake.stop();
    }
  });
});
