/**
 * What the tenant, schema and projection commands of verity-admin share: the Admin API's messages
 * as the CLI reads them (proto/verity/v1/admin.proto; 64-bit positions arrive as numbers, below
 * 2^53), the `--tenant` option, and reading a file given on the command line. A file that cannot
 * be read, or whose contents cannot be sent, is bad usage (exit 2): nothing was asked of the cluster.
 */

import { readFileSync, statSync } from "node:fs";
import { VerityError } from "../errors.js";
import { TENANT_ID_PATTERN } from "../server/setting-kinds.js";
import { UsageError } from "./admin-output.js";

/**
 * Bytes of a migration or projection file, at most. The server refuses a migration over 1 MiB
 * (src/projections/projection-definition.ts checkMigrationSql); a projection file holds at most 64
 * handlers of 64 KiB of SQL each, so 4 MiB plus its TOML keys fits in this bound too.
 */
export const ARGUMENT_FILE_BYTES_MAX = 8 * 1024 * 1024;

/** CreateTenant, Migrate, CreateProjection, RebuildProjection: the position the command was applied at. */
export interface CommandResponse {
  position: number;
  message: string;
}

/** ShowTenant and each row of ListTenants. */
export interface TenantInfo {
  tenant: string;
  /** Position of the entry that created the tenant. */
  createdAt: number;
  streams: number;
  events: number;
  /** Payload bytes of the tenant's events. */
  bytes: number;
  projections: string[];
  /** Position up to which the answering node has applied the tenant's projections. */
  appliedPosition: number;
}

export interface ColumnInfo {
  name: string;
  /** The declared SQLite type ("" when none was declared). */
  type: string;
  notNull: boolean;
  primaryKey: boolean;
}

export interface TableInfo {
  name: string;
  columns: ColumnInfo[];
  rows: number;
}

export interface MigrationInfo {
  position: number;
  name: string;
  sql: string;
  /** "applied" or "failed: <error>". */
  outcome: string;
}

export interface SchemaInfo {
  tenant: string;
  tables: TableInfo[];
  migrations: MigrationInfo[];
  appliedPosition: number;
}

export type ProjectionState = "running" | "rebuilding" | "failed";

export interface ProjectionInfo {
  name: string;
  state: ProjectionState;
  /** The last position the projection has processed. */
  appliedPosition: number;
  /** The tenant's last event position minus appliedPosition, when behind. */
  lag: number;
  /** The first position it applies (1 for a projection created --from-start). */
  startPosition: number;
  eventTypes: string[];
  /** When failed: the position of the event its handler failed on (0 otherwise). */
  errorPosition: number;
  /** When failed: the event's type, stream and version, and the SQL error. */
  error: string;
}

export interface ProjectionStatusResponse {
  tenant: string;
  projections: ProjectionInfo[];
  /** Position up to which the answering node has applied the tenant. */
  appliedPosition: number;
  /** The answering node's commit index. */
  commitIndex: number;
  /** SHA-256 of the tenant's database: equal on every node at the same applied position. */
  digest: string;
}

export const tenantOption = {
  tenant: { type: "string", demandOption: true, describe: "The tenant id (1 to 64 characters from A-Z a-z 0-9 _ . -)" },
} as const;

/** Refuses a malformed tenant id before anything is sent (yargs `.check`). */
export function checkTenantArgument(a: { tenant?: unknown }): true {
  const tenant = String(a.tenant ?? "");
  if (!TENANT_ID_PATTERN.test(tenant)) {
    throw new Error(`--tenant "${tenant}" is not a tenant id: 1 to 64 characters from A-Z a-z 0-9 _ . -, starting with a letter or digit`);
  }
  return true;
}

/** The UTF-8 text of a file named by `flag`; a file that is missing, unreadable, empty or too large is bad usage. */
export function readArgumentFile(path: string, flag: string): string {
  let bytes: number;
  try {
    const stat = statSync(path);
    if (!stat.isFile()) throw new UsageError(`${flag} ${path} is not a file: give the path of the file to send`);
    bytes = stat.size;
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError(`cannot read ${flag} ${path}: ${reasonOf(e)}`);
  }
  if (bytes > ARGUMENT_FILE_BYTES_MAX) throw new UsageError(`${flag} ${path} has ${bytes} bytes, more than ${ARGUMENT_FILE_BYTES_MAX}: is it the right file?`);
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw new UsageError(`cannot read ${flag} ${path}: ${reasonOf(e)}`);
  }
  if (text.trim() === "") throw new UsageError(`${flag} ${path} is empty: nothing to send`);
  return text;
}

/** Runs a local check of a file's contents (the server runs the same one); its refusal is bad usage naming the file. */
export function checkArgumentFile<T>(path: string, flag: string, check: () => T): T {
  try {
    return check();
  } catch (e) {
    if (e instanceof VerityError) throw new UsageError(`${flag} ${path}: ${e.message}`);
    throw e;
  }
}

function reasonOf(e: unknown): string {
  const code = (e as NodeJS.ErrnoException).code;
  switch (code) {
    case "ENOENT":
      return "no such file (check the path)";
    case "EACCES":
    case "EPERM":
      return "permission denied (check the file's owner and mode)";
    case "EISDIR":
      return "it is a directory, not a file";
    default:
      return e instanceof Error ? e.message : String(e);
  }
}
