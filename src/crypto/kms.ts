/**
 * Key providers: the envelope-encryption port. A provider makes data keys (random AES-256 keys,
 * returned both in the clear and wrapped by the KMS key), unwraps them again, and re-wraps them under
 * the KMS key's current version (rotation without touching the data). Implementations: the `local`
 * provider (local-kms.ts), `aws-kms` (aws-kms.ts), `gcp-kms` (gcp-kms.ts), `azure-keyvault`
 * (azure-keyvault.ts).
 *
 * Errors a provider throws, and what the caller should do (STYLE.md section 5):
 *   UNAVAILABLE        KmsError, retryable: the KMS did not answer or is overloaded. Retry with backoff.
 *   PERMISSION_DENIED  KmsError: the key is disabled, pending deletion, or our credentials may not use it.
 *   NOT_FOUND          KmsError: no key with the configured id (a wrong kms_key_id, region or key file).
 *   FAILED_PRECONDITION / INVALID_ARGUMENT  KmsError: a key that cannot be used this way, a bad setting.
 *   CORRUPTION         CorruptionError naming the file: a wrapped key that does not authenticate under
 *                      any configured key with this context: tampered, copied from another file, or a
 *                      different master key than the one that wrapped it. Never garbage.
 */

import { CorruptionError, ErrorCode, VerityError } from "../errors.js";
import {
  DATA_KEY_BYTES,
  KMS_KEY_ID_BYTES_MAX,
  KMS_RETRY_DELAY_MS_INITIAL,
  KMS_RETRY_DELAY_MS_MAX,
  KMS_START_ATTEMPTS_MAX,
  WRAPPED_KEY_BYTES_MAX,
} from "./crypto-limits.js";
import type { EncryptionContext, KeyLocation } from "./encryption-context.js";
import { describeEncryptionContext } from "./encryption-context.js";

/** The `kms_provider` values of the operations guide. */
export type KmsProviderKind = "local" | "aws-kms" | "gcp-kms" | "azure-keyvault";

/** What a provider was doing when it failed, for messages and metrics. */
export type KmsOperation = "open" | "describe" | "generate-data-key" | "unwrap" | "rewrap";

/** A data key in its stored form: what goes into a segment header (or beside a projection file). */
export interface WrappedDataKey {
  /** The data key encrypted by the KMS key, bound to the encryption context. Opaque; at most WRAPPED_KEY_BYTES_MAX. */
  readonly wrapped: Buffer;
  /** The KMS key that wrapped it (an AWS key ARN, a local key id): the segment header's key id field. */
  readonly keyId: string;
  /** Which version of that key: the local file's version number, an AWS key material id. Opaque text. */
  readonly keyVersion: string;
}

/** A fresh data key: the wrapped form to store and the plaintext to encrypt with (never written anywhere). */
export interface GeneratedDataKey extends WrappedDataKey {
  /** The 32-byte AES-256 key. The caller keeps it in memory only and zeroes it when done. */
  readonly plaintext: Buffer;
}

export interface UnwrapOptions {
  /** The key id stored beside the wrapped key (the segment header's), checked against the configured keys. */
  readonly keyId?: string;
  /** Where the wrapped key was read from, named by a CorruptionError. Defaults to the file identity at offset 0. */
  readonly location?: KeyLocation;
}

/** What `describe` reports: enough for `verity-admin encryption status` and the start-up log line. */
export interface KeyDescription {
  readonly provider: KmsProviderKind;
  /** The configured key, resolved (an alias becomes the key ARN). */
  readonly keyId: string;
  /** The version new data keys are wrapped with. */
  readonly keyVersion: string;
  /** Where the key lives: the key file's path, or the endpoint and region. Never key material. */
  readonly where: string;
}

/**
 * The envelope-encryption port. Contract:
 *  - generateDataKey returns a new random 32-byte key; its wrapped form unwraps only with the same context.
 *  - unwrap(wrapped, context) returns exactly the plaintext generateDataKey returned, or throws: a
 *    CorruptionError when the bytes do not authenticate, a KmsError otherwise. Never a wrong key.
 *  - rewrap returns the same data key wrapped under the current version of the configured key; the
 *    data encrypted with it stays valid untouched.
 *  - describe checks that the configured key exists and is usable (the start-up check).
 *  - No method writes a plaintext key anywhere; all are safe to call concurrently.
 */
export interface KeyProvider {
  readonly kind: KmsProviderKind;
  generateDataKey(context: EncryptionContext): Promise<GeneratedDataKey>;
  unwrap(wrapped: Uint8Array, context: EncryptionContext, options?: UnwrapOptions): Promise<Buffer>;
  rewrap(wrapped: Uint8Array, context: EncryptionContext, options?: UnwrapOptions): Promise<WrappedDataKey>;
  describe(): Promise<KeyDescription>;
  /** Releases connections; the provider is unusable afterwards. */
  close(): Promise<void>;
}

/** An error from a key provider (other than corruption, which is a CorruptionError). */
export class KmsError extends VerityError {
  readonly provider: KmsProviderKind;
  readonly operation: KmsOperation;
  /** True when the same call may succeed later (the KMS was unreachable or overloaded). */
  readonly retryable: boolean;
  constructor(code: ErrorCode, provider: KmsProviderKind, operation: KmsOperation, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.provider = provider;
    this.operation = operation;
    this.retryable = code === ErrorCode.UNAVAILABLE;
  }
}

/** The KMS could not be reached or is overloaded: retry. */
export function kmsUnavailable(provider: KmsProviderKind, operation: KmsOperation, where: string, detail: string, cause?: unknown): KmsError {
  return new KmsError(
    ErrorCode.UNAVAILABLE,
    provider,
    operation,
    `cannot reach the KMS (${provider} at ${where}) to ${operation}: ${detail}. This is retried with backoff; ` +
      "if it persists, check kms_endpoint and region, that the KMS is up, and that this host can reach it.",
    { cause },
  );
}

/** The key exists but may not be used: disabled, pending deletion, or access denied. */
export function kmsPermissionDenied(provider: KmsProviderKind, operation: KmsOperation, keyId: string, detail: string, cause?: unknown): KmsError {
  return new KmsError(
    ErrorCode.PERMISSION_DENIED,
    provider,
    operation,
    `the KMS refused to ${operation} with key ${keyId}: ${detail}. Data keys wrapped by a revoked key cannot be ` +
      `unwrapped: re-enable the key (or cancel its deletion), or ${KMS_GRANT_HINT[provider]}.`,
    { cause },
  );
}

/** What to grant this node, by provider, in a PERMISSION_DENIED message. */
const KMS_GRANT_HINT: Readonly<Record<KmsProviderKind, string>> = {
  local: "make the key file readable by this node's user (mode 0600)",
  "aws-kms": "grant this node's credentials kms:GenerateDataKey, kms:Decrypt and kms:ReEncrypt*",
  "gcp-kms": "re-enable the key version, or grant this node's service account roles/cloudkms.cryptoKeyEncrypterDecrypter " +
    "and cloudkms.cryptoKeys.get on the key, and check its credentials (GOOGLE_APPLICATION_CREDENTIALS)",
  "azure-keyvault": "grant this node's identity the keys get, wrapKey and unwrapKey permissions on the vault " +
    "(or the Key Vault Crypto Service Encryption User role), and check its credentials (AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET)",
};

/** No such key: a wrong kms_key_id, region, endpoint or key file. */
export function kmsKeyNotFound(provider: KmsProviderKind, operation: KmsOperation, keyId: string, where: string, cause?: unknown): KmsError {
  return new KmsError(
    ErrorCode.NOT_FOUND,
    provider,
    operation,
    `the KMS (${provider} at ${where}) has no key ${JSON.stringify(keyId)}: check kms_key_id` +
      (provider === "aws-kms" ? ", the region and kms_endpoint" : provider === "local" ? "" : " and kms_endpoint") + ".",
    { cause },
  );
}

/**
 * A wrapped key that does not authenticate: tampered, moved from another file, or wrapped by another
 * master key. DATA_LOSS class, naming the file, as every unreadable stored byte is.
 */
export function wrappedKeyCorruption(
  provider: KmsProviderKind,
  context: EncryptionContext,
  location: KeyLocation | undefined,
  detail: string,
): CorruptionError {
  const at = location ?? { file: context.fileIdentity, offset: 0 };
  return new CorruptionError(
    at,
    `the wrapped data key (${provider}) does not unwrap for ${describeEncryptionContext(context)}: ${detail}. ` +
      "Either it was damaged or tampered with, or it belongs to another file or cluster, or the node is configured " +
      "with a different master key than the one that wrapped it (check kms_key_id and the key file)",
  );
}

/** Checks what a provider is about to return fits the segment header; a KMS that returns more is refused. */
export function checkWrappedKey(provider: KmsProviderKind, operation: KmsOperation, key: WrappedDataKey): void {
  const keyIdBytes = Buffer.byteLength(key.keyId, "utf8");
  if (key.wrapped.length === 0 || key.wrapped.length > WRAPPED_KEY_BYTES_MAX || keyIdBytes === 0 || keyIdBytes > KMS_KEY_ID_BYTES_MAX) {
    throw new KmsError(
      ErrorCode.FAILED_PRECONDITION,
      provider,
      operation,
      `the KMS returned a wrapped key of ${key.wrapped.length} bytes for key id ${JSON.stringify(key.keyId)} (${keyIdBytes} bytes); ` +
        `a segment header holds at most WRAPPED_KEY_BYTES_MAX (${WRAPPED_KEY_BYTES_MAX}) and KMS_KEY_ID_BYTES_MAX (${KMS_KEY_ID_BYTES_MAX}): ` +
        "use a key id (ARN) rather than a long alias, and a symmetric AES-256 key",
    );
  }
}

/** Checks an unwrapped data key is 32 bytes (a KMS that returns anything else is not trusted). */
export function checkPlaintextKey(provider: KmsProviderKind, operation: KmsOperation, plaintext: Uint8Array | undefined): Buffer {
  if (plaintext === undefined || plaintext.length !== DATA_KEY_BYTES) {
    throw new KmsError(
      ErrorCode.FAILED_PRECONDITION,
      provider,
      operation,
      `the KMS returned a data key of ${plaintext?.length ?? 0} bytes instead of ${DATA_KEY_BYTES}: the key must be a symmetric AES-256 key`,
    );
  }
  return Buffer.from(plaintext);
}

export interface RetryOptions {
  /** Attempts in all, at least 1. */
  readonly attemptsMax?: number;
  readonly delayMsInitial?: number;
  readonly delayMsMax?: number;
  /** Injected so tests do not wait; defaults to a timer. */
  readonly sleep?: (ms: number) => Promise<void>;
  /** Injected jitter source in [0, 1); defaults to Math.random. */
  readonly random?: () => number;
  /** Called before each wait, e.g. to log "KMS unreachable, retrying in 2 s (attempt 2 of 8)". */
  readonly onRetry?: (attempt: number, error: KmsError, delayMs: number) => void;
}

const defaultSleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Runs `operation`, retrying while it fails with a retryable KmsError (exponential backoff with
 * full jitter, at most `attemptsMax` attempts). Any other error is thrown at once. After the last
 * attempt the error says how many attempts were made over how long. For the start-up check:
 * `retryWhileUnavailable(() => provider.describe())`.
 */
export async function retryWhileUnavailable<T>(operation: () => Promise<T>, options: RetryOptions = {}): Promise<T> {
  const attemptsMax = options.attemptsMax ?? KMS_START_ATTEMPTS_MAX;
  const delayMsMax = options.delayMsMax ?? KMS_RETRY_DELAY_MS_MAX;
  const sleep = options.sleep ?? defaultSleep;
  const random = options.random ?? Math.random;
  let ceilingMs = options.delayMsInitial ?? KMS_RETRY_DELAY_MS_INITIAL;
  let waitedMs = 0;
  for (let attempt = 1; ; attempt++) {
    try {
      return await operation();
    } catch (e) {
      if (!(e instanceof KmsError) || !e.retryable) throw e;
      if (attempt >= attemptsMax) {
        throw new KmsError(ErrorCode.UNAVAILABLE, e.provider, e.operation,
          `${e.message} Gave up after ${attempt} attempts over ${Math.round(waitedMs)} ms.`, { cause: e });
      }
      const delayMs = Math.floor(random() * ceilingMs);
      options.onRetry?.(attempt, e, delayMs);
      await sleep(delayMs);
      waitedMs += delayMs;
      ceilingMs = Math.min(ceilingMs * 2, delayMsMax);
    }
  }
}
