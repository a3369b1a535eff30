/**
 * Projections: each tenant's SQL state, applied identically on every node.
 *
 * A tenant's projections live in one SQLite database, `projections/tenant_<id>/projections.sqlite`
 * (encrypted with its own data key when `[encryption]` is on: sqlite-encryption.ts).
 * The projector follows the event index (event-store.ts) behind Raft's apply, tenant by tenant, in
 * position order: events go to the handlers of every running projection, and the tenant's
 * commands (migrations, new projections, rebuilds) run at their positions. Each chunk of entries is
 * one SQLite transaction that also records the position it reaches, so a crash never applies an
 * event twice or skips one. It runs off the Raft loop (chunks, yielding between them), so a slow
 * projection never delays heartbeats or appends; LINEARIZABLE queries wait for it instead.
 *
 * Everything it decides depends only on the log and the database state the log produced, so every
 * node that reaches the same position has the same rows (`digest`):
 * - a migration runs in a savepoint: if any statement fails, none of it stays, on every node;
 * - a handler that fails on an event (a constraint, a missing table) stops its projection at that
 *   position, with the event and the error; other projections go on. A fix is a migration and a
 *   `projection rebuild`;
 * - a rebuild clears the tables the projection's handlers write and replays its events from its
 *   start, in chunks, then rejoins live processing.
 */

import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync } from "node:fs";
import { open as openFile } from "node:fs/promises";
import { basename, dirname, join, relative } from "node:path";
import Database from "better-sqlite3-multiple-ciphers";
import type { AtRestEncryption } from "../crypto/at-rest.js";
import { contextFor } from "../crypto/at-rest.js";
import { projectionFileIdentity } from "../crypto/encryption-context.js";
import { CorruptionError, ErrorCode, NotFoundError, VerityError, invariant } from "../errors.js";
import type { EventStore, IndexedEvent } from "./event-store.js";
import type { QueryPool, QueryRequest, QueryResult } from "./query-pool.js";
import { bindParams, checkDefinition, compileHandler, type CompiledHandler, type ProjectionDefinition } from "./projection-definition.js";
import {
  checkKeyedDatabase, copyRekeyed, isSqliteCorruption, keyConnection, keySidecarPath, keySidecarsOf, openDatabaseKey, removeDatabaseFiles, rewrapSidecar,
  sqliteCorruptionError, writeKeySidecar, type SqliteKey,
} from "./sqlite-encryption.js";

/** Entries a tenant's projector handles per transaction at most. */
export const PROJECTOR_CHUNK_ENTRIES = 1_000;
/** Waiters for a tenant's projections to reach a position, at most. */
export const PROJECTOR_WAITERS_MAX = 65_536;
/** Projections per tenant, at most. */
export const PROJECTIONS_PER_TENANT_MAX = 100;

/** An event with its body, as the projector needs it. */
export interface ProjectorEvent {
  readonly position: number;
  readonly stream: string;
  readonly version: number;
  readonly type: string;
  readonly data: Uint8Array;
  readonly timestampMs: number;
}

export interface ProjectorLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface ProjectorDeps {
  readonly store: EventStore;
  readonly dataDir: string;
  /** The bodies of indexed events, from the log; may return a prefix (a byte bound), never nothing for a non-empty input. */
  load(rows: readonly IndexedEvent[]): Promise<ProjectorEvent[]>;
  /** WAL checkpoint after this many entries (`projections.checkpoint_interval`). */
  readonly checkpointInterval: number;
  readonly logger?: ProjectorLogger;
  /** A tenant's projections reached `position`. */
  onProgress?(tenant: string, position: number): void;
  /** Apply no further than this position (a verification replay); default: the event index's applied position. */
  through?(): number;
  /**
   * At-rest encryption: each tenant's database is encrypted with its own data key (sqlite-encryption.ts),
   * and `projection rebuild` moves it to a new database with a new data key. Undefined: plaintext.
   */
  readonly encryption?: AtRestEncryption | undefined;
}

type ProjectionState = "running" | "rebuilding" | "failed";

interface Projection {
  readonly name: string;
  readonly definition: ProjectionDefinition;
  readonly handlers: ReadonlyMap<string, readonly CompiledHandler[]>;
  readonly tables: readonly string[];
  readonly startPosition: number;
  state: ProjectionState;
  /** The last position this projection has processed. */
  position: number;
  errorPosition: number;
  error: string;
}

export interface ProjectionStatus {
  name: string;
  state: ProjectionState;
  appliedPosition: number;
  lag: number;
  startPosition: number;
  eventTypes: string[];
  errorPosition: number;
  error: string;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS _verity_state (id INTEGER PRIMARY KEY CHECK (id = 1), applied_position INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS _verity_commands (position INTEGER PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL, outcome TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS _verity_projections (
  name TEXT PRIMARY KEY, definition TEXT NOT NULL, start_position INTEGER NOT NULL, state TEXT NOT NULL,
  position INTEGER NOT NULL, error_position INTEGER NOT NULL, error TEXT NOT NULL);
`;

function compile(definition: ProjectionDefinition, startPosition: number, row?: { state: string; position: number; error_position: number; error: string }): Projection {
  const handlers = new Map<string, CompiledHandler[]>();
  definition.handlers.forEach((h, i) => {
    const c = compileHandler(h, i);
    handlers.set(h.eventType, [...(handlers.get(h.eventType) ?? []), c]);
  });
  const tables = [...new Set([...handlers.values()].flat().map((h) => h.table))].sort();
  return {
    name: definition.name, definition, handlers, tables, startPosition,
    state: (row?.state ?? "running") as ProjectionState,
    position: row?.position ?? startPosition - 1,
    errorPosition: row?.error_position ?? 0,
    error: row?.error ?? "",
  };
}

function parseJson(data: Uint8Array): unknown {
  try {
    return JSON.parse(Buffer.from(data).toString("utf8")) as unknown;
  } catch {
    return undefined;
  }
}

const quoteId = (name: string): string => `"${name.replace(/"/g, '""')}"`;

/** One tenant's projections database and the projections defined in it. */
export class TenantProjections {
  readonly db: Database.Database;
  private applied: number;
  private readonly projections = new Map<string, Projection>();
  private readonly statements = new Map<string, Database.Statement>();
  private sinceCheckpoint = 0;
  /** Set when a rebuild command was applied: with encryption on, the Projector moves the database to a new data key. */
  rekeyWanted = false;

  /**
   * Opens (creating) the database at `path`. `key`: its raw data key when it is encrypted (see
   * openTenantDatabaseKey); the instance keeps it (for the query workers) and zeroes it on close.
   * A wrong key or a damaged page is a CorruptionError naming the file.
   */
  constructor(
    readonly tenant: string,
    readonly path: string,
    private readonly deps: ProjectorDeps,
    readonly key?: SqliteKey | undefined,
  ) {
    mkdirSync(join(path, ".."), { recursive: true, mode: 0o700 });
    this.db = new Database(path);
    try {
      if (key !== undefined) keyConnection(this.db, key);
      checkKeyedDatabase(this.db, path, key !== undefined);
      this.db.pragma("journal_mode = WAL");
      this.db.pragma("synchronous = NORMAL");
      this.db.exec(SCHEMA);
    } catch (e) {
      this.db.close();
      if (e instanceof CorruptionError) throw e;
      if (isSqliteCorruption(e)) throw sqliteCorruptionError(path, e, key !== undefined);
      throw e;
    }
    const row = this.db.prepare("SELECT applied_position FROM _verity_state WHERE id = 1").pluck().get() as number | undefined;
    this.applied = row ?? 0;
    const rows = this.db.prepare("SELECT * FROM _verity_projections ORDER BY name").all() as {
      name: string; definition: string; start_position: number; state: string; position: number; error_position: number; error: string;
    }[];
    for (const r of rows) this.projections.set(r.name, compile(checkDefinition(JSON.parse(r.definition) as Record<string, unknown>), r.start_position, r));
  }

  /** Every entry of this tenant up to here is applied to its projections. */
  get appliedPosition(): number {
    return this.applied;
  }

  get hasRebuilding(): boolean {
    return [...this.projections.values()].some((p) => p.state === "rebuilding");
  }

  /**
   * Applies the next chunk of the tenant's entries (at most PROJECTOR_CHUNK_ENTRIES events and as
   * many commands), then one chunk of any rebuild. Returns whether more work is waiting.
   */
  async step(): Promise<boolean> {
    try {
      return await this.stepUnmapped();
    } catch (e) {
      throw this.mapped(e);
    }
  }

  /** A SQLite corruption error (a wrong key, a tampered page) as a CorruptionError naming this database. */
  private mapped(e: unknown): unknown {
    return isSqliteCorruption(e) ? sqliteCorruptionError(this.path, e, this.key !== undefined) : e;
  }

  private async stepUnmapped(): Promise<boolean> {
    const store = this.deps.store;
    const through = Math.min(store.appliedPosition, this.deps.through?.() ?? Number.MAX_SAFE_INTEGER);
    let more = false;
    if (through > this.applied) {
      const from = this.applied + 1;
      const limit = PROJECTOR_CHUNK_ENTRIES;
      const rows = store.tenantEventsUpTo(this.tenant, from, through, limit);
      const commands = store.commands(this.tenant, from, through, limit);
      let end = through;
      if (rows.length === limit) end = Math.min(end, rows[rows.length - 1]!.position);
      if (commands.length === limit) end = Math.min(end, commands[commands.length - 1]!.position);
      let events: ProjectorEvent[] = [];
      const wanted = rows.filter((r) => r.position <= end);
      // Bodies are needed only when some projection could take them (or may start to, by a command).
      if (wanted.length > 0 && (commands.length > 0 || [...this.projections.values()].some((p) => p.state === "running"))) {
        events = await this.deps.load(wanted);
        invariant(events.length > 0, "load returns at least one event");
        if (events.length < wanted.length) end = Math.min(end, events[events.length - 1]!.position);
      }
      const live = commands.filter((c) => c.position <= end);
      this.applyChunk(events.filter((e) => e.position <= end), live, end);
      more = end < through;
    }
    if (this.hasRebuilding) more = (await this.rebuildStep()) || more;
    return more;
  }

  private applyChunk(events: readonly ProjectorEvent[], commands: readonly { position: number; kind: string; body: string }[], end: number): void {
    const db = this.db;
    db.transaction(() => {
      let c = 0;
      for (const e of events) {
        // Bounded by the chunk: commands before this event run first, in position order.
        while (c < commands.length && commands[c]!.position < e.position) this.runCommand(commands[c++]!);
        this.applyEvent(e, (p) => p.state === "running" && p.startPosition <= e.position);
      }
      while (c < commands.length) this.runCommand(commands[c++]!);
      for (const p of this.projections.values()) {
        if (p.state === "running") {
          p.position = end;
          this.saveProjection(p);
        }
      }
      db.prepare("INSERT INTO _verity_state (id, applied_position) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET applied_position = excluded.applied_position").run(end);
    })();
    this.sinceCheckpoint += events.length + commands.length;
    if (this.sinceCheckpoint >= this.deps.checkpointInterval) {
      db.pragma("wal_checkpoint(PASSIVE)");
      this.sinceCheckpoint = 0;
    }
    this.applied = end;
    this.deps.onProgress?.(this.tenant, end);
  }

  /** Runs the handlers of the selected projections for one event; a failing one stops its projection. */
  private applyEvent(e: ProjectorEvent, selected: (p: Projection) => boolean): void {
    let json: unknown;
    let parsed = false;
    for (const p of this.projections.values()) {
      if (!selected(p)) continue;
      const handlers = p.handlers.get(e.type);
      if (handlers === undefined) continue;
      if (!parsed) {
        json = parseJson(e.data);
        parsed = true;
      }
      const event = { position: e.position, stream: e.stream, version: e.version, type: e.type, timestampMs: e.timestampMs, json };
      // One statement is atomic by itself; several need a savepoint so a failure leaves none of them.
      const savepoint = handlers.length > 1;
      if (savepoint) this.db.exec("SAVEPOINT handler");
      try {
        for (const h of handlers) this.statement(p.name, h).run(bindParams(h, event));
        if (savepoint) this.db.exec("RELEASE handler");
      } catch (err) {
        if (savepoint) this.db.exec("ROLLBACK TO handler; RELEASE handler");
        p.state = "failed";
        p.position = e.position - 1;
        p.errorPosition = e.position;
        p.error = `event ${e.type} (stream ${e.stream}, version ${e.version}): ${err instanceof Error ? err.message : String(err)}`;
        this.saveProjection(p);
        this.deps.logger?.warn({ tenant: this.tenant, projection: p.name, position: e.position, error: p.error }, "a projection handler failed; the projection stopped at this event");
      }
    }
  }

  private statement(projection: string, h: CompiledHandler): Database.Statement {
    const key = `${projection}\u0000${h.eventType}\u0000${h.sql}`;
    let s = this.statements.get(key);
    if (s === undefined) {
      s = this.db.prepare(h.sql);
      this.statements.set(key, s);
    }
    return s;
  }

  private runCommand(c: { position: number; kind: string; body: string }): void {
    const body = JSON.parse(c.body) as Record<string, unknown>;
    const record = (name: string, outcome: string): void => {
      this.db.prepare("INSERT OR REPLACE INTO _verity_commands (position, kind, name, body, outcome) VALUES (?, ?, ?, ?, ?)").run(c.position, c.kind, name, c.body, outcome);
    };
    switch (c.kind) {
      case "migrate": {
        const name = String(body.name ?? "");
        this.db.exec("SAVEPOINT migration");
        try {
          this.db.exec(String(body.sql ?? ""));
          this.db.exec("RELEASE migration");
          this.statements.clear();
          record(name, "applied");
        } catch (err) {
          this.db.exec("ROLLBACK TO migration; RELEASE migration");
          record(name, `failed: ${err instanceof Error ? err.message : String(err)}`);
        }
        return;
      }
      case "createProjection": {
        let definition: ProjectionDefinition;
        try {
          definition = checkDefinition(JSON.parse(String(body.definitionJson ?? "")) as Record<string, unknown>);
        } catch (err) {
          record("", `failed: ${err instanceof Error ? err.message : String(err)}`);
          return;
        }
        if (this.projections.has(definition.name)) {
          record(definition.name, `failed: projection "${definition.name}" exists already`);
          return;
        }
        if (this.projections.size >= PROJECTIONS_PER_TENANT_MAX) {
          record(definition.name, `failed: the tenant has ${PROJECTIONS_PER_TENANT_MAX} projections, the most it may have`);
          return;
        }
        const fromStart = Boolean(body.fromStart);
        const p = compile(definition, fromStart ? 1 : c.position + 1);
        p.state = fromStart ? "rebuilding" : "running";
        p.position = fromStart ? 0 : c.position;
        this.projections.set(p.name, p);
        this.saveProjection(p);
        record(p.name, "applied");
        return;
      }
      case "rebuildProjection": {
        const name = String(body.name ?? "");
        const p = this.projections.get(name);
        if (p === undefined) {
          record(name, `failed: no projection "${name}"`);
          return;
        }
        for (const table of p.tables) {
          try {
            this.db.prepare(`DELETE FROM ${quoteId(table)}`).run();
          } catch {
            // A table that does not exist (yet) has nothing to clear; its handlers fail on replay if it is still missing.
          }
        }
        p.state = "rebuilding";
        p.position = p.startPosition - 1;
        p.errorPosition = 0;
        p.error = "";
        this.statements.clear();
        this.saveProjection(p);
        record(name, "applied");
        this.rekeyWanted = true;
        return;
      }
      default:
        record("", `failed: unknown command ${c.kind}`);
    }
  }

  /** One chunk of replay for each rebuilding projection, up to the tenant's applied position. */
  private async rebuildStep(): Promise<boolean> {
    let more = false;
    for (const p of [...this.projections.values()]) {
      if (p.state !== "rebuilding") continue;
      const from = p.position + 1;
      const rows = this.deps.store.tenantEventsUpTo(this.tenant, from, this.applied, PROJECTOR_CHUNK_ENTRIES).filter((r) => r.position <= this.applied);
      let end = this.applied;
      let events: ProjectorEvent[] = [];
      if (rows.length === PROJECTOR_CHUNK_ENTRIES) end = rows[rows.length - 1]!.position;
      if (rows.length > 0) {
        events = await this.deps.load(rows);
        if (events.length < rows.length) end = events[events.length - 1]!.position;
      }
      // The projection may have changed (a command) while the bodies were read.
      if (p.state !== "rebuilding" || p.position !== from - 1 || this.projections.get(p.name) !== p) {
        more = true;
        continue;
      }
      this.db.transaction(() => {
        for (const e of events) {
          if (e.position > end) break;
          this.applyEvent(e, (q) => q === p && q.state === "rebuilding");
          if (p.state !== "rebuilding") return;
        }
        p.position = end;
        if (end >= this.applied) {
          p.state = "running";
          this.deps.logger?.info({ tenant: this.tenant, projection: p.name, position: end }, "projection rebuilt; it follows new events again");
        }
        this.saveProjection(p);
      })();
      if (p.state === "rebuilding") more = true;
    }
    return more;
  }

  private saveProjection(p: Projection): void {
    this.db.prepare(
      "INSERT INTO _verity_projections (name, definition, start_position, state, position, error_position, error) VALUES (?, ?, ?, ?, ?, ?, ?) " +
        "ON CONFLICT (name) DO UPDATE SET state = excluded.state, position = excluded.position, error_position = excluded.error_position, error = excluded.error",
    ).run(p.name, JSON.stringify(p.definition), p.startPosition, p.state, p.position, p.errorPosition, p.error);
  }

  /** The outcome of the command at `position`, once applied here. */
  commandOutcome(position: number): string | undefined {
    return this.db.prepare("SELECT outcome FROM _verity_commands WHERE position = ?").pluck().get(position) as string | undefined;
  }

  status(lastEventPosition: number): ProjectionStatus[] {
    return [...this.projections.values()].map((p) => ({
      name: p.name, state: p.state, appliedPosition: p.position, lag: Math.max(0, lastEventPosition - p.position), startPosition: p.startPosition,
      eventTypes: [...p.handlers.keys()], errorPosition: p.errorPosition, error: p.error,
    }));
  }

  projectionNames(): string[] {
    return [...this.projections.keys()];
  }

  hasProjection(name: string): boolean {
    return this.projections.has(name);
  }

  /** User tables with their columns and row counts, and the migrations. */
  schema(): { tables: { name: string; columns: { name: string; type: string; notNull: boolean; primaryKey: boolean }[]; rows: number }[]; migrations: { position: number; name: string; sql: string; outcome: string }[] } {
    const tables = this.userTables().map((name) => {
      const columns = (this.db.prepare(`SELECT name, type, "notnull" AS nn, pk FROM pragma_table_info(?)`).all(name) as { name: string; type: string; nn: number; pk: number }[])
        .map((c) => ({ name: c.name, type: c.type, notNull: c.nn === 1, primaryKey: c.pk > 0 }));
      const rows = this.db.prepare(`SELECT COUNT(*) FROM ${quoteId(name)}`).pluck().get() as number;
      return { name, columns, rows };
    });
    const migrations = (this.db.prepare("SELECT position, name, body, outcome FROM _verity_commands WHERE kind = 'migrate' ORDER BY position").all() as { position: number; name: string; body: string; outcome: string }[])
      .map((m) => ({ position: m.position, name: m.name, sql: String((JSON.parse(m.body) as { sql?: string }).sql ?? ""), outcome: m.outcome }));
    return { tables, migrations };
  }

  private userTables(): string[] {
    return this.db.prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE '\\_verity\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name").pluck().all() as string[];
  }

  /**
   * SHA-256 over the schema, every user table's rows (ordered by all columns) and each
   * projection's state: equal on every node at the same applied position, and unchanged by a
   * rebuild (which replays to the same rows).
   */
  digest(): string {
    try {
      return this.digestUnmapped();
    } catch (e) {
      throw this.mapped(e);
    }
  }

  private digestUnmapped(): string {
    const h = createHash("sha256");
    for (const sql of this.db.prepare("SELECT sql FROM sqlite_schema WHERE name NOT LIKE '\\_verity\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND sql IS NOT NULL ORDER BY name").pluck().all() as string[]) {
      h.update(`schema ${sql}\n`);
    }
    for (const table of this.userTables()) {
      const columns = (this.db.prepare("SELECT COUNT(*) FROM pragma_table_info(?)").pluck().get(table) as number) || 1;
      const order = Array.from({ length: columns }, (_, i) => String(i + 1)).join(", ");
      h.update(`table ${table}\n`);
      for (const row of this.db.prepare(`SELECT * FROM ${quoteId(table)} ORDER BY ${order}`).raw(true).iterate()) {
        h.update(JSON.stringify(row, (_k, v: unknown) => (Buffer.isBuffer(v) ? v.toString("base64") : v)) + "\n");
      }
    }
    for (const p of this.projections.values()) h.update(`projection ${p.name} ${p.state} ${p.errorPosition} ${p.error}\n`);
    return h.digest("hex");
  }

  private digestCache: { key: string; digest: string } | undefined;

  /** `digest()`, computed again only when the applied position or a projection's state moved. */
  cachedDigest(): string {
    const key = JSON.stringify([this.applied, [...this.projections.values()].map((p) => [p.name, p.state, p.position, p.errorPosition])]);
    if (this.digestCache?.key !== key) this.digestCache = { key, digest: this.digest() };
    return this.digestCache.digest;
  }

  close(): void {
    if (this.db.open) this.db.close();
    this.key?.fill(0);
  }
}

/**
 * The key of a tenant's database at `path` (undefined: plaintext): unwrapped from its sidecar, or new.
 * With encryption on, a plaintext database written before encryption was turned on is removed, so the
 * projector rebuilds it, encrypted, from the log (the tenant's commands and events are all there).
 */
export async function openTenantDatabaseKey(
  tenant: string, path: string, display: string, encryption: AtRestEncryption | undefined, logger?: ProjectorLogger,
): Promise<SqliteKey | undefined> {
  let keying = await openDatabaseKey(path, display, encryption, projectionFileIdentity(tenant));
  if (keying.kind === "plaintext-existing") {
    logger?.warn({ tenant, file: display }, "encryption is on and this projections database is plaintext: removing it; it is rebuilt, encrypted, from the log");
    removeDatabaseFiles(path);
    keying = await openDatabaseKey(path, display, encryption, projectionFileIdentity(tenant));
  }
  return keying.kind === "keyed" ? keying.key : undefined;
}

/**
 * Suffixes of a tenant directory while `projection rebuild` moves it to a new data key. '~' is not
 * allowed in tenant ids, so these never name a tenant's own directory.
 */
const REKEY_NEW_SUFFIX = "~rekey-new";
const REKEY_OLD_SUFFIX = "~rekey-old";

/** True for a tenant's projections directory name (`tenant_<id>`), false for a rebuild's temporary copies. */
export function isTenantDirectoryName(name: string): boolean {
  return name.startsWith("tenant_") && !name.includes("~");
}

/**
 * Finishes or undoes a tenant directory swap a crash interrupted (see Projector.rekey): a directory
 * whose `tenant_<id>` is missing gets its old copy back; leftover copies are removed.
 */
export function recoverRekeyedDirectories(projectionsDir: string): void {
  if (!existsSync(projectionsDir)) return;
  for (const name of readdirSync(projectionsDir)) {
    const full = join(projectionsDir, name);
    if (name.endsWith(REKEY_OLD_SUFFIX)) {
      const live = full.slice(0, -REKEY_OLD_SUFFIX.length);
      if (existsSync(live)) rmSync(full, { recursive: true, force: true });
      else renameSync(full, live);
    } else if (name.endsWith(REKEY_NEW_SUFFIX)) {
      rmSync(full, { recursive: true, force: true });
    }
  }
}

async function syncDirectory(path: string): Promise<void> {
  const handle = await openFile(path, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Every tenant's projections on this node, applied in the background behind Raft's apply. */
export class Projector {
  private readonly tenants = new Map<string, TenantProjections>();
  private readonly dirty = new Set<string>();
  private running = false;
  private closed = false;
  private waiters: { tenant: string; position: number; resolve(ok: boolean): void; timer: NodeJS.Timeout }[] = [];
  /** Set when a tenant's projector failed unexpectedly (its database could not be written). */
  private readonly broken = new Map<string, string>();
  /** Tenants whose database is being opened (its key unwrapped or made): one open per tenant at a time. */
  private readonly opening = new Map<string, Promise<TenantProjections>>();
  /** Serialises what replaces key sidecars: a rebuild's move to a new key, and rotation's re-wrap. */
  private keyFiles: Promise<unknown> = Promise.resolve();

  private withKeyFiles<T>(body: () => Promise<T>): Promise<T> {
    const run = this.keyFiles.then(body, body);
    this.keyFiles = run.catch(() => {});
    return run;
  }

  /**
   * The re-wrap pass for `verity-admin encryption rotate` (DataDir.registerRewrap): the event
   * index's sidecar and every tenant's, each re-wrapped under the key's current version with
   * rewrapSidecar, one step per file. Serialised with a rebuild's move to a new data key, so a
   * rotation never writes an old sidecar over a new one.
   */
  async *rewrapKeySidecars(encryption: AtRestEncryption): AsyncIterable<{ file: string; rewrapped: boolean }> {
    const tenants = this.deps.store.tenantList().map((t) => t.tenant);
    // Bounded by limits.max_tenants + 1 files.
    for (const { path, fileIdentity } of keySidecarsOf(this.deps.dataDir, tenants)) {
      const outcome = await this.withKeyFiles(async () => (existsSync(path) ? rewrapSidecar(path, encryption.provider, contextFor(encryption, fileIdentity)) : "unchanged"));
      yield { file: relative(this.deps.dataDir, path), rewrapped: outcome === "rewrapped" };
    }
  }

  constructor(private readonly deps: ProjectorDeps) {
    recoverRekeyedDirectories(join(deps.dataDir, "projections"));
  }

  /** The directory of a tenant's projections. */
  pathOf(tenant: string): string {
    return join(this.deps.dataDir, "projections", `tenant_${tenant}`, "projections.sqlite");
  }

  /** Opens (creating, with its data key when encryption is on) a tenant's projections database; the tenant must exist. */
  async tenant(tenant: string): Promise<TenantProjections> {
    const open = this.tenants.get(tenant);
    if (open !== undefined) return open;
    if (!this.deps.store.tenantExists(tenant)) throw new NotFoundError(`tenant "${tenant}" does not exist: create it first (verity-admin tenant create --tenant ${tenant})`);
    let pending = this.opening.get(tenant);
    if (pending === undefined) {
      pending = this.openTenant(tenant).finally(() => this.opening.delete(tenant));
      this.opening.set(tenant, pending);
    }
    return pending;
  }

  private async openTenant(tenant: string): Promise<TenantProjections> {
    const path = this.pathOf(tenant);
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    const key = await openTenantDatabaseKey(tenant, path, `projections/tenant_${tenant}/projections.sqlite`, this.deps.encryption, this.deps.logger);
    if (this.closed) {
      key?.fill(0);
      throw new VerityError(ErrorCode.UNAVAILABLE, "the node is shutting down: retry on another node");
    }
    const t = new TenantProjections(tenant, path, this.deps, key);
    this.tenants.set(tenant, t);
    return t;
  }

  /**
   * Where a query of `tenant` reads: the database path and, when it is encrypted, a copy of its raw
   * key (sent to a query worker over its IPC channel, never in argv or the environment).
   */
  async queryTarget(tenant: string): Promise<{ dbPath: string; key: Buffer | undefined }> {
    const t = await this.tenant(tenant);
    return { dbPath: t.path, key: t.key === undefined ? undefined : Buffer.from(t.key) };
  }

  /**
   * Runs a query of `tenant` on `pool`, with the database's key when it is encrypted. A query that
   * raced a rebuild's move to a new data key (the worker opened the new file with the old key) is
   * run once more with the new key; any other CORRUPTION answer stands.
   */
  async query(pool: QueryPool, tenant: string, request: Omit<QueryRequest, "dbPath" | "key">): Promise<QueryResult> {
    const target = await this.queryTarget(tenant);
    try {
      return await pool.query({ ...request, ...target });
    } catch (e) {
      if (!(e instanceof VerityError) || e.code !== ErrorCode.CORRUPTION || target.key === undefined) throw e;
      const now = await this.queryTarget(tenant);
      if (now.key === undefined || now.key.equals(target.key)) throw e;
      return pool.query({ ...request, ...now });
    } finally {
      target.key?.fill(0);
    }
  }

  /**
   * After a `projection rebuild` with encryption on: moves the tenant's database to a new data key,
   * so a rebuild also retires the old key. A new key and its sidecar are made in
   * `tenant_<id>~rekey-new/`, the database is copied there (VACUUM INTO, a consistent image) and
   * re-keyed, in a worker thread (copyRekeyed); then the live database is closed and the directories
   * swapped (rename, rename, fsync). Runs inside the projector's loop, so nothing writes the database
   * meanwhile (the other tenants wait for the copy too). A crash leaves the
   * old directory or the new one in place (recoverRekeyedDirectories); both hold the same rows.
   */
  private async rekey(t: TenantProjections): Promise<void> {
    const encryption = this.deps.encryption;
    t.rekeyWanted = false;
    if (encryption === undefined || t.key === undefined || this.tenants.get(t.tenant) !== t) return;
    const dir = dirname(t.path);
    const next = dir + REKEY_NEW_SUFFIX;
    const old = dir + REKEY_OLD_SUFFIX;
    const nextPath = join(next, basename(t.path));
    rmSync(next, { recursive: true, force: true });
    mkdirSync(next, { mode: 0o700 });
    let newKey: Buffer | undefined;
    try {
      const generated = await encryption.provider.generateDataKey(contextFor(encryption, projectionFileIdentity(t.tenant)));
      newKey = generated.plaintext;
      await writeKeySidecar(keySidecarPath(nextPath), generated.keyId, generated.wrapped);
      if (this.closed || this.tenants.get(t.tenant) !== t) throw new VerityError(ErrorCode.UNAVAILABLE, "the projector closed or reopened the tenant meanwhile");
      await copyRekeyed(t.path, nextPath, t.key, newKey);
      if (this.closed || this.tenants.get(t.tenant) !== t) throw new VerityError(ErrorCode.UNAVAILABLE, "the projector closed or reopened the tenant meanwhile");
      await syncDirectory(next);
    } catch (e) {
      newKey?.fill(0);
      rmSync(next, { recursive: true, force: true });
      this.deps.logger?.error({ tenant: t.tenant, error: e instanceof Error ? e.message : String(e) },
        "the rebuild keeps the database's old data key: moving it to a new one failed (it is tried again at the next rebuild)");
      return;
    }
    // No await from here until the new database is open: nothing can use the tenant in between.
    t.close();
    this.tenants.delete(t.tenant);
    renameSync(dir, old);
    renameSync(next, dir);
    rmSync(old, { recursive: true, force: true });
    const reopened = new TenantProjections(t.tenant, t.path, this.deps, newKey);
    this.tenants.set(t.tenant, reopened);
    await syncDirectory(dirname(dir));
    this.deps.logger?.info({ tenant: t.tenant }, "projection rebuild: the tenant's projections database moved to a new data key");
  }

  /** Marks every tenant for a catch-up pass (at start). */
  wakeAll(): void {
    for (const t of this.deps.store.tenantList()) this.dirty.add(t.tenant);
    this.schedule();
  }

  /** New entries of `tenant` were applied. */
  wake(tenant: string): void {
    this.dirty.add(tenant);
    this.schedule();
  }

  private schedule(): void {
    if (this.running || this.closed || this.dirty.size === 0) return;
    this.running = true;
    setImmediate(() => {
      this.run().finally(() => {
        this.running = false;
        this.schedule();
      });
    });
  }

  private async run(): Promise<void> {
    // Bounded: each pass handles one chunk of one tenant; a tenant with more work goes to the back.
    while (this.dirty.size > 0 && !this.closed) {
      const tenant = this.dirty.values().next().value as string;
      this.dirty.delete(tenant);
      if (this.broken.has(tenant)) continue;
      try {
        const t = await this.tenant(tenant);
        if (await t.step()) this.dirty.add(tenant);
        if (t.rekeyWanted) await this.withKeyFiles(() => this.rekey(t));
        this.settle(await this.tenant(tenant));
      } catch (e) {
        const message = e instanceof Error ? e.message : String(e);
        this.broken.set(tenant, message);
        this.deps.logger?.error({ tenant, error: message }, "the tenant's projections cannot be applied on this node; queries of it fail until the node restarts");
        for (const w of this.waiters.filter((x) => x.tenant === tenant)) w.resolve(false);
        this.waiters = this.waiters.filter((x) => x.tenant !== tenant);
      }
      await new Promise<void>((r) => setImmediate(r));
    }
  }

  private settle(t: TenantProjections): void {
    if (this.waiters.length === 0) return;
    const due = this.waiters.filter((w) => w.tenant === t.tenant && t.appliedPosition >= w.position);
    if (due.length === 0) return;
    this.waiters = this.waiters.filter((w) => !due.includes(w));
    for (const w of due) {
      clearTimeout(w.timer);
      w.resolve(true);
    }
  }

  /** Resolves true once the tenant's projections are applied up to `position` (false after `timeoutMs`). */
  async waitProjected(tenant: string, position: number, timeoutMs: number): Promise<boolean> {
    const broken = this.broken.get(tenant);
    if (broken !== undefined) throw new VerityError(ErrorCode.UNAVAILABLE, `this node cannot apply tenant "${tenant}"'s projections (${broken}); use another node`);
    const t = await this.tenant(tenant);
    if (t.appliedPosition >= position) return Promise.resolve(true);
    if (this.waiters.length >= PROJECTOR_WAITERS_MAX) {
      throw new VerityError(ErrorCode.QUOTA_EXCEEDED, `${PROJECTOR_WAITERS_MAX} queries are waiting for projections on this node; retry shortly`);
    }
    this.wake(tenant);
    return new Promise<boolean>((resolve) => {
      const waiter = {
        tenant, position, resolve,
        timer: setTimeout(() => {
          this.waiters = this.waiters.filter((w) => w !== waiter);
          resolve(false);
        }, timeoutMs),
      };
      this.waiters.push(waiter);
    });
  }

  close(): void {
    this.closed = true;
    for (const w of this.waiters) {
      clearTimeout(w.timer);
      w.resolve(false);
    }
    this.waiters = [];
    for (const t of this.tenants.values()) t.close();
    this.tenants.clear();
  }
}
