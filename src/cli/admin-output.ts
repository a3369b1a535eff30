/**
 * How every verity-admin command reports to people and to scripts. With `--json` a command prints
 * exactly one JSON object on stdout: its result, or `{"error": {"code", "message"}}` when it could
 * not run. Exit codes (common.ts ExitCode): 0 ok, 1 a check failed or the operation was refused,
 * 2 bad usage. Error codes are the one vocabulary of src/errors.ts (ErrorCode).
 */

import { AdminCallError } from "../client/admin-client.js";
import { ErrorCode, GrpcStatus, VerityError } from "../errors.js";
import { ExitCode } from "./common.js";

export const ADMIN_NAME = "verity-admin";

/** Bad usage found after parsing (flags that only work together, a malformed value): exit 2. */
export class UsageError extends VerityError {
  constructor(message: string) {
    super(ErrorCode.INVALID_ARGUMENT, message);
  }
}

/** What a failure is, for the JSON error object and the exit code. */
export interface Failure {
  readonly code: ErrorCode;
  readonly message: string;
  readonly exitCode: number;
}

/** A gRPC status from the Admin API, as one of our error codes (the inverse of src/errors.ts grpcStatusOf). */
export function errorCodeOfGrpc(status: number): ErrorCode {
  switch (status) {
    case GrpcStatus.INVALID_ARGUMENT:
    case GrpcStatus.OUT_OF_RANGE:
      return ErrorCode.INVALID_ARGUMENT;
    case GrpcStatus.NOT_FOUND:
      return ErrorCode.NOT_FOUND;
    case GrpcStatus.ALREADY_EXISTS:
      return ErrorCode.ALREADY_EXISTS;
    case GrpcStatus.PERMISSION_DENIED:
    case GrpcStatus.UNAUTHENTICATED:
      return ErrorCode.PERMISSION_DENIED;
    case GrpcStatus.RESOURCE_EXHAUSTED:
      return ErrorCode.QUOTA_EXCEEDED;
    case GrpcStatus.FAILED_PRECONDITION:
    case GrpcStatus.ABORTED:
      return ErrorCode.FAILED_PRECONDITION;
    case GrpcStatus.UNAVAILABLE:
    case GrpcStatus.DEADLINE_EXCEEDED:
    case GrpcStatus.CANCELLED:
      return ErrorCode.UNAVAILABLE;
    case GrpcStatus.DATA_LOSS:
      return ErrorCode.CORRUPTION;
    default:
      return ErrorCode.INTERNAL;
  }
}

/** An Admin API failure's message, without grpc-js's empty "Resolution note: " trailers. */
export function callMessage(e: AdminCallError): string {
  return e.message.replace(/\.?\s*Resolution note:\s*(?=;|$)/g, "");
}

export function failureOf(e: unknown): Failure {
  if (e instanceof UsageError) return { code: e.code, message: e.message, exitCode: ExitCode.USAGE };
  if (e instanceof VerityError) return { code: e.code, message: e.message, exitCode: ExitCode.FAILED };
  if (e instanceof AdminCallError) return { code: errorCodeOfGrpc(e.code), message: callMessage(e), exitCode: ExitCode.FAILED };
  const message = e instanceof Error ? (e.stack ?? e.message) : String(e);
  return { code: ErrorCode.INTERNAL, message: `unexpected error (please report it): ${message}`, exitCode: ExitCode.FAILED };
}

/** Prints one JSON object on stdout, on one line. */
export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value) + "\n");
}

/** Reports a failure (JSON on stdout with --json, a sentence on stderr otherwise); returns the exit code. */
export function reportFailure(e: unknown, json: boolean): number {
  const failure = failureOf(e);
  if (json) printJson({ error: { code: failure.code, message: failure.message } });
  else process.stderr.write(`${ADMIN_NAME}: error: ${failure.message}\n`);
  return failure.exitCode;
}

/** Runs a command body and sets the exit code; whatever it throws is reported as `reportFailure` does. */
export async function runAdmin(json: boolean, body: () => Promise<number>): Promise<void> {
  let code: number;
  try {
    code = await body();
  } catch (e) {
    code = reportFailure(e, json);
  }
  process.exitCode = code;
}

/** Whether the raw command line asks for JSON (for errors found before the arguments are parsed). */
export function wantsJson(argv: readonly string[]): boolean {
  return argv.some((a) => a === "--json" || a === "--json=true");
}

/**
 * The yargs failure handler of verity-admin: bad usage exits 2, with `{"error": ...}` on stdout when
 * --json was asked for. An error thrown by a command body (never expected: bodies run in `runAdmin`)
 * is reported as an internal error, exit 1.
 */
export function usageFailure(argv: readonly string[]): (message: string | null, error: Error | undefined) => void {
  return (message, error) => {
    const json = wantsJson(argv);
    if ((message === null || message === "") && error !== undefined) {
      process.exitCode = reportFailure(error, json);
      return;
    }
    const text = message ?? error?.message ?? "bad usage";
    if (json) printJson({ error: { code: ErrorCode.INVALID_ARGUMENT, message: `${text}; run '${ADMIN_NAME} --help' for usage` } });
    else process.stderr.write(`${ADMIN_NAME}: ${text}\nRun '${ADMIN_NAME} --help' for usage.\n`);
    process.exit(ExitCode.USAGE);
  };
}
