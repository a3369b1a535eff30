/**
 * The `azure-keyvault` key provider: data keys wrapped by an Azure Key Vault (or Managed HSM) key
 * through @azure/keyvault-keys (CryptographyClient wrapKey / unwrapKey, REST over HTTPS).
 *
 * Key Vault's wrapKey takes no associated data, so the encryption context is bound here: the data key
 * is drawn locally (OS CSPRNG) and what Key Vault wraps is 64 bytes,
 *
 *     data key (32) | HMAC-SHA256(HKDF-SHA256(data key, "verity azure-keyvault context binding v1"),
 *                                 "VRTYAKV1" | encodeEncryptionContext(context))  (32)
 *
 * On unwrap the tag is recomputed for the context given; a wrapped key moved to another file or
 * cluster unwraps in Key Vault but fails the tag, a CorruptionError. Only a holder of the data key
 * can make a matching tag. The tag sits inside the wrapped bytes rather than beside them because an
 * RSA-2048 wrap is already 256 bytes, all the room a segment header has (WRAPPED_KEY_BYTES_MAX).
 *
 * Algorithms: RSA-OAEP-256 for RSA and RSA-HSM keys (2048-bit only: 3072 and 4096-bit wraps are 384
 * and 512 bytes, too large for the header; describe() refuses them), A256KW for oct-HSM keys on a
 * Managed HSM (72 bytes). unwrap tells them apart by length. Anyone with the key's public half can
 * RSA-wrap a key of their own choosing; that forges a data key, not a reading of ours, and needs
 * write access to the data directory.
 *
 * Key ids: `kms_key_id` is `https://<vault>/keys/<name>` (new data keys use the key's current version,
 * looked up again after AZURE_KEY_VERSION_REFRESH_MS and on every rewrap) or
 * `https://<vault>/keys/<name>/<version>` (pinned). The key id stored beside a wrapped key always
 * names the version that wrapped it, `https://<vault>/keys/<name>/<version>`: unwrap needs it, since
 * Key Vault unwraps with the version named in the URL. It must fit KMS_KEY_ID_BYTES_MAX (160 bytes):
 * with a 32-character version that leaves about 60 characters for the key name on a
 * `<vault>.vault.azure.net` vault; open() refuses longer ones.
 *
 * Credentials are an explicit TokenCredential (ClientSecretCredential, DefaultAzureCredential, ...).
 * Bounded: each attempt CLOUD_KMS_REQUEST_TIMEOUT_MS, at most CLOUD_KMS_SDK_ATTEMPTS_MAX attempts
 * (the SDK retries 408, 429, 5xx and network errors), the whole call under an abort signal.
 */

import { createHmac, hkdfSync, randomBytes, timingSafeEqual } from "node:crypto";
import { Agent } from "node:https";
import type { CryptographyClient, KeyClient, KeyVaultKey, KeyWrapAlgorithm } from "@azure/keyvault-keys";
import { ErrorCode, InvalidArgumentError } from "../errors.js";
import {
  AZURE_KEY_CLIENTS_MAX,
  AZURE_KEY_VERSION_REFRESH_MS,
  CLOUD_KMS_REQUEST_TIMEOUT_MS,
  CLOUD_KMS_SDK_ATTEMPTS_MAX,
  CLOUD_KMS_SDK_RETRY_DELAY_MS_INITIAL,
  CLOUD_KMS_SDK_RETRY_DELAY_MS_MAX,
  DATA_KEY_BYTES,
  KMS_KEY_ID_BYTES_MAX,
  KMS_PREVIOUS_KEY_IDS_MAX,
  WRAPPED_KEY_BYTES_MAX,
} from "./crypto-limits.js";
import type { EncryptionContext } from "./encryption-context.js";
import { encodeEncryptionContext } from "./encryption-context.js";
import type { GeneratedDataKey, KeyDescription, KeyProvider, KmsOperation, UnwrapOptions, WrappedDataKey } from "./kms.js";
import {
  KmsError,
  checkWrappedKey,
  kmsKeyNotFound,
  kmsPermissionDenied,
  kmsUnavailable,
  wrappedKeyCorruption,
} from "./kms.js";

/** The npm package this provider needs. */
export const AZURE_KEYVAULT_SDK_PACKAGE = "@azure/keyvault-keys";

/** Bytes Key Vault wraps: the data key and its context tag. */
const WRAPPED_SECRET_BYTES = 2 * DATA_KEY_BYTES;
/** A256KW (RFC 3394) output for WRAPPED_SECRET_BYTES: one 8-byte block more. */
const AES_KW_WRAPPED_BYTES = WRAPPED_SECRET_BYTES + 8;
/** Key Vault versions are 32 hex characters; the stored key id is checked to have room for one. */
const VERSION_CHARS = 32;
const BINDING_LABEL = Buffer.from("VRTYAKV1", "latin1");
const BINDING_KEY_INFO = Buffer.from("verity azure-keyvault context binding v1", "latin1");

/** The slice of @azure/core-auth's TokenCredential the SDK uses. */
export interface AzureTokenCredential {
  getToken(scopes: string | string[], options?: object): Promise<{ token: string; expiresOnTimestamp: number } | null>;
}

export interface AzureKeyVaultProviderOptions {
  /** `kms_key_id`: https://<vault>/keys/<name>[/<version>]. */
  readonly keyId: string;
  /** Always explicit: e.g. ClientSecretCredential or DefaultAzureCredential from @azure/identity. */
  readonly credential: AzureTokenCredential;
  /** `kms_endpoint`: send requests to this https://host[:port] instead of the key id's vault (stored key ids keep the vault's). */
  readonly endpoint?: string;
  /** PEM CA certificates to trust instead of the system's (tests, TLS-inspecting proxies). */
  readonly caCertificates?: Buffer;
  /** Keys (https://<vault>/keys/<name>[/<version>]) that wrapped older data keys, while a move to `keyId` re-wraps. */
  readonly previousKeyIds?: readonly string[];
  readonly attemptsMax?: number;
  readonly requestTimeoutMs?: number;
  readonly retryDelayMsInitial?: number;
  /** Injected clock for the version refresh. */
  readonly now?: () => number;
}

/** A key named by a key id URL. */
export interface AzureKeyName {
  /** https://host[:port] of the vault, as written in the key id. */
  readonly vault: string;
  readonly name: string;
  /** Pinned version, or undefined for "the current one". */
  readonly version: string | undefined;
}

/** Parses `https://<vault>/keys/<name>[/<version>]`, or throws INVALID_ARGUMENT saying the expected form. */
export function parseAzureKeyId(keyId: string): AzureKeyName {
  const refuse = (why: string): never => {
    throw new InvalidArgumentError(`azure-keyvault key id ${JSON.stringify(keyId)} ${why}: expected https://<vault>.vault.azure.net/keys/<name>[/<version>]`);
  };
  let url: URL;
  try {
    url = new URL(keyId);
  } catch {
    return refuse("is not a URL");
  }
  if (url.protocol !== "https:") refuse("must be https");
  if (url.search !== "" || url.hash !== "" || url.username !== "" || url.password !== "") refuse("has a query, fragment or user");
  const parts = url.pathname.split("/").filter((p) => p !== "");
  if (parts[0] !== "keys" || parts.length < 2 || parts.length > 3) refuse("is not a key URL");
  const name = parts[1]!;
  const version = parts[2];
  if (!/^[0-9A-Za-z-]{1,127}$/.test(name)) refuse("has a key name that is not 1 to 127 letters, digits and dashes");
  if (version !== undefined && !/^[0-9A-Za-z]{1,64}$/.test(version)) refuse("has a malformed version");
  return { vault: url.origin, name, version };
}

/** The key id stored beside a wrapped key: the vault's URL, the name and the version that wrapped it. */
function storedKeyId(key: AzureKeyName, version: string): string {
  return `${key.vault}/keys/${key.name}/${version}`;
}

function isLoopback(origin: string): boolean {
  const host = new URL(origin).hostname;
  return host === "127.0.0.1" || host === "[::1]" || host === "localhost";
}

/** The tag that binds a data key to its context (see the file comment). */
function contextTag(dataKey: Buffer, context: EncryptionContext): Buffer {
  const macKey = Buffer.from(hkdfSync("sha256", dataKey, Buffer.alloc(0), BINDING_KEY_INFO, DATA_KEY_BYTES));
  try {
    return createHmac("sha256", macKey).update(BINDING_LABEL).update(encodeEncryptionContext(context)).digest();
  } finally {
    macKey.fill(0);
  }
}

function algorithmFor(keyType: string | undefined): KeyWrapAlgorithm | undefined {
  if (keyType === "RSA" || keyType === "RSA-HSM") return "RSA-OAEP-256";
  if (keyType === "oct" || keyType === "oct-HSM") return "A256KW";
  return undefined;
}

const NETWORK_CODES = new Set([
  "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH", "EPIPE",
  "ECONNABORTED", "ESOCKETTIMEDOUT", "REQUEST_SEND_ERROR", "UND_ERR_CONNECT_TIMEOUT", "UND_ERR_SOCKET",
]);
const CREDENTIAL_ERRORS = new Set(["CredentialUnavailableError", "AuthenticationError", "AuthenticationRequiredError"]);

/** Internal: Key Vault could not unwrap these bytes with this key version; the next candidate is tried. */
class NotThisKey extends Error {}

interface CurrentVersion {
  readonly key: KeyVaultKey;
  readonly version: string;
  readonly algorithm: KeyWrapAlgorithm;
  readonly fetchedAtMs: number;
}

/** The provider. Safe to use concurrently. */
export class AzureKeyVaultKeyProvider implements KeyProvider {
  readonly kind = "azure-keyvault" as const;
  readonly keyId: string;
  readonly where: string;
  private readonly key: AzureKeyName;
  private readonly previous: readonly AzureKeyName[];
  /** Where requests go: the endpoint override, or the vault of the key id. */
  private readonly requestVault: string;
  private readonly keyClients = new Map<string, KeyClient>();
  /** CryptographyClients by key URL (with version), least recently used first; at most AZURE_KEY_CLIENTS_MAX. */
  private readonly cryptoClients = new Map<string, CryptographyClient>();
  /** The current version of each key name (configured and previous), by vault and name. */
  private readonly current = new Map<string, CurrentVersion>();
  private readonly requestTimeoutMs: number;
  private readonly callTimeoutMs: number;
  private readonly now: () => number;
  private closed = false;

  private constructor(
    private readonly sdk: typeof import("@azure/keyvault-keys"),
    private readonly credential: AzureTokenCredential,
    private readonly clientOptions: object,
    /** The connection pool trusting caCertificates, when given; destroyed by close(). */
    private readonly agent: Agent | undefined,
    options: AzureKeyVaultProviderOptions,
    key: AzureKeyName,
    previous: readonly AzureKeyName[],
  ) {
    this.keyId = options.keyId;
    this.key = key;
    this.previous = previous;
    this.requestVault = options.endpoint === undefined ? key.vault : new URL(options.endpoint).origin;
    this.where = options.endpoint === undefined ? key.vault : `${this.requestVault} (for ${key.vault})`;
    this.requestTimeoutMs = options.requestTimeoutMs ?? CLOUD_KMS_REQUEST_TIMEOUT_MS;
    const attemptsMax = options.attemptsMax ?? CLOUD_KMS_SDK_ATTEMPTS_MAX;
    this.callTimeoutMs = attemptsMax * this.requestTimeoutMs + (attemptsMax - 1) * CLOUD_KMS_SDK_RETRY_DELAY_MS_MAX;
    this.now = options.now ?? Date.now;
  }

  /** Creates the SDK clients. Does not call Key Vault: the start-up check is `describe()`, with retries. */
  static async open(options: AzureKeyVaultProviderOptions): Promise<AzureKeyVaultKeyProvider> {
    const key = parseAzureKeyId(options.keyId);
    const previous = (options.previousKeyIds ?? []).map(parseAzureKeyId);
    if (previous.length > KMS_PREVIOUS_KEY_IDS_MAX) {
      throw new InvalidArgumentError(`at most KMS_PREVIOUS_KEY_IDS_MAX (${KMS_PREVIOUS_KEY_IDS_MAX}) previous key ids`);
    }
    for (const k of [key, ...previous]) {
      const bytes = Buffer.byteLength(storedKeyId(k, "v".repeat(VERSION_CHARS)), "utf8");
      if (bytes > KMS_KEY_ID_BYTES_MAX) {
        throw new InvalidArgumentError(`azure-keyvault key ${k.vault}/keys/${k.name} makes stored key ids of ${bytes} bytes with a version; ` +
          `a segment header holds at most KMS_KEY_ID_BYTES_MAX (${KMS_KEY_ID_BYTES_MAX}): use a shorter key name`);
      }
    }
    if (options.credential === undefined) throw new InvalidArgumentError("kms_provider = \"azure-keyvault\" needs an explicit credential");
    if (options.endpoint !== undefined && !/^https:\/\/[^/\s]+\/?$/.test(options.endpoint)) {
      throw new InvalidArgumentError(`azure-keyvault kms_endpoint ${JSON.stringify(options.endpoint)} must be https://host[:port]`);
    }
    const sdk = await loadAzureKeyVaultSdk();
    const attemptsMax = options.attemptsMax ?? CLOUD_KMS_SDK_ATTEMPTS_MAX;
    const agent = options.caCertificates === undefined ? undefined : new Agent({ ca: options.caCertificates, keepAlive: true });
    const requestVault = options.endpoint === undefined ? key.vault : new URL(options.endpoint).origin;
    const clientOptions = {
      retryOptions: {
        maxRetries: attemptsMax - 1,
        retryDelayInMs: options.retryDelayMsInitial ?? CLOUD_KMS_SDK_RETRY_DELAY_MS_INITIAL,
        maxRetryDelayInMs: CLOUD_KMS_SDK_RETRY_DELAY_MS_MAX,
      },
      // The challenge names the resource (vault.azure.net); a loopback test vault is not under it.
      disableChallengeResourceVerification: isLoopback(requestVault),
      userAgentOptions: { userAgentPrefix: "veritydb" },
      ...(agent === undefined ? {} : {
        additionalPolicies: [{
          position: "perCall",
          policy: { name: "verityTrustedCa", sendRequest: (request: { agent?: Agent }, next: (r: unknown) => Promise<unknown>) => { request.agent = agent; return next(request); } },
        }],
      }),
    };
    return new AzureKeyVaultKeyProvider(sdk, options.credential, clientOptions, agent, options, key, previous);
  }

  async generateDataKey(context: EncryptionContext): Promise<GeneratedDataKey> {
    const plaintext = randomBytes(DATA_KEY_BYTES);
    try {
      return { plaintext, ...await this.wrap("generate-data-key", plaintext, context, false) };
    } catch (e) {
      plaintext.fill(0);
      throw e;
    }
  }

  async unwrap(wrapped: Uint8Array, context: EncryptionContext, options: UnwrapOptions = {}): Promise<Buffer> {
    return this.unwrapChecked("unwrap", wrapped, context, options);
  }

  async rewrap(wrapped: Uint8Array, context: EncryptionContext, options: UnwrapOptions = {}): Promise<WrappedDataKey> {
    const plaintext = await this.unwrapChecked("rewrap", wrapped, context, options);
    try {
      return await this.wrap("rewrap", plaintext, context, true);
    } finally {
      plaintext.fill(0);
    }
  }

  /** The start-up check: the key exists, is enabled, may wrap and unwrap, and its wraps fit the header. */
  async describe(): Promise<KeyDescription> {
    const current = await this.currentVersion("describe", this.key, true);
    return { provider: this.kind, keyId: storedKeyId(this.key, current.version), keyVersion: current.version, where: this.where };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.cryptoClients.clear();
    this.keyClients.clear();
    this.current.clear();
    this.agent?.destroy();
  }

  private async wrap(operation: KmsOperation, plaintext: Buffer, context: EncryptionContext, refresh: boolean): Promise<WrappedDataKey> {
    const current = await this.currentVersion(operation, this.key, refresh);
    const secret = Buffer.concat([plaintext, contextTag(plaintext, context)]);
    try {
      const url = `${this.requestVault}/keys/${this.key.name}/${current.version}`;
      const result = await this.call(operation, url, (signal) =>
        this.cryptoClient(url, current.key).wrapKey(current.algorithm, secret, this.requestOptions(signal)));
      const wrapped = { wrapped: Buffer.from(result.result), keyId: storedKeyId(this.key, current.version), keyVersion: current.version };
      checkWrappedKey(this.kind, operation, wrapped);
      return wrapped;
    } finally {
      secret.fill(0);
    }
  }

  /**
   * Unwraps with the version the stored key id names when it is a version of one of our keys, then
   * with the current version of each configured key; a stored key id naming any other key is never
   * used. Key Vault answers 400 when the bytes do not unwrap with a version: the next one is tried.
   */
  private async unwrapChecked(operation: KmsOperation, wrapped: Uint8Array, context: EncryptionContext, options: UnwrapOptions): Promise<Buffer> {
    if (wrapped.length === 0 || wrapped.length > WRAPPED_KEY_BYTES_MAX) {
      throw wrappedKeyCorruption(this.kind, context, options.location, `it is ${wrapped.length} bytes, not a Key Vault wrapped key`);
    }
    const algorithm: KeyWrapAlgorithm = wrapped.length === AES_KW_WRAPPED_BYTES ? "A256KW" : "RSA-OAEP-256";
    for await (const url of this.candidates(operation, options.keyId)) {
      let secret: Buffer;
      try {
        const result = await this.call(operation, url, (signal) => this.cryptoClient(url).unwrapKey(algorithm, wrapped, this.requestOptions(signal)), true);
        secret = Buffer.from(result.result);
      } catch (e) {
        if (e instanceof NotThisKey) continue;
        throw e;
      }
      try {
        if (secret.length !== WRAPPED_SECRET_BYTES) {
          throw wrappedKeyCorruption(this.kind, context, options.location, `Key Vault unwrapped ${secret.length} bytes, not a data key and its context tag`);
        }
        const plaintext = Buffer.from(secret.subarray(0, DATA_KEY_BYTES));
        if (!timingSafeEqual(contextTag(plaintext, context), secret.subarray(DATA_KEY_BYTES))) {
          plaintext.fill(0);
          throw wrappedKeyCorruption(this.kind, context, options.location, "its context tag does not match this file and cluster");
        }
        return plaintext;
      } finally {
        secret.fill(0);
      }
    }
    throw wrappedKeyCorruption(this.kind, context, options.location,
      `Key Vault cannot unwrap it with kms_key_id (${this.keyId})` +
        (this.previous.length > 0 ? " or kms_previous_key_ids" : "") +
        (options.keyId === undefined ? " (no stored key id names the version that wrapped it)" : `; the header names ${options.keyId}`));
  }

  /** Key URLs (request vault, with version) to try, in order, without repeats. */
  private async *candidates(operation: KmsOperation, hint: string | undefined): AsyncGenerator<string> {
    const ours = [this.key, ...this.previous];
    const seen = new Set<string>();
    let hinted: AzureKeyName | undefined;
    try {
      hinted = hint === undefined ? undefined : parseAzureKeyId(hint);
    } catch {
      hinted = undefined;
    }
    const match = hinted === undefined ? undefined : ours.find((k) => k.name === hinted.name && (k.vault === hinted.vault || this.key.vault === hinted.vault));
    if (hinted?.version !== undefined && match !== undefined && (match.version === undefined || match.version === hinted.version)) {
      seen.add(hinted.version + "/" + match.name);
      yield `${this.requestVault}/keys/${match.name}/${hinted.version}`;
    }
    for (const k of ours) {
      const version = k.version ?? (await this.currentVersion(operation, k, false)).version;
      if (seen.has(version + "/" + k.name)) continue;
      seen.add(version + "/" + k.name);
      yield `${this.requestVault}/keys/${k.name}/${version}`;
    }
  }

  /** The version new data keys are wrapped with: the pinned one, or the key's current version (cached). */
  private async currentVersion(operation: KmsOperation, key: AzureKeyName, refresh: boolean): Promise<CurrentVersion> {
    const cacheKey = `${key.vault}/${key.name}`;
    const cached = this.current.get(cacheKey);
    if (!refresh && cached !== undefined && this.now() - cached.fetchedAtMs < AZURE_KEY_VERSION_REFRESH_MS) return cached;
    const url = `${this.requestVault}/keys/${key.name}${key.version === undefined ? "" : `/${key.version}`}`;
    const found = await this.call(operation, url, (signal) =>
      this.keyClient().getKey(key.name, { ...(key.version === undefined ? {} : { version: key.version }), ...this.requestOptions(signal) }));
    const version = found.properties.version;
    if (version === undefined || version === "") {
      throw new KmsError(ErrorCode.INTERNAL, this.kind, operation, `Key Vault (${this.where}) returned key ${key.name} without a version`);
    }
    if (found.properties.enabled === false) throw kmsPermissionDenied(this.kind, operation, url, "the key is disabled");
    const algorithm = algorithmFor(found.keyType);
    if (algorithm === undefined) {
      throw new KmsError(ErrorCode.FAILED_PRECONDITION, this.kind, operation,
        `Key Vault key ${url} is of type ${String(found.keyType)}; at-rest encryption needs an RSA 2048 key (or oct-HSM on a Managed HSM)`);
    }
    const ops = found.keyOperations;
    if (ops !== undefined && (!ops.includes("wrapKey") || !ops.includes("unwrapKey"))) {
      throw new KmsError(ErrorCode.FAILED_PRECONDITION, this.kind, operation,
        `Key Vault key ${url} does not allow wrapKey and unwrapKey (its operations: ${ops.join(", ")}): add them to the key's permitted operations`);
    }
    const modulus = found.key?.n;
    if (algorithm === "RSA-OAEP-256" && modulus !== undefined && modulus.length > WRAPPED_KEY_BYTES_MAX) {
      throw new KmsError(ErrorCode.FAILED_PRECONDITION, this.kind, operation,
        `Key Vault key ${url} is RSA-${modulus.length * 8}: its wrapped keys are ${modulus.length} bytes and a segment header holds ` +
          `WRAPPED_KEY_BYTES_MAX (${WRAPPED_KEY_BYTES_MAX}); use an RSA 2048 key`);
    }
    const current: CurrentVersion = { key: found, version, algorithm, fetchedAtMs: this.now() };
    this.current.set(cacheKey, current);
    return current;
  }

  private keyClient(): KeyClient {
    let client = this.keyClients.get(this.requestVault);
    if (client === undefined) {
      client = new this.sdk.KeyClient(this.requestVault, this.credential as never, this.clientOptions);
      this.keyClients.set(this.requestVault, client);
    }
    return client;
  }

  /** A CryptographyClient for one key version, kept in a bounded LRU (each holds its token and challenge state). */
  private cryptoClient(url: string, key?: KeyVaultKey): CryptographyClient {
    let client = this.cryptoClients.get(url);
    if (client !== undefined) {
      this.cryptoClients.delete(url);
    } else {
      // From a fetched key the client skips its own GET; the key's id must name the request vault.
      const usable = key !== undefined && key.id === url ? key : url;
      client = new this.sdk.CryptographyClient(usable as never, this.credential as never, this.clientOptions);
      if (this.cryptoClients.size >= AZURE_KEY_CLIENTS_MAX) this.cryptoClients.delete(this.cryptoClients.keys().next().value!);
    }
    this.cryptoClients.set(url, client);
    return client;
  }

  private requestOptions(signal: AbortSignal): { abortSignal: AbortSignal; requestOptions: { timeout: number } } {
    return { abortSignal: signal, requestOptions: { timeout: this.requestTimeoutMs } };
  }

  private async call<T>(operation: KmsOperation, url: string, send: (signal: AbortSignal) => Promise<T>, unwrapping = false): Promise<T> {
    if (this.closed) throw new KmsError(ErrorCode.FAILED_PRECONDITION, this.kind, operation, "the azure-keyvault key provider is closed");
    try {
      return await send(AbortSignal.timeout(this.callTimeoutMs));
    } catch (e) {
      throw this.classify(e, operation, url, unwrapping);
    }
  }

  /** Maps an SDK, HTTP or credential error onto the error vocabulary (see kms.ts). */
  private classify(error: unknown, operation: KmsOperation, url: string, unwrapping: boolean): Error {
    if (error instanceof KmsError) return error;
    const e = error as { name?: unknown; code?: unknown; statusCode?: unknown; message?: unknown; cause?: { code?: unknown } };
    const name = typeof e?.name === "string" ? e.name : "Error";
    const code = typeof e?.code === "string" ? e.code : typeof e?.cause?.code === "string" ? e.cause.code : undefined;
    const status = typeof e?.statusCode === "number" ? e.statusCode : undefined;
    const message = typeof e?.message === "string" ? e.message : String(error);
    const detail = `${status === undefined ? name : `HTTP ${status}`}${code === undefined ? "" : ` ${code}`}: ${message}`;
    if (status === 400 && unwrapping) return new NotThisKey(message);
    if (status === 404) {
      // While unwrapping, a missing version (named by a stored key id) is one candidate less; a missing
      // key shows when its current version is looked up, which is not an unwrap call.
      return unwrapping ? new NotThisKey(message) : kmsKeyNotFound(this.kind, operation, url, this.where, error);
    }
    if (status === 401) return kmsPermissionDenied(this.kind, operation, url, `Key Vault did not accept this node's token (${detail})`, error);
    if (status === 403) return kmsPermissionDenied(this.kind, operation, url, detail, error);
    if (CREDENTIAL_ERRORS.has(name)) return kmsPermissionDenied(this.kind, operation, url, `no usable Azure credential (${detail})`, error);
    if ((status !== undefined && (status === 408 || status === 429 || status >= 500)) || name === "AbortError" || name === "TimeoutError" ||
      (code !== undefined && NETWORK_CODES.has(code))) {
      return kmsUnavailable(this.kind, operation, this.where, detail, error);
    }
    if (status === undefined && /can't be used before|expired|not supported with key/.test(message)) {
      return kmsPermissionDenied(this.kind, operation, url, message, error);
    }
    if (status !== undefined && status >= 400 && status < 500) {
      return new KmsError(ErrorCode.FAILED_PRECONDITION, this.kind, operation, `Key Vault refused to ${operation} with key ${url}: ${detail}`, { cause: error });
    }
    return new KmsError(ErrorCode.INTERNAL, this.kind, operation, `unexpected answer from Key Vault (${this.where}) to ${operation}: ${detail}`, { cause: error });
  }
}

/**
 * The credential verity-server uses: a ClientSecretCredential when AZURE_TENANT_ID, AZURE_CLIENT_ID
 * and AZURE_CLIENT_SECRET are all set, else DefaultAzureCredential (managed identity, workload
 * identity, Azure CLI). Some but not all three set is refused, saying which are missing. @azure/identity
 * is loaded at the first token request, so settings can be mapped without it.
 */
export function azureCredentialFromEnvironment(env: NodeJS.ProcessEnv = process.env): AzureTokenCredential {
  const names = ["AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"] as const;
  const values = names.map((name) => env[name] ?? "");
  const missing = names.filter((_, i) => values[i] === "");
  if (missing.length > 0 && missing.length < names.length) {
    throw new KmsError(ErrorCode.FAILED_PRECONDITION, "azure-keyvault", "open",
      `kms_provider = "azure-keyvault": ${names.filter((n) => !missing.includes(n)).join(", ")} set but ${missing.join(", ")} not: ` +
        "set all three for a service principal, or none to use a managed identity (DefaultAzureCredential)");
  }
  let made: Promise<AzureTokenCredential> | undefined;
  const make = async (): Promise<AzureTokenCredential> => {
    const identity = await import("@azure/identity");
    const [tenantId, clientId, clientSecret] = values as [string, string, string];
    return missing.length === 0 ? new identity.ClientSecretCredential(tenantId, clientId, clientSecret) : new identity.DefaultAzureCredential();
  };
  return { getToken: async (scopes, options) => (await (made ??= make())).getToken(scopes, options) };
}

/** Loads @azure/keyvault-keys. Throws FAILED_PRECONDITION naming the package when it is not installed. */
async function loadAzureKeyVaultSdk(): Promise<typeof import("@azure/keyvault-keys")> {
  try {
    return await import("@azure/keyvault-keys");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ERR_MODULE_NOT_FOUND" || code === "MODULE_NOT_FOUND") {
      throw new KmsError(ErrorCode.FAILED_PRECONDITION, "azure-keyvault", "open",
        `kms_provider = "azure-keyvault" needs the npm package ${AZURE_KEYVAULT_SDK_PACKAGE}, which is not installed: run \`npm install ${AZURE_KEYVAULT_SDK_PACKAGE}\``,
        { cause: e });
    }
    throw e;
  }
}
