/**
 * The `aws-kms` key provider: data keys from AWS KMS (GenerateDataKey), unwrapped with Decrypt and
 * re-wrapped with ReEncrypt, always with the encryption context {"verity:cluster", "verity:file"},
 * which KMS authenticates and writes to CloudTrail.
 *
 * It talks to KMS through @aws-sdk/client-kms, loaded with a dynamic import so that this file
 * compiles and the rest of VerityDB runs without the package; choosing `kms_provider = "aws-kms"`
 * without it installed fails at start with a message saying what to install. The slice of the SDK
 * used is typed below (AwsKmsSdk); tests pass the real SDK when it is installed, or a small stand-in.
 *
 * Credentials are always passed explicitly (`credentials`), never left to the SDK's default chain,
 * whose instance-metadata probe can stall a start for seconds off EC2 and which would pick up
 * whatever a test machine happens to have in its environment. `credentialsFromEnvironment` is the
 * explicit form of the common case. Timeouts throw (`throwOnRequestTimeout`: the SDK only warns by
 * default), and the SDK's own retries are bounded (AWS_KMS_SDK_ATTEMPTS_MAX).
 */

import { ErrorCode, InvalidArgumentError } from "../errors.js";
import { SETTING_TEXT_BYTES_MAX } from "../limits.js";
import {
  AWS_KMS_CONNECT_TIMEOUT_MS,
  AWS_KMS_REQUEST_TIMEOUT_MS,
  AWS_KMS_SDK_ATTEMPTS_MAX,
  KMS_PREVIOUS_KEY_IDS_MAX,
} from "./crypto-limits.js";
import type { EncryptionContext, KeyLocation } from "./encryption-context.js";
import { encryptionContextMap } from "./encryption-context.js";
import type { GeneratedDataKey, KeyDescription, KeyProvider, KmsOperation, UnwrapOptions, WrappedDataKey } from "./kms.js";
import {
  KmsError,
  checkPlaintextKey,
  checkWrappedKey,
  kmsKeyNotFound,
  kmsPermissionDenied,
  kmsUnavailable,
  wrappedKeyCorruption,
} from "./kms.js";

/** The npm package this provider needs. */
export const AWS_KMS_SDK_PACKAGE = "@aws-sdk/client-kms";
/** The key version reported when KMS does not return a key material id. */
const KEY_MATERIAL_UNKNOWN = "current";

/** AWS credentials, as the SDK takes them. */
export interface AwsCredentials {
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly sessionToken?: string;
  readonly expiration?: Date;
}
export type AwsCredentialsProvider = () => Promise<AwsCredentials>;

/** The KMS client configuration this provider sets (a subset of KMSClientConfig). */
export interface AwsKmsClientConfig {
  region: string;
  endpoint?: string;
  credentials: AwsCredentials | AwsCredentialsProvider;
  maxAttempts: number;
  requestHandler: { connectionTimeout: number; requestTimeout: number; throwOnRequestTimeout: boolean };
}

/** A command object (the SDK's commands keep their input in `input`). */
export interface AwsKmsCommand {
  readonly input: object;
}

export interface AwsKmsClient {
  send(command: AwsKmsCommand): Promise<unknown>;
  destroy(): void;
}

interface GenerateDataKeyInput { KeyId: string; KeySpec: "AES_256"; EncryptionContext: Record<string, string> }
interface DecryptInput { CiphertextBlob: Uint8Array; KeyId: string; EncryptionContext: Record<string, string> }
interface ReEncryptInput {
  CiphertextBlob: Uint8Array;
  SourceKeyId: string;
  SourceEncryptionContext: Record<string, string>;
  DestinationKeyId: string;
  DestinationEncryptionContext: Record<string, string>;
}
interface DescribeKeyInput { KeyId: string }

/** The slice of @aws-sdk/client-kms used here. */
export interface AwsKmsSdk {
  KMSClient: new (config: AwsKmsClientConfig) => AwsKmsClient;
  GenerateDataKeyCommand: new (input: GenerateDataKeyInput) => AwsKmsCommand;
  DecryptCommand: new (input: DecryptInput) => AwsKmsCommand;
  ReEncryptCommand: new (input: ReEncryptInput) => AwsKmsCommand;
  DescribeKeyCommand: new (input: DescribeKeyInput) => AwsKmsCommand;
}

interface GenerateDataKeyOutput { CiphertextBlob?: Uint8Array; Plaintext?: Uint8Array; KeyId?: string; KeyMaterialId?: string }
interface DecryptOutput { Plaintext?: Uint8Array; KeyId?: string; KeyMaterialId?: string }
interface ReEncryptOutput { CiphertextBlob?: Uint8Array; KeyId?: string; SourceKeyId?: string; DestinationKeyMaterialId?: string }
interface DescribeKeyOutput {
  KeyMetadata?: { KeyId?: string; Arn?: string; Enabled?: boolean; KeyState?: string; KeyUsage?: string; KeySpec?: string; CurrentKeyMaterialId?: string };
}

/**
 * Loads @aws-sdk/client-kms. Throws FAILED_PRECONDITION naming the package when it is not installed.
 */
export async function loadAwsKmsSdk(): Promise<AwsKmsSdk> {
  const specifier: string = AWS_KMS_SDK_PACKAGE; // a variable, so the compiler does not need the package
  try {
    return (await import(specifier)) as AwsKmsSdk;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ERR_MODULE_NOT_FOUND" || code === "MODULE_NOT_FOUND") {
      throw new KmsError(ErrorCode.FAILED_PRECONDITION, "aws-kms", "open",
        `kms_provider = "aws-kms" needs the npm package ${AWS_KMS_SDK_PACKAGE}, which is not installed: run \`npm install ${AWS_KMS_SDK_PACKAGE}\``,
        { cause: e });
    }
    throw e;
  }
}

/**
 * Static credentials from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN, or an
 * error saying what is missing. (Instance roles and SSO need an explicit provider from
 * @aws-sdk/credential-providers; they are never picked up silently.)
 */
export function credentialsFromEnvironment(env: NodeJS.ProcessEnv = process.env): AwsCredentials {
  const accessKeyId = env["AWS_ACCESS_KEY_ID"];
  const secretAccessKey = env["AWS_SECRET_ACCESS_KEY"];
  if (accessKeyId === undefined || accessKeyId === "" || secretAccessKey === undefined || secretAccessKey === "") {
    throw new KmsError(ErrorCode.FAILED_PRECONDITION, "aws-kms", "open",
      "kms_provider = \"aws-kms\" needs AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary ones)");
  }
  const sessionToken = env["AWS_SESSION_TOKEN"];
  return sessionToken === undefined || sessionToken === "" ? { accessKeyId, secretAccessKey } : { accessKeyId, secretAccessKey, sessionToken };
}

export interface AwsKmsProviderOptions {
  /** `kms_key_id`: a key id, key ARN, alias name or alias ARN. */
  readonly keyId: string;
  /** `region` (required by KMS even with an endpoint). */
  readonly region: string;
  /** `kms_endpoint`: e.g. a VPC endpoint, or a test server on loopback. */
  readonly endpoint?: string;
  /** Always explicit (see the file comment). */
  readonly credentials: AwsCredentials | AwsCredentialsProvider;
  /** Keys that wrapped older data keys and may still unwrap them, while a move to `keyId` is re-wrapping. */
  readonly previousKeyIds?: readonly string[];
  /** The SDK; loaded from @aws-sdk/client-kms when not given. */
  readonly sdk?: AwsKmsSdk;
  readonly attemptsMax?: number;
  readonly connectTimeoutMs?: number;
  readonly requestTimeoutMs?: number;
}

/** DescribeKey's KeyState values that forbid use, in words. */
const KEY_STATE_TEXT: Readonly<Record<string, string>> = {
  Disabled: "the key is disabled",
  PendingDeletion: "the key is pending deletion",
  PendingImport: "the key's material has not been imported",
  Unavailable: "the key's custom key store is disconnected",
  Creating: "the key is still being created",
  Updating: "the key is being updated",
  PendingReplicaDeletion: "the replica key is pending deletion",
};

/** KMS errors by exception name (the SDK sets `name` from the response's __type). */
const PERMISSION_ERRORS: Readonly<Record<string, string>> = {
  DisabledException: "the key is disabled",
  KMSInvalidStateException: "the key is pending deletion, pending import or otherwise unusable",
  AccessDeniedException: "these credentials are not allowed to use the key",
  UnrecognizedClientException: "the access key id is not recognised",
  InvalidSignatureException: "the request signature does not match (check the secret access key)",
  IncompleteSignatureException: "the request signature is incomplete",
  ExpiredTokenException: "the session token has expired",
  InvalidClientTokenId: "the access key id is not valid",
  MissingAuthenticationTokenException: "no credentials were sent",
  CredentialsProviderError: "no credentials could be loaded",
};
const UNAVAILABLE_ERRORS = new Set([
  "KeyUnavailableException", "DependencyTimeoutException", "KMSInternalException", "ThrottlingException",
  "ThrottledException", "LimitExceededException", "RequestLimitExceeded", "ServiceUnavailable", "TimeoutError",
  "RequestTimeout", "RequestTimeoutException", "AbortError",
]);
const NETWORK_CODES = new Set([
  "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH", "EPIPE",
  "ECONNABORTED", "UND_ERR_CONNECT_TIMEOUT", "UND_ERR_SOCKET",
]);

function errorFacts(error: unknown): { name: string; code: string | undefined; status: number | undefined; message: string } {
  const e = error as { name?: unknown; code?: unknown; message?: unknown; cause?: { code?: unknown }; $metadata?: { httpStatusCode?: unknown } };
  const code = typeof e?.code === "string" ? e.code : typeof e?.cause?.code === "string" ? e.cause.code : undefined;
  const status = typeof e?.$metadata?.httpStatusCode === "number" ? e.$metadata.httpStatusCode : undefined;
  return { name: typeof e?.name === "string" ? e.name : "Error", code, status, message: typeof e?.message === "string" ? e.message : String(error) };
}

/** The provider. Safe to use concurrently; the SDK client pools connections. */
export class AwsKmsKeyProvider implements KeyProvider {
  readonly kind = "aws-kms" as const;
  readonly keyId: string;
  readonly where: string;
  private readonly previousKeyIds: readonly string[];
  /** Key ARNs KMS reported for the configured ids (an alias resolves to its key's ARN). */
  private readonly resolvedArns = new Map<string, string>();
  private closed = false;

  private constructor(private readonly sdk: AwsKmsSdk, private readonly client: AwsKmsClient, options: AwsKmsProviderOptions) {
    this.keyId = options.keyId;
    this.previousKeyIds = options.previousKeyIds ?? [];
    this.where = `${options.endpoint ?? `https://kms.${options.region}.amazonaws.com`} (region ${options.region})`;
  }

  /** Creates the SDK client. Does not call KMS: the start-up check is `describe()`, with retries. */
  static async open(options: AwsKmsProviderOptions): Promise<AwsKmsKeyProvider> {
    for (const id of [options.keyId, ...(options.previousKeyIds ?? [])]) {
      if (id.length === 0 || Buffer.byteLength(id) > SETTING_TEXT_BYTES_MAX) throw new InvalidArgumentError(`kms key id ${JSON.stringify(id)} is empty or too long`);
    }
    if ((options.previousKeyIds?.length ?? 0) > KMS_PREVIOUS_KEY_IDS_MAX) {
      throw new InvalidArgumentError(`at most KMS_PREVIOUS_KEY_IDS_MAX (${KMS_PREVIOUS_KEY_IDS_MAX}) previous key ids`);
    }
    if (options.region === "") throw new InvalidArgumentError("kms_provider = \"aws-kms\" needs a region");
    if (options.credentials === undefined) throw new InvalidArgumentError("kms_provider = \"aws-kms\" needs explicit credentials");
    const sdk = options.sdk ?? await loadAwsKmsSdk();
    const config: AwsKmsClientConfig = {
      region: options.region,
      credentials: options.credentials,
      maxAttempts: options.attemptsMax ?? AWS_KMS_SDK_ATTEMPTS_MAX,
      requestHandler: {
        connectionTimeout: options.connectTimeoutMs ?? AWS_KMS_CONNECT_TIMEOUT_MS,
        requestTimeout: options.requestTimeoutMs ?? AWS_KMS_REQUEST_TIMEOUT_MS,
        throwOnRequestTimeout: true,
      },
      ...(options.endpoint === undefined ? {} : { endpoint: options.endpoint }),
    };
    return new AwsKmsKeyProvider(sdk, new sdk.KMSClient(config), options);
  }

  async generateDataKey(context: EncryptionContext): Promise<GeneratedDataKey> {
    const out = await this.call("generate-data-key", this.keyId, context, undefined,
      new this.sdk.GenerateDataKeyCommand({ KeyId: this.keyId, KeySpec: "AES_256", EncryptionContext: encryptionContextMap(context) })) as GenerateDataKeyOutput;
    const plaintext = checkPlaintextKey(this.kind, "generate-data-key", out.Plaintext);
    const keyId = out.KeyId ?? this.keyId;
    this.resolvedArns.set(this.keyId, keyId);
    const result = { plaintext, wrapped: Buffer.from(out.CiphertextBlob ?? []), keyId, keyVersion: out.KeyMaterialId ?? KEY_MATERIAL_UNKNOWN };
    checkWrappedKey(this.kind, "generate-data-key", result);
    return result;
  }

  async unwrap(wrapped: Uint8Array, context: EncryptionContext, options: UnwrapOptions = {}): Promise<Buffer> {
    const out = await this.withCandidateKeys("unwrap", context, options, (keyId) =>
      new this.sdk.DecryptCommand({ CiphertextBlob: wrapped, KeyId: keyId, EncryptionContext: encryptionContextMap(context) })) as DecryptOutput;
    return checkPlaintextKey(this.kind, "unwrap", out.Plaintext);
  }

  async rewrap(wrapped: Uint8Array, context: EncryptionContext, options: UnwrapOptions = {}): Promise<WrappedDataKey> {
    const map = encryptionContextMap(context);
    const out = await this.withCandidateKeys("rewrap", context, options, (keyId) => new this.sdk.ReEncryptCommand({
      CiphertextBlob: wrapped, SourceKeyId: keyId, SourceEncryptionContext: map, DestinationKeyId: this.keyId, DestinationEncryptionContext: map,
    })) as ReEncryptOutput;
    const result = {
      wrapped: Buffer.from(out.CiphertextBlob ?? []),
      keyId: out.KeyId ?? this.keyId,
      keyVersion: out.DestinationKeyMaterialId ?? KEY_MATERIAL_UNKNOWN,
    };
    checkWrappedKey(this.kind, "rewrap", result);
    return result;
  }

  /** The start-up check: the key exists, is enabled, and is a symmetric encryption key. */
  async describe(): Promise<KeyDescription> {
    const out = await this.call("describe", this.keyId, undefined, undefined, new this.sdk.DescribeKeyCommand({ KeyId: this.keyId })) as DescribeKeyOutput;
    const meta = out.KeyMetadata;
    if (meta === undefined) throw kmsKeyNotFound(this.kind, "describe", this.keyId, this.where);
    if (meta.KeyState !== undefined && meta.KeyState !== "Enabled") {
      throw kmsPermissionDenied(this.kind, "describe", this.keyId, KEY_STATE_TEXT[meta.KeyState] ?? `the key is in state ${meta.KeyState}`);
    }
    if ((meta.KeyUsage !== undefined && meta.KeyUsage !== "ENCRYPT_DECRYPT") || (meta.KeySpec !== undefined && meta.KeySpec !== "SYMMETRIC_DEFAULT")) {
      throw new KmsError(ErrorCode.FAILED_PRECONDITION, this.kind, "describe",
        `KMS key ${this.keyId} is a ${meta.KeySpec ?? "?"} key for ${meta.KeyUsage ?? "?"}; at-rest encryption needs a SYMMETRIC_DEFAULT key for ENCRYPT_DECRYPT`);
    }
    const arn = meta.Arn ?? this.keyId;
    this.resolvedArns.set(this.keyId, arn);
    return { provider: this.kind, keyId: arn, keyVersion: meta.CurrentKeyMaterialId ?? KEY_MATERIAL_UNKNOWN, where: this.where };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.client.destroy();
  }

  /**
   * Runs a Decrypt or ReEncrypt with the configured key, then each previous key, as the KeyId KMS
   * must use: KMS answers IncorrectKeyException when the blob was wrapped by another key, so a
   * forged header naming some other account's key is never trusted. The key the header names
   * (options.keyId) is tried first when it is one of ours.
   */
  private async withCandidateKeys(operation: KmsOperation, context: EncryptionContext, options: UnwrapOptions,
    command: (keyId: string) => AwsKmsCommand): Promise<unknown> {
    const allowed = [this.keyId, ...this.previousKeyIds];
    const hinted = allowed.find((id) => id === options.keyId || this.resolvedArns.get(id) === options.keyId);
    const order = hinted === undefined ? allowed : [hinted, ...allowed.filter((id) => id !== hinted)];
    for (const keyId of order) {
      try {
        const out = await this.call(operation, keyId, context, options.location, command(keyId)) as { KeyId?: string; SourceKeyId?: string };
        const arn = out.SourceKeyId ?? out.KeyId;
        if (arn !== undefined && operation === "unwrap") this.resolvedArns.set(keyId, arn);
        return out;
      } catch (e) {
        if (!(e instanceof IncorrectKey)) throw e;
      }
    }
    throw wrappedKeyCorruption(this.kind, context, options.location,
      `KMS reports it was wrapped by another key than kms_key_id (${this.keyId})` +
        (this.previousKeyIds.length > 0 ? ` and kms_previous_key_ids (${this.previousKeyIds.join(", ")})` : "") +
        (options.keyId === undefined ? "" : `; the header names ${options.keyId}`));
  }

  private async call(operation: KmsOperation, keyId: string, context: EncryptionContext | undefined,
    location: KeyLocation | undefined, command: AwsKmsCommand): Promise<unknown> {
    if (this.closed) throw new KmsError(ErrorCode.FAILED_PRECONDITION, this.kind, operation, "the aws-kms key provider is closed");
    try {
      return await this.client.send(command);
    } catch (e) {
      throw this.classify(e, operation, keyId, context, location);
    }
  }

  /** Maps an SDK or network error onto the error vocabulary (see kms.ts). */
  private classify(error: unknown, operation: KmsOperation, keyId: string, context: EncryptionContext | undefined,
    location: KeyLocation | undefined): Error {
    const { name, code, status, message } = errorFacts(error);
    if (name === "IncorrectKeyException") return new IncorrectKey(message);
    if (name === "InvalidCiphertextException" && context !== undefined) {
      return wrappedKeyCorruption(this.kind, context, location, `KMS says the ciphertext is invalid for this context (${message})`);
    }
    if (name === "NotFoundException" || name === "InvalidArnException") return kmsKeyNotFound(this.kind, operation, keyId, this.where, error);
    const denied = PERMISSION_ERRORS[name];
    if (denied !== undefined) return kmsPermissionDenied(this.kind, operation, keyId, `${denied} (${name}: ${message})`, error);
    if (UNAVAILABLE_ERRORS.has(name) || (code !== undefined && NETWORK_CODES.has(code)) || (status !== undefined && status >= 500)) {
      return kmsUnavailable(this.kind, operation, this.where, `${name}${code === undefined ? "" : ` ${code}`}: ${message}`, error);
    }
    if (name === "InvalidKeyUsageException" || name === "UnsupportedOperationException") {
      return new KmsError(ErrorCode.FAILED_PRECONDITION, this.kind, operation,
        `KMS key ${keyId} cannot be used for ${operation}: ${message}; at-rest encryption needs a symmetric ENCRYPT_DECRYPT key`, { cause: error });
    }
    return new KmsError(ErrorCode.INTERNAL, this.kind, operation, `unexpected answer from KMS (${this.where}) to ${operation}: ${name}: ${message}`, { cause: error });
  }
}

/** Internal: KMS said the blob belongs to another key; the next candidate key is tried. */
class IncorrectKey extends Error {}
