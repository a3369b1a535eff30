/**
 * A small Azure Key Vault on loopback for tests: HTTPS (our own certificate) with the Key Vault REST
 * shapes for GET /keys/{name}[/{version}], POST /keys/{name}/{version}/wrapkey and /unwrapkey
 * (`?api-version=` required; JSON with base64url values; errors as {"error": {"code", "message"}}),
 * and Key Vault's challenge authentication: a request without a bearer token gets 401 with
 * `WWW-Authenticate: Bearer authorization="...", resource="https://vault.azure.net"`, and a token it
 * does not know gets 401 too. Keys are RSA-2048 (RSA-OAEP-256, real RSA) or oct-HSM (A256KW); each
 * can be rotated (a new current version), disabled (per version), denied to the caller or deleted;
 * the server can answer the next requests with an HTTP status, stall them, or be stopped and
 * started again on the same port.
 */

import { constants, createCipheriv, createDecipheriv, generateKeyPairSync, privateDecrypt, publicEncrypt, randomBytes } from "node:crypto";
import type { KeyObject } from "node:crypto";
import { createServer } from "node:https";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Server } from "node:https";
import type { AddressInfo, Socket } from "node:net";

const REQUEST_BYTES_MAX = 64 * 1024;
const REQUEST_LOG_MAX = 10_000;
export const FAKE_AZURE_TOKEN = "eyJ0eXAi.verity-test-token";
const AES_KW_IV = Buffer.from("A6A6A6A6A6A6A6A6", "hex");

export type FakeAzureKeyType = "RSA" | "oct-HSM";

interface FakeVersion {
  readonly id: string;
  enabled: boolean;
  readonly rsa?: { readonly publicKey: KeyObject; readonly privateKey: KeyObject; readonly n: Buffer; readonly e: Buffer };
  readonly aes?: Buffer;
}

interface FakeKey {
  readonly name: string;
  readonly kty: FakeAzureKeyType;
  readonly modulusBits: number;
  readonly versions: FakeVersion[];
  denied: boolean;
  keyOps: string[];
}

export interface LoggedAzureRequest {
  readonly method: string;
  readonly path: string;
  readonly authorized: boolean;
}

class VaultFault extends Error {
  constructor(readonly status: number, readonly code: string, message: string, readonly inner?: string) {
    super(message);
  }
}

export interface FakeAzureKeyVaultOptions {
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly port?: number;
  readonly tokens?: readonly string[];
}

export class FakeAzureKeyVault {
  readonly requests: LoggedAzureRequest[] = [];
  private readonly keys = new Map<string, FakeKey>();
  private readonly tokens: Set<string>;
  private readonly sockets = new Set<Socket>();
  private failures: { status: number; count: number } | undefined;
  private stalls = 0;
  private server: Server | undefined;
  private listeningPort = 0;

  private constructor(private readonly options: FakeAzureKeyVaultOptions) {
    this.tokens = new Set(options.tokens ?? [FAKE_AZURE_TOKEN]);
  }

  static async start(options: FakeAzureKeyVaultOptions): Promise<FakeAzureKeyVault> {
    const vault = new FakeAzureKeyVault(options);
    await vault.listen(options.port ?? 0);
    return vault;
  }

  get port(): number {
    return this.listeningPort;
  }

  /** The vault URL, https://127.0.0.1:<port>. */
  get url(): string {
    return `https://127.0.0.1:${this.listeningPort}`;
  }

  async listen(port = this.listeningPort): Promise<void> {
    const server = createServer({ cert: this.options.cert, key: this.options.key }, (req, res) => this.handle(req, res));
    server.on("secureConnection", (socket) => {
      this.sockets.add(socket);
      socket.on("close", () => this.sockets.delete(socket));
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, "127.0.0.1", () => resolve());
    });
    this.server = server;
    this.listeningPort = (server.address() as AddressInfo).port;
  }

  async stop(): Promise<void> {
    const server = this.server;
    if (server === undefined) return;
    this.server = undefined;
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  /** Creates a key with one version; returns its URL without a version. */
  createKey(name: string, kty: FakeAzureKeyType = "RSA", modulusBits = 2048): string {
    this.keys.set(name, { name, kty, modulusBits, versions: [], denied: false, keyOps: ["encrypt", "decrypt", "wrapKey", "unwrapKey"] });
    this.rotateKey(name);
    return `${this.url}/keys/${name}`;
  }

  /** Adds a version and makes it current; returns the version. */
  rotateKey(name: string): string {
    const key = this.key(name);
    const id = randomBytes(16).toString("hex");
    if (key.kty === "RSA") {
      const { publicKey, privateKey } = generateKeyPairSync("rsa", { modulusLength: key.modulusBits });
      const jwk = publicKey.export({ format: "jwk" });
      key.versions.push({ id, enabled: true, rsa: { publicKey, privateKey, n: Buffer.from(jwk.n!, "base64url"), e: Buffer.from(jwk.e!, "base64url") } });
    } else {
      key.versions.push({ id, enabled: true, aes: randomBytes(32) });
    }
    return id;
  }

  currentVersion(name: string): string {
    return this.key(name).versions.at(-1)!.id;
  }

  /** Enables or disables one version, or every version when none is given. */
  setEnabled(name: string, enabled: boolean, version?: string): void {
    for (const v of this.key(name).versions) if (version === undefined || v.id === version) v.enabled = enabled;
  }

  denyAccess(name: string, denied = true): void {
    this.key(name).denied = denied;
  }

  setKeyOperations(name: string, ops: string[]): void {
    this.key(name).keyOps = ops;
  }

  deleteKey(name: string): void {
    this.keys.delete(name);
  }

  /** The next `count` authorized requests answer this HTTP status (e.g. 500, 503, 429). */
  failNext(count: number, status: number): void {
    this.failures = { status, count };
  }

  /** The next `count` requests are read and never answered (until stop()). */
  stallNext(count: number): void {
    this.stalls = count;
  }

  private key(name: string): FakeKey {
    const key = this.keys.get(name);
    if (key === undefined) throw new Error(`fake Key Vault: no key ${name}`);
    return key;
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const chunks: Buffer[] = [];
    let bytes = 0;
    req.on("data", (chunk: Buffer) => {
      bytes += chunk.length;
      if (bytes <= REQUEST_BYTES_MAX) chunks.push(chunk);
    });
    req.on("end", () => {
      if (this.stalls > 0) {
        this.stalls--;
        return;
      }
      try {
        if (bytes > REQUEST_BYTES_MAX) throw new VaultFault(413, "RequestTooLarge", "request too large");
        send(res, 200, this.answer(req, Buffer.concat(chunks)));
      } catch (e) {
        const fault = e instanceof VaultFault ? e : new VaultFault(500, "InternalServerError", String(e));
        const headers: Record<string, string> = fault.status === 401
          ? { "www-authenticate": 'Bearer authorization="https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47", resource="https://vault.azure.net"' }
          : {};
        send(res, fault.status, { error: { code: fault.code, message: fault.message, ...(fault.inner === undefined ? {} : { innererror: { code: fault.inner } }) } }, headers);
      }
    });
  }

  private answer(req: IncomingMessage, body: Buffer): object {
    const url = new URL(req.url ?? "/", this.url);
    const authorization = req.headers["authorization"];
    const token = typeof authorization === "string" ? /^Bearer (.+)$/.exec(authorization)?.[1] : undefined;
    if (this.requests.length >= REQUEST_LOG_MAX) this.requests.shift();
    this.requests.push({ method: req.method ?? "", path: url.pathname, authorized: token !== undefined });
    if (token === undefined) throw new VaultFault(401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.");
    if (!this.tokens.has(token)) throw new VaultFault(401, "Unauthorized", "AKV10032: Invalid issuer.");
    if (!url.searchParams.has("api-version")) throw new VaultFault(400, "BadParameter", "The 'api-version' query parameter is missing.");
    if (this.failures !== undefined && this.failures.count > 0) {
      this.failures.count--;
      throw new VaultFault(this.failures.status, "ServiceUnavailable", "injected failure");
    }
    // /keys/{name}, /keys/{name}/{version}, /keys/{name}/{version}/{operation} (version may be empty)
    const parts = url.pathname.split("/").slice(1);
    if (parts[0] !== "keys" || parts.length < 2 || parts.length > 4) throw new VaultFault(404, "NotFound", `no route ${url.pathname}`);
    const name = parts[1]!;
    const key = this.keys.get(name);
    if (key === undefined) throw new VaultFault(404, "KeyNotFound", `A key with (name/id) ${name} was not found in this key vault.`);
    const operation = parts.length === 4 ? parts[3]! : req.method === "GET" ? "get" : "";
    if (key.denied) {
      throw new VaultFault(403, "Forbidden", `The user, group or application does not have keys ${operation} permission on key vault 'fake;location=local'.`,
        "ForbiddenByPolicy");
    }
    const versionId = parts[2] ?? "";
    const version = versionId === "" ? key.versions.at(-1)! : key.versions.find((v) => v.id === versionId);
    if (version === undefined) throw new VaultFault(404, "KeyNotFound", `A key with (name/id) ${name}/${versionId} was not found in this key vault.`);
    if (!version.enabled) throw new VaultFault(403, "Forbidden", `Operation ${operation} is not allowed on a disabled key.`, "KeyDisabled");
    const kid = `${this.url}/keys/${name}/${version.id}`;
    if (req.method === "GET" && parts.length <= 3) return this.bundle(key, version, kid);
    if (req.method !== "POST" || (operation !== "wrapkey" && operation !== "unwrapkey")) throw new VaultFault(405, "MethodNotAllowed", `${req.method} ${url.pathname}`);
    let input: { alg?: unknown; value?: unknown };
    try {
      input = JSON.parse(body.toString("utf8")) as { alg?: unknown; value?: unknown };
    } catch {
      throw new VaultFault(400, "BadParameter", "body is not JSON");
    }
    const value = Buffer.from(String(input.value ?? ""), "base64url");
    return { kid, value: this.crypt(key, version, operation, String(input.alg), value).toString("base64url") };
  }

  private crypt(key: FakeKey, version: FakeVersion, operation: string, alg: string, value: Buffer): Buffer {
    const op = operation === "wrapkey" ? "wrapKey" : "unwrapKey";
    if (!key.keyOps.includes(op)) throw new VaultFault(403, "Forbidden", `Operation ${op} is not permitted on this key.`, "KeyOperationForbidden");
    const bad = new VaultFault(400, "BadParameter", "The parameter is incorrect.");
    try {
      if (key.kty === "RSA" && alg === "RSA-OAEP-256") {
        const options = { padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256" };
        return operation === "wrapkey" ? publicEncrypt({ key: version.rsa!.publicKey, ...options }, value) : privateDecrypt({ key: version.rsa!.privateKey, ...options }, value);
      }
      if (key.kty === "oct-HSM" && alg === "A256KW") {
        const cipher = operation === "wrapkey" ? createCipheriv("id-aes256-wrap", version.aes!, AES_KW_IV) : createDecipheriv("id-aes256-wrap", version.aes!, AES_KW_IV);
        return Buffer.concat([cipher.update(value), cipher.final()]);
      }
    } catch {
      throw bad;
    }
    throw new VaultFault(400, "BadParameter", `Algorithm ${alg} is not supported for key type ${key.kty}.`);
  }

  private bundle(key: FakeKey, version: FakeVersion, kid: string): object {
    const created = 1_700_000_000;
    const jwk = key.kty === "RSA"
      ? { kid, kty: "RSA", key_ops: key.keyOps, n: version.rsa!.n.toString("base64url"), e: version.rsa!.e.toString("base64url") }
      : { kid, kty: "oct-HSM", key_ops: key.keyOps };
    return { key: jwk, attributes: { enabled: version.enabled, created, updated: created, recoveryLevel: "Recoverable+Purgeable", exportable: false } };
  }
}

function send(res: ServerResponse, status: number, body: object, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json; charset=utf-8", "content-length": Buffer.byteLength(text), ...headers });
  res.end(text);
}
