/**
 * One error vocabulary for all of VerityDB (STYLE.md section 5). Core code returns
 * `{ ok: false, code }` unions; adapters throw `VerityError` subclasses carrying a `code`;
 * one table maps each code to a gRPC status. Every message says what was wrong and what to do.
 */

export const ErrorCode = {
  /** The request is malformed or out of range; retrying it unchanged will fail again. */
  INVALID_ARGUMENT: "INVALID_ARGUMENT",
  /** A limit was hit (size, count, queue); the message names the limit and its value. */
  QUOTA_EXCEEDED: "QUOTA_EXCEEDED",
  /** Stored data failed a checksum or structural check; it is never served. */
  CORRUPTION: "CORRUPTION",
  /** The thing asked for does not exist. */
  NOT_FOUND: "NOT_FOUND",
  /** The thing to create exists already. */
  ALREADY_EXISTS: "ALREADY_EXISTS",
  /** The system is not in a state that allows the operation (wrong cluster, closed log, ...). */
  FAILED_PRECONDITION: "FAILED_PRECONDITION",
  /** An append's expected version did not match the stream's version when it was applied. */
  WRONG_EXPECTED_VERSION: "WRONG_EXPECTED_VERSION",
  /** This node is not the leader; the error carries a hint to the leader when known. */
  NOT_LEADER: "NOT_LEADER",
  /** Temporarily unable to serve; retry later. */
  UNAVAILABLE: "UNAVAILABLE",
  /** The operation ran out of its time limit (a query over `max_query_duration`). */
  DEADLINE_EXCEEDED: "DEADLINE_EXCEEDED",
  /** The caller is not allowed to do this. */
  PERMISSION_DENIED: "PERMISSION_DENIED",
  /** The operating system refused an I/O operation (permissions, disk full, EIO). */
  IO_ERROR: "IO_ERROR",
  /** A bug: an invariant did not hold. */
  INTERNAL: "INTERNAL",
} as const;

export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** gRPC status codes (from the gRPC spec), kept here so the mapping table has no dependency. */
export const GrpcStatus = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const;

/** The one table from error code to gRPC status. */
export const grpcStatusOf: Readonly<Record<ErrorCode, number>> = {
  INVALID_ARGUMENT: GrpcStatus.INVALID_ARGUMENT,
  QUOTA_EXCEEDED: GrpcStatus.RESOURCE_EXHAUSTED,
  CORRUPTION: GrpcStatus.DATA_LOSS,
  NOT_FOUND: GrpcStatus.NOT_FOUND,
  ALREADY_EXISTS: GrpcStatus.ALREADY_EXISTS,
  FAILED_PRECONDITION: GrpcStatus.FAILED_PRECONDITION,
  WRONG_EXPECTED_VERSION: GrpcStatus.FAILED_PRECONDITION,
  NOT_LEADER: GrpcStatus.UNAVAILABLE,
  UNAVAILABLE: GrpcStatus.UNAVAILABLE,
  DEADLINE_EXCEEDED: GrpcStatus.DEADLINE_EXCEEDED,
  PERMISSION_DENIED: GrpcStatus.PERMISSION_DENIED,
  IO_ERROR: GrpcStatus.UNAVAILABLE,
  INTERNAL: GrpcStatus.INTERNAL,
};

/** Result union used by core code instead of throwing. */
export type Result<T> = { ok: true; value: T } | { ok: false; code: ErrorCode; message: string };

/** Base class of every error VerityDB throws on purpose. `message` is for people. */
export class VerityError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

export class InvalidArgumentError extends VerityError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(ErrorCode.INVALID_ARGUMENT, message, options);
  }
}

/** A limit was exceeded. The message names the limit and its value. */
export class QuotaExceededError extends VerityError {
  readonly limit: string;
  readonly value: number;
  constructor(limit: string, value: number, message: string) {
    super(ErrorCode.QUOTA_EXCEEDED, message);
    this.limit = limit;
    this.value = value;
  }
}

/** Where damaged data was found, so an operator can look at the exact bytes. */
export interface CorruptionLocation {
  /** The file, relative to the data directory where possible. */
  file: string;
  /** Byte offset of the damaged record (or header) in that file. */
  offset: number;
  /** The log index the damaged record holds or should hold, when known. */
  index?: number;
}

/** Data failed a checksum or structural check. Never served; maps to gRPC DATA_LOSS. */
export class CorruptionError extends VerityError {
  readonly location: CorruptionLocation;
  constructor(location: CorruptionLocation, detail: string) {
    const at = `${location.file} at byte offset ${location.offset}` +
      (location.index === undefined ? "" : ` (log index ${location.index})`);
    super(
      ErrorCode.CORRUPTION,
      `corruption in ${at}: ${detail}. The node will not serve this range. ` +
        "Run `verity-admin log verify --data-dir <dir>` for a full report, then restore the node " +
        "from a backup or let it re-sync from healthy peers.",
    );
    this.location = location;
  }
}

export class FailedPreconditionError extends VerityError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(ErrorCode.FAILED_PRECONDITION, message, options);
  }
}

export class NotFoundError extends VerityError {
  constructor(message: string) {
    super(ErrorCode.NOT_FOUND, message);
  }
}

/** The operating system refused an I/O operation; the message says which file and what to check. */
export class IoError extends VerityError {
  readonly path: string;
  readonly syscallCode: string | undefined;
  constructor(path: string, operation: string, cause: unknown) {
    const sys = cause as NodeJS.ErrnoException | undefined;
    const code = sys?.code;
    const hint =
      code === "EACCES" || code === "EPERM"
        ? "check that the user running VerityDB owns the data directory and can write to it"
        : code === "ENOSPC" || code === "EDQUOT"
          ? "the disk is full: free space or move the data directory to a larger disk"
          : code === "EROFS"
            ? "the file system is mounted read-only"
            : code === "ENOENT"
              ? "the path does not exist: check the --data-dir setting"
              : code === "ENOTDIR"
                ? "a part of the path is a file, not a directory: check the --data-dir setting"
              : code === "EIO"
                ? "the disk reported a hardware error: check the kernel log (dmesg) and the disk's health"
                : "check the path and the disk";
    super(ErrorCode.IO_ERROR, `cannot ${operation} ${path}: ${code ?? String(cause)}; ${hint}`, { cause });
    this.path = path;
    this.syscallCode = code;
  }
}

/** Throws when an invariant does not hold: a programmer error, never bad input (STYLE.md section 4). */
export function invariant(condition: unknown, message: string): asserts condition {
  if (!condition) {
    throw new VerityError(ErrorCode.INTERNAL, `invariant violated: ${message}`);
  }
}

/** Ends every `switch` over a union (STYLE.md section 6). */
export function assertNever(value: never): never {
  throw new VerityError(ErrorCode.INTERNAL, `unexpected value: ${JSON.stringify(value)}`);
}
