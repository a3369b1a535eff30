/**
 * The `gcp-kms` key provider: data keys wrapped by a Google Cloud KMS symmetric key through
 * @google-cloud/kms (gRPC). Cloud KMS has no GenerateDataKey: the 32-byte data key is drawn here from
 * the OS CSPRNG and wrapped with Encrypt, whose additionalAuthenticatedData is the encoded encryption
 * context (encodeEncryptionContext), so a wrapped key moved to another file or cluster does not
 * decrypt. Decrypt names the CryptoKey (the ciphertext names its own version); rewrap is Decrypt then
 * Encrypt under the key's primary version.
 *
 * Stored key id: the CryptoKey name `projects/P/locations/L/keyRings/R/cryptoKeys/K` (at most
 * KMS_KEY_ID_BYTES_MAX bytes, checked at open). Key version: the CryptoKeyVersion name Encrypt
 * reports. A wrapped key is Cloud KMS's ciphertext of 32 bytes (about 110 bytes, well under
 * WRAPPED_KEY_BYTES_MAX).
 *
 * Credentials are explicit: either an auth client of the caller's (anything with google-auth-library's
 * `getRequestHeaders`), or "application-default" (GoogleAuth's Application Default Credentials:
 * GOOGLE_APPLICATION_CREDENTIALS, gcloud's file, or the metadata server on Google Cloud). The channel
 * is always TLS; `caCertificates` replaces the system roots (a private endpoint, tests). Calls are
 * bounded: each attempt has a deadline (CLOUD_KMS_REQUEST_TIMEOUT_MS), the client retries UNAVAILABLE,
 * DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED at most CLOUD_KMS_SDK_ATTEMPTS_MAX times in all.
 *
 * The SDK is loaded with a dynamic import, so that processes that never use gcp-kms do not load
 * google-gax and its protos.
 */

import { randomBytes } from "node:crypto";
import { credentials as grpcCredentials } from "@grpc/grpc-js";
import type { KeyManagementServiceClient } from "@google-cloud/kms";
import { ErrorCode, InvalidArgumentError } from "../errors.js";
import {
  CLOUD_KMS_REQUEST_TIMEOUT_MS,
  CLOUD_KMS_SDK_ATTEMPTS_MAX,
  CLOUD_KMS_SDK_RETRY_DELAY_MS_INITIAL,
  CLOUD_KMS_SDK_RETRY_DELAY_MS_MAX,
  KMS_KEY_ID_BYTES_MAX,
  KMS_PREVIOUS_KEY_IDS_MAX,
  WRAPPED_KEY_BYTES_MAX,
} from "./crypto-limits.js";
import type { EncryptionContext, KeyLocation } from "./encryption-context.js";
import { encodeEncryptionContext } from "./encryption-context.js";
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
export const GCP_KMS_SDK_PACKAGE = "@google-cloud/kms";
/** Cloud KMS's public endpoint. */
export const GCP_KMS_ENDPOINT_DEFAULT = "cloudkms.googleapis.com:443";

const CRYPTO_KEY_NAME = /^projects\/[^/\s]+\/locations\/[^/\s]+\/keyRings\/[^/\s]+\/cryptoKeys\/[^/\s]+$/;
const DATA_KEY_BYTES = 32;

/** gRPC status codes used here (google-gax reports them as numbers in `code`). */
const GrpcCode = {
  CANCELLED: 1, UNKNOWN: 2, INVALID_ARGUMENT: 3, DEADLINE_EXCEEDED: 4, NOT_FOUND: 5, PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8, FAILED_PRECONDITION: 9, ABORTED: 10, UNIMPLEMENTED: 12, INTERNAL: 13, UNAVAILABLE: 14,
  UNAUTHENTICATED: 16,
} as const;
/** Codes the client retries by itself (within CLOUD_KMS_SDK_ATTEMPTS_MAX) and that are UNAVAILABLE to callers. */
const RETRIED_CODES = [GrpcCode.UNAVAILABLE, GrpcCode.DEADLINE_EXCEEDED, GrpcCode.RESOURCE_EXHAUSTED];
const UNAVAILABLE_CODES = new Set<number>([...RETRIED_CODES, GrpcCode.CANCELLED, GrpcCode.ABORTED, GrpcCode.INTERNAL, GrpcCode.UNKNOWN]);

/** An auth client: google-auth-library's AuthClient, or anything with its getRequestHeaders. */
export interface GcpAuthClient {
  getRequestHeaders(url?: string): Promise<Headers | Record<string, string>>;
  /** google-auth-library clients name their universe; the SDK checks it against the endpoint's. */
  readonly universeDomain?: string;
}

/** "application-default": Application Default Credentials, looked up by google-auth-library. */
export type GcpCredentials = "application-default" | GcpAuthClient;

export interface GcpKmsProviderOptions {
  /** `kms_key_id`: a CryptoKey name, projects/P/locations/L/keyRings/R/cryptoKeys/K. */
  readonly keyId: string;
  /** `kms_endpoint`: host[:port] (https:// allowed); defaults to cloudkms.googleapis.com:443. */
  readonly endpoint?: string;
  /** Always explicit (see the file comment). */
  readonly credentials: GcpCredentials;
  /** PEM CA certificates to trust instead of the system's (a private endpoint; tests). */
  readonly caCertificates?: Buffer;
  /** CryptoKeys that wrapped older data keys and may still unwrap them while a move to `keyId` re-wraps. */
  readonly previousKeyIds?: readonly string[];
  readonly attemptsMax?: number;
  readonly requestTimeoutMs?: number;
  readonly retryDelayMsInitial?: number;
}

interface EncryptResponse { name?: string | null; ciphertext?: Uint8Array | string | null }
interface DecryptResponse { plaintext?: Uint8Array | string | null }
interface CryptoKeyResponse {
  name?: string | null;
  purpose?: string | number | null;
  primary?: { name?: string | null; state?: string | number | null } | null;
}

/** CryptoKeyVersionState values (proto enum), as text. */
const VERSION_STATES: Readonly<Record<number, string>> = {
  0: "CRYPTO_KEY_VERSION_STATE_UNSPECIFIED", 5: "PENDING_GENERATION", 1: "ENABLED", 2: "DISABLED", 3: "DESTROYED",
  4: "DESTROY_SCHEDULED", 6: "PENDING_IMPORT", 7: "IMPORT_FAILED", 8: "GENERATION_FAILED",
};
const PURPOSE_ENCRYPT_DECRYPT = 1;

/** Loads @google-cloud/kms. Throws FAILED_PRECONDITION naming the package when it is not installed. */
async function loadGcpKmsSdk(): Promise<typeof import("@google-cloud/kms")> {
  try {
    return await import("@google-cloud/kms");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ERR_MODULE_NOT_FOUND" || code === "MODULE_NOT_FOUND") {
      throw new KmsError(ErrorCode.FAILED_PRECONDITION, "gcp-kms", "open",
        `kms_provider = "gcp-kms" needs the npm package ${GCP_KMS_SDK_PACKAGE}, which is not installed: run \`npm install ${GCP_KMS_SDK_PACKAGE}\``,
        { cause: e });
    }
    throw e;
  }
}

/** Checks a CryptoKey name: format and room in the segment header. */
export function checkGcpKeyName(keyId: string): void {
  if (/\/cryptoKeyVersions\//.test(keyId)) {
    throw new InvalidArgumentError(`gcp-kms key id ${JSON.stringify(keyId)} names a key version: give the CryptoKey ` +
      "(projects/P/locations/L/keyRings/R/cryptoKeys/K, without /cryptoKeyVersions/N); new data keys use its primary version");
  }
  if (!CRYPTO_KEY_NAME.test(keyId)) {
    throw new InvalidArgumentError(`gcp-kms key id ${JSON.stringify(keyId)} is not a CryptoKey name: ` +
      "expected projects/<project>/locations/<location>/keyRings/<key ring>/cryptoKeys/<key>");
  }
  const bytes = Buffer.byteLength(keyId, "utf8");
  if (bytes > KMS_KEY_ID_BYTES_MAX) {
    throw new InvalidArgumentError(`gcp-kms key id ${JSON.stringify(keyId)} is ${bytes} bytes; a segment header holds a key id of at most ` +
      `KMS_KEY_ID_BYTES_MAX (${KMS_KEY_ID_BYTES_MAX}) bytes: use shorter key ring and key names`);
  }
}

/** `host[:port]` from kms_endpoint (an https:// prefix and a trailing slash are accepted). */
export function parseGcpEndpoint(endpoint: string | undefined): { host: string; port: number } {
  const text = (endpoint ?? GCP_KMS_ENDPOINT_DEFAULT).replace(/^https:\/\//, "").replace(/\/$/, "");
  const match = /^(\[[0-9a-fA-F:]+\]|[^:/\s]+)(?::(\d{1,5}))?$/.exec(text);
  const port = match?.[2] === undefined ? 443 : Number(match[2]);
  if (match === null || port < 1 || port > 65_535) {
    throw new InvalidArgumentError(`gcp-kms kms_endpoint ${JSON.stringify(endpoint)} must be host[:port], e.g. ${GCP_KMS_ENDPOINT_DEFAULT}`);
  }
  return { host: match[1]!, port };
}

function toBuffer(value: Uint8Array | string | null | undefined): Buffer {
  if (value === null || value === undefined) return Buffer.alloc(0);
  return typeof value === "string" ? Buffer.from(value, "base64") : Buffer.from(value.buffer, value.byteOffset, value.byteLength);
}

function enumText(value: string | number | null | undefined, names: Readonly<Record<number, string>>): string {
  if (typeof value === "number") return names[value] ?? String(value);
  return value ?? "unknown";
}

/** google-auth-library 10 returns a Headers object; gRPC call credentials want a plain map. */
async function plainHeaders(source: GcpAuthClient, url: string | undefined): Promise<Record<string, string>> {
  const headers = await source.getRequestHeaders(url);
  if (typeof (headers as Headers).forEach === "function" && typeof (headers as Headers).get === "function") {
    const out: Record<string, string> = {};
    (headers as Headers).forEach((value, key) => { out[key] = value; });
    return out;
  }
  return headers as Record<string, string>;
}

/** Internal: Cloud KMS says the ciphertext does not decrypt with this CryptoKey and AAD; the next candidate key is tried. */
class NotThisKey extends Error {}

/** The provider. Safe to use concurrently; the gRPC channel multiplexes calls. */
export class GcpKmsKeyProvider implements KeyProvider {
  readonly kind = "gcp-kms" as const;
  readonly keyId: string;
  readonly where: string;
  private readonly previousKeyIds: readonly string[];
  private readonly callOptions: object;
  private closed = false;

  private constructor(private readonly client: KeyManagementServiceClient, options: GcpKmsProviderOptions, where: string) {
    this.keyId = options.keyId;
    this.previousKeyIds = options.previousKeyIds ?? [];
    this.where = where;
    const attemptsMax = options.attemptsMax ?? CLOUD_KMS_SDK_ATTEMPTS_MAX;
    const requestTimeoutMs = options.requestTimeoutMs ?? CLOUD_KMS_REQUEST_TIMEOUT_MS;
    // google-gax call options: a deadline per attempt, at most attemptsMax attempts with jittered backoff.
    this.callOptions = {
      timeout: requestTimeoutMs,
      maxRetries: attemptsMax,
      retry: {
        retryCodes: RETRIED_CODES,
        backoffSettings: {
          initialRetryDelayMillis: options.retryDelayMsInitial ?? CLOUD_KMS_SDK_RETRY_DELAY_MS_INITIAL,
          retryDelayMultiplier: 2,
          maxRetryDelayMillis: CLOUD_KMS_SDK_RETRY_DELAY_MS_MAX,
          initialRpcTimeoutMillis: requestTimeoutMs,
          rpcTimeoutMultiplier: 1,
          maxRpcTimeoutMillis: requestTimeoutMs,
          maxRetries: attemptsMax,
        },
      },
    };
  }

  /** Creates the SDK client. Does not call KMS: the start-up check is `describe()`, with retries. */
  static async open(options: GcpKmsProviderOptions): Promise<GcpKmsKeyProvider> {
    for (const id of [options.keyId, ...(options.previousKeyIds ?? [])]) checkGcpKeyName(id);
    if ((options.previousKeyIds?.length ?? 0) > KMS_PREVIOUS_KEY_IDS_MAX) {
      throw new InvalidArgumentError(`at most KMS_PREVIOUS_KEY_IDS_MAX (${KMS_PREVIOUS_KEY_IDS_MAX}) previous key ids`);
    }
    if (options.credentials === undefined) throw new InvalidArgumentError("kms_provider = \"gcp-kms\" needs explicit credentials");
    const { host, port } = parseGcpEndpoint(options.endpoint);
    const sdk = await loadGcpKmsSdk();
    const explicit = options.credentials === "application-default" ? undefined : options.credentials;
    // TLS always, with our own call credentials so that a custom CA and the auth client combine the
    // same way for Application Default Credentials and for an explicit client.
    // With Application Default Credentials the headers come from the client's own GoogleAuth, made below.
    const made: { client?: KeyManagementServiceClient } = {};
    const callCredentials = grpcCredentials.createFromGoogleCredential({
      getRequestHeaders: (url?: string) => plainHeaders(explicit ?? (made.client!.auth as unknown as GcpAuthClient), url),
    });
    const sslCreds = grpcCredentials.combineChannelCredentials(grpcCredentials.createSsl(options.caCertificates ?? null), callCredentials);
    const client = new sdk.KeyManagementServiceClient({
      apiEndpoint: host,
      port,
      sslCreds,
      fallback: false,
      // With an explicit client GoogleAuth never looks for Application Default Credentials.
      ...(explicit === undefined ? {} : { authClient: explicit as never }),
      // Reconnect soon after the KMS comes back (the SDK's 1 s first backoff outlasts short start-up retries).
      "grpc.initial_reconnect_backoff_ms": 100,
      "grpc.max_reconnect_backoff_ms": 2_000,
    });
    made.client = client;
    return new GcpKmsKeyProvider(client, options, `${host}:${port}`);
  }

  async generateDataKey(context: EncryptionContext): Promise<GeneratedDataKey> {
    const plaintext = randomBytes(DATA_KEY_BYTES);
    try {
      const wrapped = await this.encrypt("generate-data-key", plaintext, context);
      return { plaintext, ...wrapped };
    } catch (e) {
      plaintext.fill(0);
      throw e;
    }
  }

  async unwrap(wrapped: Uint8Array, context: EncryptionContext, options: UnwrapOptions = {}): Promise<Buffer> {
    return (await this.decrypt("unwrap", wrapped, context, options)).plaintext;
  }

  async rewrap(wrapped: Uint8Array, context: EncryptionContext, options: UnwrapOptions = {}): Promise<WrappedDataKey> {
    const { plaintext } = await this.decrypt("rewrap", wrapped, context, options);
    try {
      return await this.encrypt("rewrap", plaintext, context);
    } finally {
      plaintext.fill(0);
    }
  }

  /** The start-up check: the CryptoKey exists, is for ENCRYPT_DECRYPT, and its primary version is enabled. */
  async describe(): Promise<KeyDescription> {
    const [key] = await this.call("describe", this.keyId, undefined, undefined,
      () => this.client.getCryptoKey({ name: this.keyId }, this.callOptions)) as [CryptoKeyResponse];
    const purpose = key.purpose;
    if (purpose !== "ENCRYPT_DECRYPT" && purpose !== PURPOSE_ENCRYPT_DECRYPT) {
      throw new KmsError(ErrorCode.FAILED_PRECONDITION, this.kind, "describe",
        `Cloud KMS key ${this.keyId} has purpose ${String(purpose)}; at-rest encryption needs a symmetric ENCRYPT_DECRYPT key`);
    }
    const primary = key.primary;
    if (primary === null || primary === undefined || typeof primary.name !== "string") {
      throw kmsPermissionDenied(this.kind, "describe", this.keyId, "the key has no primary version (all versions disabled or destroyed?)");
    }
    const state = enumText(primary.state, VERSION_STATES);
    if (state !== "ENABLED") {
      throw kmsPermissionDenied(this.kind, "describe", this.keyId, `its primary version ${primary.name} is ${state}`);
    }
    return { provider: this.kind, keyId: this.keyId, keyVersion: primary.name, where: this.where };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.client.close();
  }

  private async encrypt(operation: KmsOperation, plaintext: Buffer, context: EncryptionContext): Promise<WrappedDataKey> {
    const aad = encodeEncryptionContext(context);
    const [out] = await this.call(operation, this.keyId, undefined, undefined,
      () => this.client.encrypt({ name: this.keyId, plaintext, additionalAuthenticatedData: aad }, this.callOptions)) as [EncryptResponse];
    const result = { wrapped: toBuffer(out.ciphertext), keyId: this.keyId, keyVersion: out.name ?? "primary" };
    checkWrappedKey(this.kind, operation, result);
    return result;
  }

  /**
   * Decrypts with the configured CryptoKey, then each previous one: Cloud KMS answers INVALID_ARGUMENT
   * when the ciphertext was made by another key or with another AAD (it does not say which), so a
   * wrapped key is corruption only once no candidate decrypts it. The key the header names is tried
   * first when it is one of ours; a header naming any other key is never used.
   */
  private async decrypt(operation: KmsOperation, wrapped: Uint8Array, context: EncryptionContext,
    options: UnwrapOptions): Promise<{ plaintext: Buffer; keyId: string }> {
    if (wrapped.length === 0 || wrapped.length > WRAPPED_KEY_BYTES_MAX) {
      throw wrappedKeyCorruption(this.kind, context, options.location, `it is ${wrapped.length} bytes, not a Cloud KMS ciphertext of a data key`);
    }
    const aad = encodeEncryptionContext(context);
    const allowed = [this.keyId, ...this.previousKeyIds];
    const order = options.keyId !== undefined && allowed.includes(options.keyId)
      ? [options.keyId, ...allowed.filter((id) => id !== options.keyId)]
      : allowed;
    for (const keyId of order) {
      try {
        const [out] = await this.call(operation, keyId, context, options.location,
          () => this.client.decrypt({ name: keyId, ciphertext: wrapped, additionalAuthenticatedData: aad }, this.callOptions)) as [DecryptResponse];
        return { plaintext: checkPlaintextKey(this.kind, operation, toBuffer(out.plaintext)), keyId };
      } catch (e) {
        if (!(e instanceof NotThisKey)) throw e;
      }
    }
    throw wrappedKeyCorruption(this.kind, context, options.location,
      `Cloud KMS cannot decrypt it with kms_key_id (${this.keyId})` +
        (this.previousKeyIds.length > 0 ? ` or kms_previous_key_ids (${this.previousKeyIds.join(", ")})` : "") +
        " and this context" + (options.keyId === undefined || allowed.includes(options.keyId) ? "" : `; the header names ${options.keyId}`));
  }

  private async call(operation: KmsOperation, keyId: string, context: EncryptionContext | undefined,
    location: KeyLocation | undefined, send: () => Promise<unknown>): Promise<unknown> {
    if (this.closed) throw new KmsError(ErrorCode.FAILED_PRECONDITION, this.kind, operation, "the gcp-kms key provider is closed");
    try {
      return await send();
    } catch (e) {
      throw this.classify(e, operation, keyId, context, location);
    }
  }

  /** Maps a gRPC status (or an auth library error) onto the error vocabulary (see kms.ts). */
  private classify(error: unknown, operation: KmsOperation, keyId: string, context: EncryptionContext | undefined,
    _location: KeyLocation | undefined): Error {
    if (error instanceof KmsError) return error;
    const e = error as { code?: unknown; details?: unknown; message?: unknown };
    const code = typeof e?.code === "number" ? e.code : undefined;
    const message = typeof e?.message === "string" ? e.message : String(error);
    if (code === undefined) {
      // Errors before any RPC: the auth library could not find or use credentials.
      if (/credentials|token|auth/i.test(message)) {
        return kmsPermissionDenied(this.kind, operation, keyId, `no usable Google credentials (${message})`, error);
      }
      return new KmsError(ErrorCode.INTERNAL, this.kind, operation, `unexpected error from the Cloud KMS client (${this.where}) to ${operation}: ${message}`, { cause: error });
    }
    if (code === GrpcCode.INVALID_ARGUMENT && context !== undefined) return new NotThisKey(message);
    if (code === GrpcCode.NOT_FOUND) return kmsKeyNotFound(this.kind, operation, keyId, this.where, error);
    if (code === GrpcCode.PERMISSION_DENIED) {
      return kmsPermissionDenied(this.kind, operation, keyId, `permission denied, or the key does not exist (${message})`, error);
    }
    if (code === GrpcCode.UNAUTHENTICATED) {
      return kmsPermissionDenied(this.kind, operation, keyId, `Cloud KMS did not accept this node's credentials (${message})`, error);
    }
    if (code === GrpcCode.FAILED_PRECONDITION && /DISABLED|DESTROYED|DESTROY_SCHEDULED|not enabled/i.test(message)) {
      return kmsPermissionDenied(this.kind, operation, keyId, `the key version is disabled or destroyed (${message})`, error);
    }
    if (/Getting metadata from plugin failed/.test(message) && /credentials/i.test(message)) {
      return kmsPermissionDenied(this.kind, operation, keyId, `no usable Google credentials (${message})`, error);
    }
    if (UNAVAILABLE_CODES.has(code)) return kmsUnavailable(this.kind, operation, this.where, message, error);
    if (code === GrpcCode.FAILED_PRECONDITION || code === GrpcCode.INVALID_ARGUMENT || code === GrpcCode.UNIMPLEMENTED) {
      return new KmsError(ErrorCode.FAILED_PRECONDITION, this.kind, operation,
        `Cloud KMS key ${keyId} cannot be used to ${operation}: ${message}; at-rest encryption needs a symmetric ENCRYPT_DECRYPT key`, { cause: error });
    }
    return new KmsError(ErrorCode.INTERNAL, this.kind, operation, `unexpected answer from Cloud KMS (${this.where}) to ${operation}: ${message}`, { cause: error });
  }
}
