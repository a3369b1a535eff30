/**
 * A small AWS KMS on loopback for tests: the JSON 1.1 protocol (POST /, `X-Amz-Target:
 * TrentService.<Operation>`, `Content-Type: application/x-amz-json-1.1`, blobs as base64, errors as
 * {"__type", "message"} with `x-amzn-ErrorType`) for GenerateDataKey, Encrypt, Decrypt, ReEncrypt
 * and DescribeKey. Keys can be disabled, scheduled for deletion, denied to the caller, rotated (a new
 * key material becomes current; old materials still decrypt), and the server can fail or stall the
 * next requests. Ciphertext blobs are its own AES-256-GCM format, bound to the encryption context,
 * opaque to callers as real ones are. It checks that a request carries SigV4 credentials for a known
 * access key id, but does not verify signatures.
 */

import { createCipheriv, createDecipheriv, randomBytes, randomUUID } from "node:crypto";
import { createServer } from "node:http";
import type { IncomingMessage, Server, ServerResponse } from "node:http";
import type { AddressInfo, Socket } from "node:net";

/** Request bodies larger than this are refused (KMS's own limit on a request is far below it). */
const REQUEST_BYTES_MAX = 64 * 1024;
/** Requests remembered for assertions; older ones are dropped. */
const REQUEST_LOG_MAX = 10_000;
const BLOB_MAGIC = Buffer.from("FKMS", "latin1");
export const FAKE_ACCOUNT = "111122223333";

export type FakeKeyState = "Enabled" | "Disabled" | "PendingDeletion";

interface FakeKey {
  readonly keyId: string;
  readonly arn: string;
  state: FakeKeyState;
  /** When true, every use answers AccessDeniedException (a policy that no longer grants us the key). */
  denied: boolean;
  /** Key materials, oldest first; the last is current. */
  readonly materials: { readonly id: string; readonly key: Buffer }[];
}

export interface LoggedRequest {
  readonly operation: string;
  readonly keyId?: string;
  readonly encryptionContext?: Record<string, string>;
}

class KmsFault extends Error {
  constructor(readonly type: string, message: string, readonly status = 400) {
    super(message);
  }
}

export interface FakeAwsKmsOptions {
  /** Port to listen on (0: any). Reusing a stopped server's port brings "the same" KMS back. */
  readonly port?: number;
  readonly region?: string;
  /** Access key ids the server accepts. */
  readonly accessKeyIds?: readonly string[];
}

export class FakeAwsKms {
  readonly region: string;
  readonly requests: LoggedRequest[] = [];
  private readonly keys = new Map<string, FakeKey>();
  private readonly aliases = new Map<string, string>();
  private readonly accessKeyIds: Set<string>;
  private readonly sockets = new Set<Socket>();
  private failures: { type: string; status: number; count: number } | undefined;
  private stalls = 0;
  private server: Server | undefined;
  private listeningPort = 0;

  private constructor(options: FakeAwsKmsOptions) {
    this.region = options.region ?? "us-east-1";
    this.accessKeyIds = new Set(options.accessKeyIds ?? ["AKIDVERITYTEST"]);
  }

  static async start(options: FakeAwsKmsOptions = {}): Promise<FakeAwsKms> {
    const kms = new FakeAwsKms(options);
    await kms.listen(options.port ?? 0);
    return kms;
  }

  get port(): number {
    return this.listeningPort;
  }

  get endpoint(): string {
    return `http://127.0.0.1:${this.listeningPort}`;
  }

  /** Listens again (on the same port unless given) after stop(), keeping keys: the KMS is back. */
  async listen(port = this.listeningPort): Promise<void> {
    const server = createServer((req, res) => this.handle(req, res));
    server.on("connection", (socket) => {
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

  /** Stops listening and cuts open connections: the KMS is unreachable until listen(). */
  async stop(): Promise<void> {
    const server = this.server;
    if (server === undefined) return;
    this.server = undefined;
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  createKey(alias?: string): { keyId: string; arn: string } {
    const keyId = randomUUID();
    const arn = `arn:aws:kms:${this.region}:${FAKE_ACCOUNT}:key/${keyId}`;
    this.keys.set(keyId, { keyId, arn, state: "Enabled", denied: false, materials: [{ id: randomBytes(32).toString("hex"), key: randomBytes(32) }] });
    if (alias !== undefined) this.aliases.set(alias.startsWith("alias/") ? alias : `alias/${alias}`, keyId);
    return { keyId, arn };
  }

  setKeyState(keyId: string, state: FakeKeyState): void {
    this.key(keyId).state = state;
  }

  denyAccess(keyId: string, denied = true): void {
    this.key(keyId).denied = denied;
  }

  /** On-demand rotation: new key material becomes current; returns its id. */
  rotateKey(keyId: string): string {
    const material = { id: randomBytes(32).toString("hex"), key: randomBytes(32) };
    this.key(keyId).materials.push(material);
    return material.id;
  }

  currentMaterialId(keyId: string): string {
    return this.key(keyId).materials.at(-1)!.id;
  }

  /** The next `count` requests answer this error type (e.g. KMSInternalException with 500). */
  failNext(count: number, type: string, status = 500): void {
    this.failures = { type, status, count };
  }

  /** The next `count` requests are read and never answered. */
  stallNext(count: number): void {
    this.stalls = count;
  }

  private key(keyId: string): FakeKey {
    const key = this.keys.get(keyId);
    if (key === undefined) throw new Error(`fake KMS: no key ${keyId}`);
    return key;
  }

  private resolve(id: unknown): FakeKey {
    if (typeof id !== "string" || id === "") throw new KmsFault("ValidationException", "1 validation error detected: KeyId must not be empty");
    let keyId = id;
    const arnMatch = /^arn:aws:kms:([^:]+):(\d+):(key|alias)\/(.+)$/.exec(id);
    if (arnMatch !== null) {
      if (arnMatch[1] !== this.region || arnMatch[2] !== FAKE_ACCOUNT) throw new KmsFault("NotFoundException", `Key '${id}' does not exist`);
      keyId = arnMatch[3] === "alias" ? this.aliases.get(`alias/${arnMatch[4]}`) ?? "" : arnMatch[4]!;
    } else if (id.startsWith("alias/")) {
      keyId = this.aliases.get(id) ?? "";
    }
    const key = this.keys.get(keyId);
    if (key === undefined) throw new KmsFault("NotFoundException", `Key '${id}' does not exist`);
    return key;
  }

  private usable(key: FakeKey, action: string): void {
    if (key.denied) {
      throw new KmsFault("AccessDeniedException",
        `User: arn:aws:iam::${FAKE_ACCOUNT}:user/verity is not authorized to perform: kms:${action} on resource: ${key.arn} because no identity-based policy allows the kms:${action} action`);
    }
    if (key.state === "Disabled") throw new KmsFault("DisabledException", `${key.arn} is disabled.`);
    if (key.state === "PendingDeletion") throw new KmsFault("KMSInvalidStateException", `${key.arn} is pending deletion.`);
  }

  private encrypt(key: FakeKey, plaintext: Buffer, context: unknown): Buffer {
    const materialIndex = key.materials.length - 1;
    const arn = Buffer.from(key.arn, "latin1");
    const header = Buffer.alloc(BLOB_MAGIC.length + 1 + arn.length + 2);
    BLOB_MAGIC.copy(header, 0);
    header[4] = arn.length;
    arn.copy(header, 5);
    header.writeUInt16LE(materialIndex, 5 + arn.length);
    const nonce = randomBytes(12);
    const cipher = createCipheriv("aes-256-gcm", key.materials[materialIndex]!.key, nonce);
    cipher.setAAD(Buffer.concat([header, contextBytes(context)]));
    return Buffer.concat([header, nonce, cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]);
  }

  /** Decrypts a blob; the key it names must be `expected` when given (Decrypt's KeyId). */
  private decrypt(blob: Buffer, context: unknown, expected: FakeKey | undefined, action: string): { key: FakeKey; plaintext: Buffer; materialId: string } {
    const invalid = new KmsFault("InvalidCiphertextException", "");
    if (blob.length < 5 + 2 + 12 + 16 || !blob.subarray(0, 4).equals(BLOB_MAGIC)) throw invalid;
    const arnLength = blob[4]!;
    const arn = blob.toString("latin1", 5, 5 + arnLength);
    const key = [...this.keys.values()].find((k) => k.arn === arn);
    if (key === undefined) throw invalid;
    if (expected !== undefined && expected !== key) {
      throw new KmsFault("IncorrectKeyException", "The key ID in the request does not identify a KMS key that can perform this operation.");
    }
    this.usable(key, action);
    const headerEnd = 5 + arnLength + 2;
    const material = key.materials[blob.readUInt16LE(5 + arnLength)];
    if (material === undefined || blob.length < headerEnd + 12 + 16) throw invalid;
    const decipher = createDecipheriv("aes-256-gcm", material.key, blob.subarray(headerEnd, headerEnd + 12));
    decipher.setAAD(Buffer.concat([blob.subarray(0, headerEnd), contextBytes(context)]));
    decipher.setAuthTag(blob.subarray(blob.length - 16));
    try {
      const plaintext = Buffer.concat([decipher.update(blob.subarray(headerEnd + 12, blob.length - 16)), decipher.final()]);
      return { key, plaintext, materialId: material.id };
    } catch {
      throw invalid;
    }
  }

  private operation(name: string, input: Record<string, unknown>): object {
    switch (name) {
      case "GenerateDataKey": {
        const key = this.resolve(input["KeyId"]);
        this.usable(key, "GenerateDataKey");
        const bytes = input["KeySpec"] === "AES_256" ? 32 : input["KeySpec"] === "AES_128" ? 16 : Number(input["NumberOfBytes"]);
        if (!Number.isInteger(bytes) || bytes < 1 || bytes > 1024) throw new KmsFault("ValidationException", "KeySpec or NumberOfBytes is required");
        const plaintext = randomBytes(bytes);
        return {
          CiphertextBlob: this.encrypt(key, plaintext, input["EncryptionContext"]).toString("base64"),
          Plaintext: plaintext.toString("base64"), KeyId: key.arn, KeyMaterialId: key.materials.at(-1)!.id,
        };
      }
      case "Encrypt": {
        const key = this.resolve(input["KeyId"]);
        this.usable(key, "Encrypt");
        const plaintext = Buffer.from(String(input["Plaintext"] ?? ""), "base64");
        return { CiphertextBlob: this.encrypt(key, plaintext, input["EncryptionContext"]).toString("base64"), KeyId: key.arn, EncryptionAlgorithm: "SYMMETRIC_DEFAULT" };
      }
      case "Decrypt": {
        const expected = input["KeyId"] === undefined ? undefined : this.resolve(input["KeyId"]);
        const r = this.decrypt(Buffer.from(String(input["CiphertextBlob"] ?? ""), "base64"), input["EncryptionContext"], expected, "Decrypt");
        return { KeyId: r.key.arn, Plaintext: r.plaintext.toString("base64"), EncryptionAlgorithm: "SYMMETRIC_DEFAULT", KeyMaterialId: r.materialId };
      }
      case "ReEncrypt": {
        const expected = input["SourceKeyId"] === undefined ? undefined : this.resolve(input["SourceKeyId"]);
        const destination = this.resolve(input["DestinationKeyId"]);
        const r = this.decrypt(Buffer.from(String(input["CiphertextBlob"] ?? ""), "base64"), input["SourceEncryptionContext"], expected, "ReEncryptFrom");
        this.usable(destination, "ReEncryptTo");
        return {
          CiphertextBlob: this.encrypt(destination, r.plaintext, input["DestinationEncryptionContext"]).toString("base64"),
          KeyId: destination.arn, SourceKeyId: r.key.arn, SourceKeyMaterialId: r.materialId,
          DestinationKeyMaterialId: destination.materials.at(-1)!.id,
          SourceEncryptionAlgorithm: "SYMMETRIC_DEFAULT", DestinationEncryptionAlgorithm: "SYMMETRIC_DEFAULT",
        };
      }
      case "DescribeKey": {
        const key = this.resolve(input["KeyId"]);
        if (key.denied) this.usable(key, "DescribeKey");
        return {
          KeyMetadata: {
            AWSAccountId: FAKE_ACCOUNT, KeyId: key.keyId, Arn: key.arn, CreationDate: 1_700_000_000,
            Enabled: key.state === "Enabled", KeyState: key.state, KeyUsage: "ENCRYPT_DECRYPT", KeySpec: "SYMMETRIC_DEFAULT",
            CustomerMasterKeySpec: "SYMMETRIC_DEFAULT", EncryptionAlgorithms: ["SYMMETRIC_DEFAULT"], Origin: "AWS_KMS",
            KeyManager: "CUSTOMER", MultiRegion: false, CurrentKeyMaterialId: key.materials.at(-1)!.id,
          },
        };
      }
      default:
        throw new KmsFault("UnknownOperationException", `unknown operation ${name}`);
    }
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
        return; // never answered: the client's timeout must fire
      }
      try {
        if (bytes > REQUEST_BYTES_MAX) throw new KmsFault("ValidationException", "request too large", 413);
        const body = this.answer(req, Buffer.concat(chunks));
        send(res, 200, body);
      } catch (e) {
        const fault = e instanceof KmsFault ? e : new KmsFault("KMSInternalException", String(e), 500);
        send(res, fault.status, { __type: fault.type, message: fault.message }, fault.type);
      }
    });
  }

  private answer(req: IncomingMessage, body: Buffer): object {
    const target = req.headers["x-amz-target"];
    if (req.method !== "POST" || typeof target !== "string" || !target.startsWith("TrentService.")) {
      throw new KmsFault("UnknownOperationException", "expected POST with X-Amz-Target: TrentService.<Operation>");
    }
    if (!String(req.headers["content-type"] ?? "").startsWith("application/x-amz-json-1.1")) {
      throw new KmsFault("SerializationException", "Content-Type must be application/x-amz-json-1.1");
    }
    const authorization = String(req.headers["authorization"] ?? "");
    const credential = /Credential=([^/]+)\//.exec(authorization);
    if (credential === null) throw new KmsFault("MissingAuthenticationTokenException", "Missing Authentication Token");
    if (!this.accessKeyIds.has(credential[1]!)) throw new KmsFault("UnrecognizedClientException", "The security token included in the request is invalid.");
    const operation = target.slice("TrentService.".length);
    let input: Record<string, unknown>;
    try {
      input = JSON.parse(body.length === 0 ? "{}" : body.toString("utf8")) as Record<string, unknown>;
    } catch {
      throw new KmsFault("SerializationException", "body is not JSON");
    }
    const keyId = input["KeyId"] ?? input["DestinationKeyId"];
    const context = input["EncryptionContext"] ?? input["SourceEncryptionContext"];
    if (this.requests.length >= REQUEST_LOG_MAX) this.requests.shift();
    this.requests.push({
      operation,
      ...(typeof keyId === "string" ? { keyId } : {}),
      ...(context !== undefined ? { encryptionContext: context as Record<string, string> } : {}),
    });
    if (this.failures !== undefined && this.failures.count > 0) {
      this.failures.count--;
      throw new KmsFault(this.failures.type, "injected failure", this.failures.status);
    }
    return this.operation(operation, input);
  }
}

function send(res: ServerResponse, status: number, body: object, errorType?: string): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/x-amz-json-1.1",
    "content-length": Buffer.byteLength(text),
    "x-amzn-requestid": randomUUID(),
    ...(errorType === undefined ? {} : { "x-amzn-errortype": `${errorType}:` }),
  });
  res.end(text);
}

/** The encryption context, canonical: keys sorted (KMS treats it as an unordered map). */
function contextBytes(context: unknown): Buffer {
  const map = (context ?? {}) as Record<string, string>;
  return Buffer.from(JSON.stringify(Object.keys(map).sort().map((k) => [k, map[k]])), "utf8");
}
