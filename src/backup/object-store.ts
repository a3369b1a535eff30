/**
 * Where backups go: the object-store port (STYLE.md section 2) and its S3 adapter
 * (@aws-sdk/client-s3, with @aws-sdk/lib-storage for objects larger than one part).
 *
 * Locations are `s3://bucket/prefix/`. Credentials come from the AWS SDK's standard chain
 * (environment, shared config and credentials files and profiles, SSO, container and instance
 * roles); `--endpoint URL` and `--force-path-style` point it at an S3-compatible store.
 *
 * Every PUT of S3 is atomic: a reader sees the old object or the new one, never a mix, and an
 * upload that did not complete (a killed process, an aborted multipart upload) creates nothing.
 */

import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { Transform, type Readable } from "node:stream";
import {
  GetObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig,
} from "@aws-sdk/client-s3";
import { Upload } from "@aws-sdk/lib-storage";
import { ErrorCode, InvalidArgumentError, VerityError } from "../errors.js";
import { UPLOAD_PARTS_IN_FLIGHT_MAX, UPLOAD_PART_BYTES } from "./backup-limits.js";

/** An object as listed. */
export interface ListedObject {
  /** The key relative to the store's prefix. */
  readonly key: string;
  readonly bytes: number;
}

/**
 * A flat namespace of immutable-once-written objects under one prefix. Keys are relative to it.
 * Implementations throw `VerityError` with code UNAVAILABLE for a store that cannot be reached,
 * so callers can retry; a missing object is `undefined`, not an error.
 */
export interface ObjectStore {
  /** For messages: `s3://bucket/prefix/`. */
  readonly location: string;
  /** Uploads `bytes` bytes of the file at `path` and returns the SHA-256 (hex) of what was sent. */
  putFile(key: string, path: string, bytes: number, metadata: Record<string, string>, signal?: AbortSignal): Promise<string>;
  /** Replaces the object `key` with `body`, atomically. */
  putBytes(key: string, body: Uint8Array, contentType: string): Promise<void>;
  /** The object's bytes as a stream, or undefined when there is no such object. */
  get(key: string, signal?: AbortSignal): Promise<Readable | undefined>;
  /** Every object whose key starts with `prefix` (relative), in key order; at most `limit`. */
  list(prefix: string, limit: number): Promise<ListedObject[]>;
}

/** A parsed `s3://bucket/prefix/` location. */
export interface S3Location {
  readonly bucket: string;
  /** "" or a prefix ending in "/". */
  readonly prefix: string;
}

const BUCKET_NAME = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

/** Parses `s3://bucket/prefix/`; the prefix may be empty and gets a trailing "/" if it lacks one. */
export function parseS3Url(url: string): S3Location {
  const m = /^s3:\/\/([^/]+)\/?(.*)$/.exec(url);
  if (m === null) throw new InvalidArgumentError(`"${url}" is not an S3 location: write it as s3://bucket/prefix/`);
  const bucket = m[1]!;
  if (!BUCKET_NAME.test(bucket)) {
    throw new InvalidArgumentError(`"${bucket}" is not a valid bucket name (3 to 63 lower-case letters, digits, dots and hyphens)`);
  }
  let prefix = m[2]!;
  if (prefix !== "" && !prefix.endsWith("/")) prefix += "/";
  if (prefix.startsWith("/") || prefix.includes("//")) throw new InvalidArgumentError(`the prefix of "${url}" has an empty path part`);
  return { bucket, prefix };
}

/** How to reach S3 or an S3-compatible store. */
export interface S3Options {
  /** `--endpoint URL`: an S3-compatible store (MinIO, Ceph, s3rver) instead of AWS. */
  readonly endpoint?: string;
  /** `--force-path-style`: `endpoint/bucket/key` URLs instead of `bucket.endpoint/key`. */
  readonly forcePathStyle?: boolean;
  /** The region; default: the SDK's chain (AWS_REGION, the profile), else us-east-1. */
  readonly region?: string;
  /** Explicit credentials (tests); default: the SDK's standard chain. */
  readonly credentials?: { accessKeyId: string; secretAccessKey: string };
}

/** The region when neither the environment nor the profile names one (S3 answers with redirects otherwise). */
export const REGION_DEFAULT = "us-east-1";

export function s3Client(options: S3Options): S3Client {
  // This tool runs on Node 20 on purpose (package.json engines); the SDK's notice about its own future releases is noise here.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";
  const config: S3ClientConfig = {
    forcePathStyle: options.forcePathStyle === true,
    // Checksums only where S3 requires them: S3-compatible stores that do not know the newer
    // trailing-checksum framing would otherwise store streamed bodies with their chunk framing.
    // Every object's SHA-256 is checked end to end by the manifest instead.
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
  };
  if (options.endpoint !== undefined) config.endpoint = options.endpoint;
  const region = options.region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION;
  config.region = region ?? REGION_DEFAULT;
  if (options.credentials !== undefined) config.credentials = options.credentials;
  return new S3Client(config);
}

/** True for the SDK's "no such key" answer. */
function isMissing(e: unknown): boolean {
  const err = e as { name?: string; $metadata?: { httpStatusCode?: number } };
  return err.name === "NoSuchKey" || err.name === "NotFound" || err.$metadata?.httpStatusCode === 404;
}

/** An S3 failure as a VerityError that names the object and says what to check. */
export function storeError(location: string, what: string, e: unknown): VerityError {
  if (e instanceof VerityError) return e;
  const err = e as { name?: string; message?: string; $metadata?: { httpStatusCode?: number } };
  const status = err.$metadata?.httpStatusCode;
  const detail = `${err.name ?? "Error"}${status === undefined ? "" : ` (HTTP ${status})`}: ${err.message ?? String(e)}`;
  if (status === 403 || err.name === "AccessDenied" || err.name === "CredentialsProviderError") {
    return new VerityError(ErrorCode.PERMISSION_DENIED, `cannot ${what} ${location}: ${detail}; check the AWS credentials (environment, AWS_PROFILE) and the bucket policy`, { cause: e });
  }
  if (err.name === "NoSuchBucket") {
    return new VerityError(ErrorCode.NOT_FOUND, `cannot ${what} ${location}: the bucket does not exist; create it first`, { cause: e });
  }
  if (err.name === "AbortError") return new VerityError(ErrorCode.UNAVAILABLE, `${what} ${location} was stopped`, { cause: e });
  return new VerityError(ErrorCode.UNAVAILABLE, `cannot ${what} ${location}: ${detail}; check --endpoint, the network and the store`, { cause: e });
}

/** Hashes the bytes that pass through it. */
class HashingStream extends Transform {
  readonly hash = createHash("sha256");
  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: (e?: Error | null, data?: Buffer) => void): void {
    this.hash.update(chunk);
    done(null, chunk);
  }
}

export class S3ObjectStore implements ObjectStore {
  readonly location: string;

  constructor(
    private readonly client: S3Client,
    private readonly where: S3Location,
  ) {
    this.location = `s3://${where.bucket}/${where.prefix}`;
  }

  private key(relative: string): string {
    return this.where.prefix + relative;
  }

  async putFile(key: string, path: string, bytes: number, metadata: Record<string, string>, signal?: AbortSignal): Promise<string> {
    const hashing = new HashingStream();
    const file = createReadStream(path, { start: 0, end: bytes - 1, highWaterMark: 1024 * 1024 });
    file.on("error", (e) => hashing.destroy(e));
    file.pipe(hashing);
    const upload = new Upload({
      client: this.client,
      params: { Bucket: this.where.bucket, Key: this.key(key), Body: hashing, ContentLength: bytes, ContentType: "application/octet-stream", Metadata: metadata },
      partSize: UPLOAD_PART_BYTES,
      queueSize: UPLOAD_PARTS_IN_FLIGHT_MAX,
      leavePartsOnError: false,
    });
    const onAbort = (): void => void upload.abort().catch(() => {});
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      await upload.done();
    } catch (e) {
      file.destroy();
      throw storeError(`${this.location}${key}`, "upload", e);
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
    return hashing.hash.digest("hex");
  }

  async putBytes(key: string, body: Uint8Array, contentType: string): Promise<void> {
    try {
      await this.client.send(new PutObjectCommand({ Bucket: this.where.bucket, Key: this.key(key), Body: body, ContentType: contentType }));
    } catch (e) {
      throw storeError(`${this.location}${key}`, "write", e);
    }
  }

  async get(key: string, signal?: AbortSignal): Promise<Readable | undefined> {
    try {
      const r = await this.client.send(new GetObjectCommand({ Bucket: this.where.bucket, Key: this.key(key) }), { abortSignal: signal });
      return r.Body as Readable;
    } catch (e) {
      if (isMissing(e)) return undefined;
      throw storeError(`${this.location}${key}`, "read", e);
    }
  }

  async list(prefix: string, limit: number): Promise<ListedObject[]> {
    const out: ListedObject[] = [];
    let token: string | undefined;
    // Bounded by `limit`: every page adds its objects or ends the listing.
    do {
      let page;
      try {
        page = await this.client.send(new ListObjectsV2Command({ Bucket: this.where.bucket, Prefix: this.key(prefix), ContinuationToken: token }));
      } catch (e) {
        throw storeError(`${this.location}${prefix}`, "list", e);
      }
      for (const o of page.Contents ?? []) {
        if (out.length >= limit) return out;
        out.push({ key: (o.Key ?? "").slice(this.where.prefix.length), bytes: o.Size ?? 0 });
      }
      token = page.IsTruncated === true ? page.NextContinuationToken : undefined;
    } while (token !== undefined);
    return out;
  }
}

/** Reads a whole (small) object, refusing one larger than `bytesMax`; undefined when missing. */
export async function readSmallObject(store: ObjectStore, key: string, bytesMax: number): Promise<Buffer | undefined> {
  const body = await store.get(key);
  if (body === undefined) return undefined;
  const chunks: Buffer[] = [];
  let bytes = 0;
  try {
    for await (const chunk of body) {
      bytes += (chunk as Buffer).length;
      if (bytes > bytesMax) {
        body.destroy();
        throw new VerityError(ErrorCode.CORRUPTION, `${store.location}${key} is larger than ${bytesMax} bytes, more than any valid one: it is damaged or not a VerityDB object`);
      }
      chunks.push(chunk as Buffer);
    }
  } catch (e) {
    throw storeError(`${store.location}${key}`, "read", e);
  }
  return Buffer.concat(chunks);
}
