/**
 * What verity-backup and verity-restore share on the command line: the S3 flags, the Admin API
 * flags, `--json`, and error reporting with the exit codes of every VerityDB tool (0 ok, 1 failed
 * or refused, 2 bad usage).
 */

import { ErrorCode, VerityError } from "../errors.js";
import { ExitCode } from "../cli/common.js";
import { S3ObjectStore, parseS3Url, s3Client, type ObjectStore } from "./object-store.js";

export const s3Options = {
  endpoint: { type: "string", describe: "An S3-compatible store's URL (MinIO, Ceph, ...) instead of AWS S3" },
  "force-path-style": { type: "boolean", default: false, describe: "Address buckets as ENDPOINT/bucket/key (most S3-compatible stores need it)" },
  region: { type: "string", describe: "The bucket's region (default: AWS_REGION, the profile's, else us-east-1)" },
} as const;

export const tlsFlags = {
  "tls-ca": { type: "string", describe: "With --node-endpoint or --peers: CA certificate that signed the node's certificate" },
  "tls-cert": { type: "string", describe: "With --node-endpoint: client certificate with an identity in [security] admins" },
  "tls-key": { type: "string", describe: "With --node-endpoint: the client certificate's key" },
} as const;

export const jsonFlag = {
  json: { type: "boolean", default: false, describe: "Machine-readable output: JSON on stdout (errors as {\"error\": {\"code\", \"message\"}})" },
} as const;

/** Bad usage found after parsing: exit 2. */
export class BackupUsageError extends VerityError {
  constructor(message: string) {
    super(ErrorCode.INVALID_ARGUMENT, message);
  }
}

export interface S3Args {
  endpoint?: string;
  "force-path-style": boolean;
  region?: string;
}

/** The object store for an `s3://bucket/prefix/` location and the S3 flags. */
export function storeFor(url: string, a: S3Args): ObjectStore {
  let location;
  try {
    location = parseS3Url(url);
  } catch (e) {
    throw new BackupUsageError((e as Error).message);
  }
  if (a.endpoint !== undefined && !/^https?:\/\/[^/]+/.test(a.endpoint)) throw new BackupUsageError(`--endpoint "${a.endpoint}" is not an http:// or https:// URL`);
  return new S3ObjectStore(s3Client({ endpoint: a.endpoint, forcePathStyle: a["force-path-style"], region: a.region }), location);
}

/** The TLS files, all three or none. */
export function tlsFiles(a: { "tls-ca"?: string; "tls-cert"?: string; "tls-key"?: string }): { ca: string; cert: string; key: string } | undefined {
  if (a["tls-ca"] === undefined && a["tls-cert"] === undefined && a["tls-key"] === undefined) return undefined;
  if (a["tls-ca"] === undefined || a["tls-cert"] === undefined || a["tls-key"] === undefined) {
    throw new BackupUsageError("give --tls-ca, --tls-cert and --tls-key together (mutual TLS), or none of them for a plaintext loopback node");
  }
  return { ca: a["tls-ca"], cert: a["tls-cert"], key: a["tls-key"] };
}

/** Prints a failure (JSON on stdout with --json, a sentence on stderr otherwise) and returns the exit code. */
export function reportBackupFailure(tool: string, e: unknown, json: boolean): number {
  const usage = e instanceof BackupUsageError;
  const code = e instanceof VerityError ? e.code : ErrorCode.INTERNAL;
  const message = e instanceof VerityError ? e.message : `unexpected error (please report it): ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`;
  if (json) process.stdout.write(JSON.stringify({ error: { code, message } }) + "\n");
  else process.stderr.write(`${tool}: error: ${message}\n`);
  return usage ? ExitCode.USAGE : ExitCode.FAILED;
}

/** Runs a command body and sets the exit code. */
export async function runTool(tool: string, json: boolean, body: () => Promise<number>): Promise<void> {
  let code: number;
  try {
    code = await body();
  } catch (e) {
    code = reportBackupFailure(tool, e, json);
  }
  process.exitCode = code;
}

/** Milliseconds as "850 ms" or "12.3 s". */
export function formatMs(ms: number): string {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

/** Bytes per millisecond as MiB/s text. */
export function formatRate(bytes: number, ms: number): string {
  return ms <= 0 ? "-" : `${(bytes / (1024 * 1024) / (ms / 1000)).toFixed(1)} MiB/s`;
}
