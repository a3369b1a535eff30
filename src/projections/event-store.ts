/**
 * The replicated event index (docs/design/events.md): stream versions, each event's stream and
 * version by position, and the outcomes of recent request ids, in one SQLite database
 * (`<data_dir>/state/events.sqlite`, better-sqlite3-multiple-ciphers; encrypted when
 * `[encryption]` is on, see sqlite-encryption.ts). Event bodies stay in the log; this maps
 * positions to streams and versions so reads can find them.
 *
 * Every decided batch is written together with the applied position in one transaction, so after
 * a crash the database is exactly the state after some applied position, and apply resumes after
 * it by replaying the log. SQLite runs in WAL mode with `synchronous = NORMAL`: a crash may lose
 * the last transactions (they are replayed from the fsync'd log), never tear one.
 *
 * Request ids are remembered for the last REQUEST_IDS_PER_TENANT_MAX decided batches of each
 * tenant, counted per tenant in log order, so every node forgets the same ones at the same point.
 */

import { mkdirSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3-multiple-ciphers";
import type { AtRestEncryption } from "../crypto/at-rest.js";
import { eventIndexFileIdentity } from "../crypto/encryption-context.js";
import { REQUEST_IDS_PER_TENANT_MAX } from "../limits.js";
import { CorruptionError, FailedPreconditionError, invariant } from "../errors.js";
import {
  checkKeyedDatabase, isSqliteCorruption, keyConnection, openDatabaseKey, removeDatabaseFiles, sqliteCorruptionError,
} from "./sqlite-encryption.js";
import type { BatchOutcome, Decision, EventStateView } from "./apply-events.js";

/** Forgotten request ids are deleted once this many more batches of their tenant were decided. */
const REQUEST_GC_EVERY = 1024;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS applied (id INTEGER PRIMARY KEY CHECK (id = 1), position INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS streams (
  tenant TEXT NOT NULL, stream TEXT NOT NULL, version INTEGER NOT NULL,
  PRIMARY KEY (tenant, stream)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
  tenant TEXT NOT NULL, position INTEGER NOT NULL, stream TEXT NOT NULL, version INTEGER NOT NULL, bytes INTEGER NOT NULL,
  PRIMARY KEY (tenant, position)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tenants (tenant TEXT PRIMARY KEY, created_at INTEGER NOT NULL, streams INTEGER NOT NULL, events INTEGER NOT NULL, bytes INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cluster_state (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tenant_commands (
  tenant TEXT NOT NULL, position INTEGER NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL,
  PRIMARY KEY (tenant, position)) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS events_by_stream ON events (tenant, stream, version);
CREATE TABLE IF NOT EXISTS tenant_batches (tenant TEXT PRIMARY KEY, decided INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS requests (
  tenant TEXT NOT NULL, request_id TEXT NOT NULL, seq INTEGER NOT NULL, outcome TEXT NOT NULL,
  PRIMARY KEY (tenant, request_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS requests_by_seq ON requests (tenant, seq);
`;

/** Where EventStore.open reports that it removed a plaintext index to rebuild it encrypted. */
export interface EventStoreLogger {
  warn(obj: object, msg: string): void;
}

function cannotOpen(path: string, e: unknown): FailedPreconditionError {
  const message = e instanceof Error ? e.message : String(e);
  return new FailedPreconditionError(
    `the event index ${path} cannot be opened (${message}). It is derived from the log: ` +
      "stop the node, move the state/ directory aside, and start it again to rebuild it",
    { cause: e },
  );
}

export interface IndexedEvent {
  readonly position: number;
  readonly stream: string;
  readonly version: number;
}

export interface TenantRow {
  readonly tenant: string;
  readonly createdAt: number;
  readonly streams: number;
  readonly events: number;
  readonly bytes: number;
}

export interface StreamSummary {
  readonly tenant: string;
  readonly streams: number;
  readonly events: number;
}

export class EventStore implements EventStateView {
  private readonly statements;
  private applied: number;

  private constructor(
    private readonly db: Database.Database,
    readonly path: string,
  ) {
    const s = (sql: string) => db.prepare(sql);
    this.statements = {
      applied: s("SELECT position FROM applied WHERE id = 1"),
      setApplied: s("INSERT INTO applied (id, position) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET position = excluded.position"),
      version: s("SELECT version FROM streams WHERE tenant = ? AND stream = ?").pluck(),
      setVersion: s("INSERT INTO streams (tenant, stream, version) VALUES (?, ?, ?) ON CONFLICT (tenant, stream) DO UPDATE SET version = excluded.version"),
      addEvent: s("INSERT INTO events (tenant, position, stream, version, bytes) VALUES (?, ?, ?, ?, ?)"),
      clusterValue: s("SELECT value FROM cluster_state WHERE key = ?").pluck(),
      setClusterValue: s("INSERT INTO cluster_state (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"),
      lastEventPosition: s("SELECT MAX(position) FROM events WHERE tenant = ?").pluck(),
      tenantExists: s("SELECT 1 FROM tenants WHERE tenant = ?").pluck(),
      addTenant: s("INSERT INTO tenants (tenant, created_at, streams, events, bytes) VALUES (?, ?, 0, 0, 0)"),
      countEvents: s("UPDATE tenants SET streams = streams + ?, events = events + ?, bytes = bytes + ? WHERE tenant = ?"),
      tenantRow: s("SELECT tenant, created_at AS createdAt, streams, events, bytes FROM tenants WHERE tenant = ?"),
      tenantRows: s("SELECT tenant, created_at AS createdAt, streams, events, bytes FROM tenants ORDER BY tenant"),
      addCommand: s("INSERT INTO tenant_commands (tenant, position, kind, body) VALUES (?, ?, ?, ?)"),
      commands: s("SELECT position, kind, body FROM tenant_commands WHERE tenant = ? AND position >= ? AND position <= ? ORDER BY position LIMIT ?"),
      tenantEventsUpTo: s("SELECT position, stream, version FROM events WHERE tenant = ? AND position >= ? AND position <= ? ORDER BY position LIMIT ?"),
      decided: s("SELECT decided FROM tenant_batches WHERE tenant = ?").pluck(),
      setDecided: s("INSERT INTO tenant_batches (tenant, decided) VALUES (?, ?) ON CONFLICT (tenant) DO UPDATE SET decided = excluded.decided"),
      outcome: s("SELECT seq, outcome FROM requests WHERE tenant = ? AND request_id = ?"),
      addOutcome: s("INSERT INTO requests (tenant, request_id, seq, outcome) VALUES (?, ?, ?, ?) ON CONFLICT (tenant, request_id) DO UPDATE SET seq = excluded.seq, outcome = excluded.outcome"),
      forget: s("DELETE FROM requests WHERE tenant = ? AND seq <= ?"),
      streamEvents: s("SELECT position, stream, version FROM events WHERE tenant = ? AND stream = ? AND version >= ? ORDER BY version LIMIT ?"),
      tenantEvents: s("SELECT position, stream, version FROM events WHERE tenant = ? AND position >= ? ORDER BY position LIMIT ?"),
      tenantStreamEvents: s("SELECT position, stream, version FROM events WHERE tenant = ? AND stream = ? AND position >= ? ORDER BY position LIMIT ?"),
      tenantCount: s("SELECT COUNT(*) FROM tenants").pluck(),
      tenants: s("SELECT tenant, COUNT(*) AS streams, SUM(version + 1) AS events FROM streams GROUP BY tenant ORDER BY tenant"),
    };
    const row = this.statements.applied.get() as { position: number } | undefined;
    this.applied = row?.position ?? 0;
  }

  /**
   * Opens (creating when new) the event index of the data directory `dataDir`. With `encryption`,
   * the database is encrypted with its own data key (sqlite-encryption.ts, identity `state/events`,
   * sidecar `state/events.key`); a plaintext index written before encryption was turned on is
   * removed and rebuilt, encrypted, from the log (the node applies the log again from its start).
   */
  static async open(dataDir: string, options: { encryption?: AtRestEncryption | undefined; logger?: EventStoreLogger | undefined } = {}): Promise<EventStore> {
    const dir = join(dataDir, "state");
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const path = join(dir, "events.sqlite");
    const display = "state/events.sqlite";
    let keying = await openDatabaseKey(path, display, options.encryption, eventIndexFileIdentity());
    if (keying.kind === "plaintext-existing") {
      options.logger?.warn({ file: display }, "encryption is on and the event index is plaintext: removing it; it is rebuilt, encrypted, from the log");
      removeDatabaseFiles(path);
      keying = await openDatabaseKey(path, display, options.encryption, eventIndexFileIdentity());
    }
    const key = keying.kind === "keyed" ? keying.key : undefined;
    let db: Database.Database;
    try {
      db = new Database(path);
    } catch (e) {
      key?.fill(0);
      throw cannotOpen(path, e);
    }
    try {
      if (key !== undefined) keyConnection(db, key);
      checkKeyedDatabase(db, display, key !== undefined);
      db.pragma("journal_mode = WAL");
      db.pragma("synchronous = NORMAL");
      db.exec(SCHEMA);
    } catch (e) {
      db.close();
      key?.fill(0);
      if (e instanceof CorruptionError) throw e;
      if (isSqliteCorruption(e)) throw sqliteCorruptionError(display, e, key !== undefined);
      throw cannotOpen(path, e);
    }
    key?.fill(0); // the connection holds its own copy
    return new EventStore(db, path);
  }

  /** Every log position up to this one is reflected here. */
  get appliedPosition(): number {
    return this.applied;
  }

  lastVersion(tenant: string, stream: string): number | undefined {
    const v = this.statements.version.get(tenant, stream) as number | undefined;
    return v ?? undefined;
  }

  outcome(tenant: string, requestId: string): BatchOutcome | undefined {
    const row = this.statements.outcome.get(tenant, requestId) as { seq: number; outcome: string } | undefined;
    if (row === undefined) return undefined;
    const decided = (this.statements.decided.get(tenant) as number | undefined) ?? 0;
    if (row.seq <= decided - REQUEST_IDS_PER_TENANT_MAX) return undefined;
    return JSON.parse(row.outcome) as BatchOutcome;
  }

  /**
   * Runs `body` (which feeds entries to the assembler and records its decisions with `record`)
   * and stores `appliedThrough()` in the same transaction.
   */
  transaction(body: () => void, appliedThrough: () => number): void {
    this.db.transaction(() => {
      body();
      const position = appliedThrough();
      invariant(position >= this.applied, `applied position ${position} below ${this.applied}`);
      if (position !== this.applied) this.statements.setApplied.run(position);
      this.applied = position;
    })();
  }

  /** Records one decision; call inside `transaction`. */
  record(decision: Decision): void {
    const st = this.statements;
    switch (decision.kind) {
      case "appended": {
        let bytes = 0;
        for (const e of decision.events) {
          st.addEvent.run(decision.tenant, e.position, decision.stream, e.version, e.data.length);
          bytes += e.data.length;
        }
        const newStream = decision.outcome.firstVersion === 0 ? 1 : 0;
        st.setVersion.run(decision.tenant, decision.stream, decision.outcome.lastVersion);
        st.countEvents.run(newStream, decision.events.length, bytes, decision.tenant);
        this.remember(decision.tenant, decision.requestId, decision.outcome);
        return;
      }
      case "rejected":
        this.remember(decision.tenant, decision.requestId, decision.outcome);
        return;
      case "duplicate":
      case "refused":
      case "void":
        return;
    }
  }

  private remember(tenant: string, requestId: string, outcome: BatchOutcome): void {
    if (requestId === "") return;
    const st = this.statements;
    const decided = ((st.decided.get(tenant) as number | undefined) ?? 0) + 1;
    st.setDecided.run(tenant, decided);
    st.addOutcome.run(tenant, requestId, decided, JSON.stringify(outcome));
    if (decided % REQUEST_GC_EVERY === 0) st.forget.run(tenant, decided - REQUEST_IDS_PER_TENANT_MAX);
  }

  /** Events of one stream from `fromVersion`, in version order. */
  streamEvents(tenant: string, stream: string, fromVersion: number, limit: number): IndexedEvent[] {
    return this.statements.streamEvents.all(tenant, stream, fromVersion, limit) as IndexedEvent[];
  }

  /** Events of a tenant (or of one of its streams) from `fromPosition`, in position order. */
  tenantEvents(tenant: string, fromPosition: number, limit: number, stream?: string): IndexedEvent[] {
    return (
      stream === undefined
        ? this.statements.tenantEvents.all(tenant, fromPosition, limit)
        : this.statements.tenantStreamEvents.all(tenant, stream, fromPosition, limit)
    ) as IndexedEvent[];
  }

  /** Per tenant: how many streams and events it has. */
  tenants(): StreamSummary[] {
    return this.statements.tenants.all() as StreamSummary[];
  }

  tenantExists(tenant: string): boolean {
    return this.statements.tenantExists.get(tenant) !== undefined;
  }

  /** Records a tenant created by the ADMIN entry at `position`; call inside `transaction`. */
  createTenant(tenant: string, position: number): void {
    this.statements.addTenant.run(tenant, position);
  }

  /** Records a schema or projection command of a tenant, for its projector; call inside `transaction`. */
  addCommand(tenant: string, position: number, kind: string, body: string): void {
    this.statements.addCommand.run(tenant, position, kind, body);
  }

  /** A tenant's commands with positions in [from, to], in order. */
  commands(tenant: string, from: number, to: number, limit: number): { position: number; kind: string; body: string }[] {
    return this.statements.commands.all(tenant, from, to, limit) as { position: number; kind: string; body: string }[];
  }

  /** A tenant's events with positions in [from, to], in order. */
  tenantEventsUpTo(tenant: string, from: number, to: number, limit: number): IndexedEvent[] {
    return this.statements.tenantEventsUpTo.all(tenant, from, to, limit) as IndexedEvent[];
  }

  /** The cluster's write freeze: undefined when writes are allowed, else its reason. */
  readOnly(): string | undefined {
    const v = this.statements.clusterValue.get("read_only") as string | undefined;
    if (v === undefined) return undefined;
    const o = JSON.parse(v) as { on: boolean; reason: string };
    return o.on ? o.reason : undefined;
  }

  /** Records the write freeze; call inside `transaction`. */
  setReadOnly(on: boolean, reason: string, position: number): void {
    this.statements.setClusterValue.run("read_only", JSON.stringify({ on, reason, position }));
  }

  /** The position of the tenant's last event (0 when it has none). */
  lastEventPosition(tenant: string): number {
    return (this.statements.lastEventPosition.get(tenant) as number | null) ?? 0;
  }

  tenant(tenant: string): TenantRow | undefined {
    return this.statements.tenantRow.get(tenant) as TenantRow | undefined;
  }

  tenantList(): TenantRow[] {
    return this.statements.tenantRows.all() as TenantRow[];
  }

  /** How many tenants exist. */
  tenantCount(): number {
    return this.statements.tenantCount.get() as number;
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}
