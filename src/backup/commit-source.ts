/**
 * How far the log is committed, as the node whose data directory is backed up knows it. Only a
 * record at or below that node's own commit index is certainly the cluster's committed record at
 * that index: a follower's log can hold another leader's uncommitted records, at indexes the
 * cluster has since committed differently, until the leader's appends replace them. So the
 * commit index always comes from the node that owns the files, never from another member.
 *
 * Two sources:
 * - offline (the default; it needs only the data directory): the event index's applied position,
 *   `state/events.sqlite` table `applied`. The node applies only committed entries, and stores the
 *   position with every applied batch in one transaction, so it is a lower bound of the commit
 *   index, a few milliseconds behind it. An encrypted index needs the node's key provider (--config).
 * - the Admin API (`--node-endpoint` and the TLS flags): NodeStatus.commitIndex of that node,
 *   checked to be the node whose `meta/state.json` the data directory holds.
 *
 * The commit index of a node only grows while it runs, and the records at or below it never
 * change (a restart may report a lower one for a moment: still a lower bound). The caller reads
 * the commit index first and the segment after it, so every record it finds at or below the
 * commit index is committed.
 */

import { existsSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3-multiple-ciphers";
import { AdminApi, type ClientTlsFiles } from "../client/admin-client.js";
import type { AtRestEncryption } from "../crypto/at-rest.js";
import { eventIndexFileIdentity } from "../crypto/encryption-context.js";
import { isSqliteCorruption, keyConnection, keySidecarPath, openDatabaseKey, sqliteCorruptionError } from "../projections/sqlite-encryption.js";
import { ErrorCode, FailedPreconditionError, VerityError } from "../errors.js";

export interface CommitSource {
  /** For messages and the summary: "event index state/events.sqlite" or "admin API 127.0.0.1:7000". */
  readonly description: string;
  /** A lower bound of the commit index of the node that owns the data directory. */
  commitIndex(): Promise<number>;
}

/**
 * The applied position of `<dataDir>/state/events.sqlite`; 0 while the node has not created it. An
 * encrypted index (state/events.key beside it) needs `encryption` (the node's key provider from
 * `--config`); without it the error says to give --config or --node-endpoint.
 */
export async function eventIndexPosition(dataDir: string, encryption?: AtRestEncryption): Promise<number> {
  const path = join(dataDir, "state", "events.sqlite");
  if (!existsSync(path)) return 0;
  let key: Buffer | undefined;
  if (existsSync(keySidecarPath(path))) {
    if (encryption === undefined) {
      throw new FailedPreconditionError(
        `the event index ${path} is encrypted (state/events.key): give the node's config file (--config <file> with its [encryption] section) ` +
          "so its commit position can be read, or ask the running node with --node-endpoint (and the TLS flags)",
      );
    }
    const keying = await openDatabaseKey(path, "state/events.sqlite", encryption, eventIndexFileIdentity());
    if (keying.kind === "keyed") key = keying.key;
  }
  let db: Database.Database | undefined;
  try {
    db = new Database(path, { readonly: true, fileMustExist: true });
    if (key !== undefined) keyConnection(db, key);
    db.pragma("busy_timeout = 1000");
    const row = db.prepare("SELECT position FROM applied WHERE id = 1").get() as { position: number } | undefined;
    return row?.position ?? 0;
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    if (/no such table/.test(message)) return 0; // created, schema not written yet
    if (isSqliteCorruption(e)) throw sqliteCorruptionError(path, e, key !== undefined);
    throw new VerityError(ErrorCode.UNAVAILABLE, `cannot read the commit position from ${path}: ${message}; check that this user can read the node's data directory`, { cause: e });
  } finally {
    db?.close();
    key?.fill(0);
  }
}

export class EventIndexCommitSource implements CommitSource {
  readonly description: string;
  constructor(private readonly dataDir: string, private readonly encryption?: AtRestEncryption) {
    this.description = `event index ${join(dataDir, "state", "events.sqlite")} (applied position)`;
  }

  async commitIndex(): Promise<number> {
    return eventIndexPosition(this.dataDir, this.encryption);
  }
}

export class AdminCommitSource implements CommitSource {
  readonly description: string;
  private readonly api: AdminApi;

  constructor(
    private readonly endpoint: string,
    tls: ClientTlsFiles | undefined,
    /** The node id in the data directory's meta/state.json. */
    private readonly nodeId: number,
  ) {
    this.api = new AdminApi({ endpoints: [endpoint], tls });
    this.description = `admin API of node ${nodeId} at ${endpoint} (commit index)`;
  }

  async commitIndex(): Promise<number> {
    let response: Record<string, unknown>;
    try {
      response = (await this.api.call("nodeStatus", {})).response;
    } catch (e) {
      throw new VerityError(ErrorCode.UNAVAILABLE, `cannot ask ${this.endpoint} for its commit index: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
    }
    const id = Number(response.nodeId);
    if (id !== this.nodeId) {
      throw new FailedPreconditionError(
        `${this.endpoint} is node ${id}, but the data directory belongs to node ${this.nodeId}: give --node-endpoint the client address of the node whose log --source is (another node's commit index does not cover this node's log)`,
      );
    }
    const commit = Number(response.commitIndex ?? 0);
    if (!Number.isSafeInteger(commit) || commit < 0) throw new VerityError(ErrorCode.INTERNAL, `${this.endpoint} answered commit index ${String(response.commitIndex)}`);
    return commit;
  }
}
