/**
 * A small Google Cloud KMS on loopback for tests: a gRPC server (TLS, our own certificate) implementing
 * google.cloud.kms.v1.KeyManagementService Encrypt, Decrypt and GetCryptoKey from the protos shipped in
 * @google-cloud/kms, with Cloud KMS's status codes and messages. CryptoKeys have versions that can be
 * added (a new primary: rotation), disabled and destroyed; a key can be denied to the caller; the
 * server can fail or stall the next calls, and be stopped and started again on the same port.
 * Ciphertexts are its own AES-256-GCM format naming the version, bound to the CryptoKey name and the
 * additional authenticated data, opaque to callers as real ones are. Calls must carry
 * `authorization: Bearer <token>` with a token it knows.
 */

import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { createRequire } from "node:module";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const require = createRequire(import.meta.url);
/** Requests remembered for assertions; older ones are dropped. */
const REQUEST_LOG_MAX = 10_000;
/** Calls held unanswered at once (stallNext); more are answered UNAVAILABLE. */
const STALLED_MAX = 64;
const BLOB_MAGIC = Buffer.from("FGCP", "latin1");
export const FAKE_GCP_TOKEN = "ya29.verity-test-token";

export type FakeVersionState = "ENABLED" | "DISABLED" | "DESTROYED";

interface FakeVersion {
  readonly number: number;
  state: FakeVersionState;
  readonly material: Buffer;
}

interface FakeCryptoKey {
  readonly name: string;
  readonly versions: FakeVersion[];
  primary: number;
  /** When true, every use answers PERMISSION_DENIED (IAM no longer grants us the key). */
  denied: boolean;
}

export interface LoggedGcpRequest {
  readonly method: string;
  readonly name: string;
  readonly aad?: Buffer;
}

class GrpcFault extends Error {
  constructor(readonly code: grpc.status, message: string) {
    super(message);
  }
}

let serviceDefinition: grpc.ServiceDefinition | undefined;

/** KeyManagementService from the protos.json that ships inside @google-cloud/kms. */
function kmsService(): grpc.ServiceDefinition {
  if (serviceDefinition === undefined) {
    const json = require("@google-cloud/kms/build/protos/protos.json") as object;
    const definition = protoLoader.fromJSON(json, { keepCase: false, longs: String, enums: String, defaults: true, oneofs: true });
    const loaded = grpc.loadPackageDefinition(definition) as unknown as {
      google: { cloud: { kms: { v1: { KeyManagementService: { service: grpc.ServiceDefinition } } } } };
    };
    serviceDefinition = loaded.google.cloud.kms.v1.KeyManagementService.service;
  }
  return serviceDefinition;
}

export interface FakeGcpKmsOptions {
  /** PEM certificate and key the server presents (TestCa.issue). */
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly port?: number;
  /** Bearer tokens accepted. */
  readonly tokens?: readonly string[];
}

export class FakeGcpKms {
  readonly requests: LoggedGcpRequest[] = [];
  readonly project = "verity-test";
  readonly location = "us-east1";
  readonly keyRing = "verity";
  private readonly keys = new Map<string, FakeCryptoKey>();
  private readonly tokens: Set<string>;
  private failures: { code: grpc.status; count: number } | undefined;
  private stalls = 0;
  private readonly stalled: (() => void)[] = [];
  private server: grpc.Server | undefined;
  private listeningPort = 0;

  private constructor(private readonly options: FakeGcpKmsOptions) {
    this.tokens = new Set(options.tokens ?? [FAKE_GCP_TOKEN]);
  }

  static async start(options: FakeGcpKmsOptions): Promise<FakeGcpKms> {
    const kms = new FakeGcpKms(options);
    await kms.listen(options.port ?? 0);
    return kms;
  }

  get port(): number {
    return this.listeningPort;
  }

  /** host:port, the form kms_endpoint takes. */
  get endpoint(): string {
    return `127.0.0.1:${this.listeningPort}`;
  }

  /** Listens again (on the same port unless given) after stop(), keeping keys: the KMS is back. */
  async listen(port = this.listeningPort): Promise<void> {
    const server = new grpc.Server();
    const handler = (method: string, run: (request: Record<string, unknown>) => object) =>
      (call: grpc.ServerUnaryCall<Record<string, unknown>, object>, callback: grpc.sendUnaryData<object>): void => this.serve(method, call, callback, run);
    server.addService(kmsService(), {
      Encrypt: handler("Encrypt", (r) => this.encrypt(r)),
      Decrypt: handler("Decrypt", (r) => this.decrypt(r)),
      GetCryptoKey: handler("GetCryptoKey", (r) => this.getCryptoKey(r)),
    });
    const credentials = grpc.ServerCredentials.createSsl(null, [{ cert_chain: this.options.cert, private_key: this.options.key }]);
    this.listeningPort = await new Promise<number>((resolve, reject) => {
      server.bindAsync(`127.0.0.1:${port}`, credentials, (error, bound) => (error === null ? resolve(bound) : reject(error)));
    });
    this.server = server;
  }

  /** Stops listening and cuts open connections: the KMS is unreachable until listen(). */
  async stop(): Promise<void> {
    const server = this.server;
    if (server === undefined) return;
    this.server = undefined;
    for (const release of this.stalled.splice(0)) release();
    server.forceShutdown();
  }

  /** Creates a CryptoKey (purpose ENCRYPT_DECRYPT) with one enabled version; returns its name. */
  createKey(id = `key-${randomBytes(4).toString("hex")}`): string {
    const name = `projects/${this.project}/locations/${this.location}/keyRings/${this.keyRing}/cryptoKeys/${id}`;
    this.keys.set(name, { name, versions: [{ number: 1, state: "ENABLED", material: randomBytes(32) }], primary: 1, denied: false });
    return name;
  }

  /** Adds a version and makes it primary (rotation); returns its CryptoKeyVersion name. */
  rotateKey(name: string): string {
    const key = this.key(name);
    const number = key.versions.length + 1;
    key.versions.push({ number, state: "ENABLED", material: randomBytes(32) });
    key.primary = number;
    return `${name}/cryptoKeyVersions/${number}`;
  }

  /** Sets one version's state, or every version's when none is given. */
  setVersionState(name: string, state: FakeVersionState, version?: number): void {
    for (const v of this.key(name).versions) if (version === undefined || v.number === version) v.state = state;
  }

  denyAccess(name: string, denied = true): void {
    this.key(name).denied = denied;
  }

  primaryVersionName(name: string): string {
    return `${name}/cryptoKeyVersions/${this.key(name).primary}`;
  }

  /** The next `count` calls answer this status (e.g. UNAVAILABLE, INTERNAL). */
  failNext(count: number, code: grpc.status): void {
    this.failures = { code, count };
  }

  /** The next `count` calls are read and never answered (until stop()). */
  stallNext(count: number): void {
    this.stalls = count;
  }

  private key(name: string): FakeCryptoKey {
    const key = this.keys.get(name);
    if (key === undefined) throw new Error(`fake Cloud KMS: no key ${name}`);
    return key;
  }

  private serve(method: string, call: grpc.ServerUnaryCall<Record<string, unknown>, object>, callback: grpc.sendUnaryData<object>,
    run: (request: Record<string, unknown>) => object): void {
    const request = call.request;
    const name = String(request["name"] ?? "");
    if (this.requests.length >= REQUEST_LOG_MAX) this.requests.shift();
    const aad = request["additionalAuthenticatedData"];
    this.requests.push({ method, name, ...(Buffer.isBuffer(aad) ? { aad } : {}) });
    if (this.stalls > 0 && this.stalled.length < STALLED_MAX) {
      this.stalls--;
      this.stalled.push(() => callback({ code: grpc.status.UNAVAILABLE, details: "server stopped" }));
      return;
    }
    try {
      const token = /^Bearer (.+)$/.exec(String(call.metadata.get("authorization")[0] ?? ""))?.[1];
      if (token === undefined || !this.tokens.has(token)) {
        throw new GrpcFault(grpc.status.UNAUTHENTICATED,
          "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.");
      }
      if (this.failures !== undefined && this.failures.count > 0) {
        this.failures.count--;
        throw new GrpcFault(this.failures.code, "injected failure");
      }
      callback(null, run(request));
    } catch (e) {
      const fault = e instanceof GrpcFault ? e : new GrpcFault(grpc.status.INTERNAL, String(e));
      callback({ code: fault.code, details: fault.message });
    }
  }

  private resolve(name: string, permission: string): FakeCryptoKey {
    if (!/^projects\/[^/]+\/locations\/[^/]+\/keyRings\/[^/]+\/cryptoKeys\/[^/]+$/.test(name)) {
      throw new GrpcFault(grpc.status.INVALID_ARGUMENT, `Resource name [${name}] does not match any known type.`);
    }
    const key = this.keys.get(name);
    if (key === undefined) throw new GrpcFault(grpc.status.NOT_FOUND, `CryptoKey ${name} not found.`);
    if (key.denied) {
      throw new GrpcFault(grpc.status.PERMISSION_DENIED, `Permission '${permission}' denied on resource '${name}' (or it may not exist).`);
    }
    return key;
  }

  private usable(key: FakeCryptoKey, version: FakeVersion): void {
    if (version.state !== "ENABLED") {
      throw new GrpcFault(grpc.status.FAILED_PRECONDITION,
        `The request cannot be fulfilled. Resource ${key.name}/cryptoKeyVersions/${version.number} has value ${version.state} in field crypto_key_version.state.`);
    }
  }

  private encrypt(request: Record<string, unknown>): object {
    const key = this.resolve(String(request["name"]), "cloudkms.cryptoKeyVersions.useToEncrypt");
    const version = key.versions[key.primary - 1]!;
    this.usable(key, version);
    const plaintext = request["plaintext"] as Buffer;
    const aad = (request["additionalAuthenticatedData"] as Buffer | undefined) ?? Buffer.alloc(0);
    const header = Buffer.alloc(BLOB_MAGIC.length + 4);
    BLOB_MAGIC.copy(header, 0);
    header.writeUInt32BE(version.number, BLOB_MAGIC.length);
    const nonce = randomBytes(12);
    const cipher = createCipheriv("aes-256-gcm", version.material, nonce);
    cipher.setAAD(Buffer.concat([header, Buffer.from(key.name), aad]));
    const ciphertext = Buffer.concat([header, nonce, cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]);
    return {
      name: `${key.name}/cryptoKeyVersions/${version.number}`, ciphertext,
      verifiedPlaintextCrc32c: false, verifiedAdditionalAuthenticatedDataCrc32c: false, protectionLevel: "SOFTWARE",
    };
  }

  private decrypt(request: Record<string, unknown>): object {
    const key = this.resolve(String(request["name"]), "cloudkms.cryptoKeyVersions.useToDecrypt");
    const blob = request["ciphertext"] as Buffer;
    const aad = (request["additionalAuthenticatedData"] as Buffer | undefined) ?? Buffer.alloc(0);
    const invalid = new GrpcFault(grpc.status.INVALID_ARGUMENT, "Decryption failed: the ciphertext is invalid.");
    const headerBytes = BLOB_MAGIC.length + 4;
    if (blob.length < headerBytes + 12 + 16 || !blob.subarray(0, BLOB_MAGIC.length).equals(BLOB_MAGIC)) throw invalid;
    const version = key.versions[blob.readUInt32BE(BLOB_MAGIC.length) - 1];
    if (version === undefined) throw invalid;
    const decipher = createDecipheriv("aes-256-gcm", version.material, blob.subarray(headerBytes, headerBytes + 12));
    decipher.setAAD(Buffer.concat([blob.subarray(0, headerBytes), Buffer.from(key.name), aad]));
    decipher.setAuthTag(blob.subarray(blob.length - 16));
    let plaintext: Buffer;
    try {
      plaintext = Buffer.concat([decipher.update(blob.subarray(headerBytes + 12, blob.length - 16)), decipher.final()]);
    } catch {
      throw invalid;
    }
    this.usable(key, version);
    return { plaintext, usedPrimary: version.number === key.primary, protectionLevel: "SOFTWARE" };
  }

  private getCryptoKey(request: Record<string, unknown>): object {
    const key = this.resolve(String(request["name"]), "cloudkms.cryptoKeys.get");
    const primary = key.versions[key.primary - 1]!;
    return {
      name: key.name,
      purpose: "ENCRYPT_DECRYPT",
      primary: { name: `${key.name}/cryptoKeyVersions/${primary.number}`, state: primary.state, algorithm: "GOOGLE_SYMMETRIC_ENCRYPTION" },
      versionTemplate: { algorithm: "GOOGLE_SYMMETRIC_ENCRYPTION", protectionLevel: "SOFTWARE" },
    };
  }
}
