/**
 * Projection definitions (`verity-admin projection create --file F.toml`) and their handlers.
 *
 * ```toml
 * name = "patients"
 * [[handlers]]
 * event_type = "PatientAdmitted"
 * sql = "INSERT INTO patients (id, name, ward) VALUES (:id, :name, :ward)"
 * ```
 *
 * `:x` binds field `x` of the event's JSON data (nested fields as `:a.b`); `:_stream`,
 * `:_version`, `:_position`, `:_type` and `:_timestamp` bind the event's own fields. SQLite
 * parameter names cannot hold dots, so each handler's SQL is rewritten once with numbered
 * parameters (`:p0`, `:p1`, ...) and a list saying what each one binds.
 */

import { parse as parseToml } from "smol-toml";
import { InvalidArgumentError } from "../errors.js";

/** Handlers per projection, at most. */
export const HANDLERS_PER_PROJECTION_MAX = 64;
/** Parameters per handler, at most. */
export const PARAMS_PER_HANDLER_MAX = 100;
/** Bytes of one handler's SQL, at most. */
export const HANDLER_SQL_BYTES_MAX = 64 * 1024;
/** Projection names: like tenant ids. */
export const PROJECTION_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

const EVENT_FIELDS = ["_stream", "_version", "_position", "_type", "_timestamp"] as const;
type EventField = (typeof EVENT_FIELDS)[number];

export interface ProjectionDefinition {
  readonly name: string;
  readonly handlers: readonly { readonly eventType: string; readonly sql: string }[];
}

export interface CompiledHandler {
  readonly eventType: string;
  /** The SQL with numbered parameters. */
  readonly sql: string;
  /** The table the statement writes (cleared by a rebuild). */
  readonly table: string;
  /** What `:p<i>` binds: an event field, or a path into the event's JSON data. */
  readonly params: readonly ({ readonly field: EventField } | { readonly path: readonly string[] })[];
}

/** The statements a handler may be, and the table each writes. */
const WRITE_TARGET = /^\s*(?:INSERT(?:\s+OR\s+(?:REPLACE|IGNORE|ABORT))?\s+INTO|REPLACE\s+INTO|UPDATE(?:\s+OR\s+(?:REPLACE|IGNORE|ABORT))?|DELETE\s+FROM)\s+(?:"([^"]+)"|([A-Za-z_][A-Za-z0-9_]*))/i;
const FORBIDDEN = /\b(ATTACH|DETACH|PRAGMA|VACUUM|load_extension)\b|\bOR\s+(ROLLBACK|FAIL)\b/i;

/** Parses and checks a projection file (TOML). Throws InvalidArgumentError naming the problem. */
export function parseProjectionToml(text: string): ProjectionDefinition {
  let raw: Record<string, unknown>;
  try {
    raw = parseToml(text) as Record<string, unknown>;
  } catch (e) {
    throw new InvalidArgumentError(`the projection file is not valid TOML: ${e instanceof Error ? e.message.split("\n")[0] : String(e)}`);
  }
  return checkDefinition(raw);
}

/** Checks a definition given as a plain object (TOML or the JSON stored in the log). */
export function checkDefinition(raw: Record<string, unknown>): ProjectionDefinition {
  for (const key of Object.keys(raw)) {
    if (key !== "name" && key !== "handlers") throw new InvalidArgumentError(`unknown key "${key}" in the projection file (keys: name, [[handlers]])`);
  }
  const name = raw.name;
  if (typeof name !== "string" || !PROJECTION_NAME.test(name)) {
    throw new InvalidArgumentError(`name must be 1 to 64 characters from A-Z a-z 0-9 _ . -, starting with a letter or digit (got ${JSON.stringify(name)})`);
  }
  const handlers = raw.handlers;
  if (!Array.isArray(handlers) || handlers.length === 0) throw new InvalidArgumentError("a projection needs at least one [[handlers]] table with event_type and sql");
  if (handlers.length > HANDLERS_PER_PROJECTION_MAX) throw new InvalidArgumentError(`${handlers.length} handlers, more than ${HANDLERS_PER_PROJECTION_MAX}`);
  const out = handlers.map((h: unknown, i) => {
    if (typeof h !== "object" || h === null) throw new InvalidArgumentError(`handlers[${i}] must be a table with event_type and sql`);
    const o = h as Record<string, unknown>;
    const eventType = o.event_type ?? o.eventType;
    if (typeof eventType !== "string" || eventType === "") throw new InvalidArgumentError(`handlers[${i}].event_type must be a non-empty string`);
    if (typeof o.sql !== "string" || o.sql.trim() === "") throw new InvalidArgumentError(`handlers[${i}].sql must be a non-empty string`);
    const handler = { eventType, sql: o.sql };
    compileHandler(handler, i);
    return handler;
  });
  return { name, handlers: out };
}

/** Rewrites a handler's parameters and finds its table; throws InvalidArgumentError when it is not a single INSERT, UPDATE, DELETE or REPLACE. */
export function compileHandler(h: { eventType: string; sql: string }, i = 0): CompiledHandler {
  const where = `handlers[${i}] (${h.eventType})`;
  if (Buffer.byteLength(h.sql) > HANDLER_SQL_BYTES_MAX) throw new InvalidArgumentError(`${where}: the SQL is longer than ${HANDLER_SQL_BYTES_MAX} bytes`);
  const target = WRITE_TARGET.exec(h.sql);
  if (target === null) throw new InvalidArgumentError(`${where}: a handler is one INSERT, UPDATE, DELETE or REPLACE statement`);
  if (FORBIDDEN.test(h.sql)) throw new InvalidArgumentError(`${where}: ATTACH, DETACH, PRAGMA, VACUUM, load_extension and OR ROLLBACK / OR FAIL are not allowed in handlers`);
  const params: CompiledHandler["params"][number][] = [];
  const names = new Map<string, string>();
  let sql = "";
  let i0 = 0;
  const text = h.sql;
  // Bounded by the SQL's length: every pass consumes at least one character.
  while (i0 < text.length) {
    const c = text[i0]!;
    if (c === "'" || c === '"') {
      // A quoted string or identifier: copied as is (doubled quotes escape).
      let j = i0 + 1;
      while (j < text.length && !(text[j] === c && text[j + 1] !== c)) j += text[j] === c ? 2 : 1;
      sql += text.slice(i0, j + 1);
      i0 = j + 1;
      continue;
    }
    const m = c === ":" ? /^:([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)/.exec(text.slice(i0)) : null;
    if (m === null) {
      if (c === ";" && text.slice(i0 + 1).trim() !== "") throw new InvalidArgumentError(`${where}: one statement per handler`);
      if (c !== ";") sql += c;
      i0++;
      continue;
    }
    const ref = m[1]!;
    let name = names.get(ref);
    if (name === undefined) {
      if (params.length >= PARAMS_PER_HANDLER_MAX) throw new InvalidArgumentError(`${where}: more than ${PARAMS_PER_HANDLER_MAX} parameters`);
      name = `p${params.length}`;
      names.set(ref, name);
      if (ref.startsWith("_")) {
        if (!(EVENT_FIELDS as readonly string[]).includes(ref)) {
          throw new InvalidArgumentError(`${where}: :${ref} is not an event field (${EVENT_FIELDS.map((f) => `:${f}`).join(", ")}); data fields do not start with _`);
        }
        params.push({ field: ref as EventField });
      } else {
        params.push({ path: ref.split(".") });
      }
    }
    sql += `:${name}`;
    i0 += m[0].length;
  }
  return { eventType: h.eventType, sql, table: target[1] ?? target[2]!, params };
}

export interface BindableEvent {
  readonly position: number;
  readonly stream: string;
  readonly version: number;
  readonly type: string;
  readonly timestampMs: number;
  /** The event's data parsed as JSON; undefined when it is not JSON. */
  readonly json: unknown;
}

function sqlValue(v: unknown): string | number | null {
  if (v === undefined || v === null) return null;
  if (typeof v === "number" || typeof v === "string") return v;
  if (typeof v === "boolean") return v ? 1 : 0;
  return JSON.stringify(v);
}

/** The named parameters of a compiled handler for one event. */
export function bindParams(h: CompiledHandler, e: BindableEvent): Record<string, string | number | null> {
  const out: Record<string, string | number | null> = {};
  h.params.forEach((p, i) => {
    if ("field" in p) {
      switch (p.field) {
        case "_stream":
          out[`p${i}`] = e.stream;
          return;
        case "_version":
          out[`p${i}`] = e.version;
          return;
        case "_position":
          out[`p${i}`] = e.position;
          return;
        case "_type":
          out[`p${i}`] = e.type;
          return;
        case "_timestamp":
          out[`p${i}`] = new Date(e.timestampMs).toISOString();
          return;
      }
    }
    let v: unknown = e.json;
    for (const key of p.path) v = typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>)[key] : undefined;
    out[`p${i}`] = sqlValue(v);
  });
  return out;
}

/** Checks a migration's SQL before it is proposed. */
export function checkMigrationSql(sql: string): void {
  if (sql.trim() === "") throw new InvalidArgumentError("the migration is empty");
  if (Buffer.byteLength(sql) > 1024 * 1024) throw new InvalidArgumentError("the migration is larger than 1 MiB");
  if (/\b(ATTACH|DETACH|PRAGMA|VACUUM|load_extension)\b/i.test(sql)) {
    throw new InvalidArgumentError("migrations may not ATTACH, DETACH, VACUUM, change a PRAGMA or load an extension: use CREATE / ALTER / DROP and data statements");
  }
  if (/\b_verity_/i.test(sql)) throw new InvalidArgumentError("names starting with _verity_ are reserved for VerityDB's own bookkeeping");
}
