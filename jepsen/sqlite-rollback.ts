/**
 * The SQLite half of lose-unsynced. The node's SQLite databases (state/events.sqlite, the event
 * index; projections/tenant_<id>/projections.sqlite) run in WAL mode with synchronous = NORMAL:
 * commits are not fsync'd, so a power loss may lose every transaction since the last checkpoint,
 * each database on its own. The node derives them from the log ("rebuilt from the log if lost").
 *
 * While a node runs, the harness takes a consistent copy of each database now and then
 * (`VACUUM INTO` on a read-only connection: one read transaction, so a state the database was
 * really in). After a lose-unsynced crash it may put an older copy back, database by database,
 * and remove the -wal and -shm files: the node must replay the log to catch up, and must cope with
 * its event index and its projections having lost different amounts. This can lose more than a
 * real power loss would (a copy may predate the last checkpoint), which the node must survive
 * too: it documents that these databases may be deleted outright.
 */

import Database from "better-sqlite3-multiple-ciphers";
import { copyFileSync, existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import type { Rng } from "./rng.js";

/** Chance that one database is rolled back to its copy at a crash. */
const ROLLBACK_PROBABILITY = 0.5;
/** Tenants' projection databases copied at most. */
const PROJECTION_DBS_MAX = 64;

/** The node's SQLite databases, relative to its data directory. */
export function sqliteDatabases(dataDir: string): string[] {
  const out: string[] = [];
  if (existsSync(join(dataDir, "state", "events.sqlite"))) out.push(join("state", "events.sqlite"));
  const projections = join(dataDir, "projections");
  if (existsSync(projections)) {
    for (const name of readdirSync(projections).slice(0, PROJECTION_DBS_MAX)) {
      if (existsSync(join(projections, name, "projections.sqlite"))) out.push(join("projections", name, "projections.sqlite"));
    }
  }
  return out;
}

/** Copies every database of a running node into `into` (each copy replaces the previous one). Returns the copies made. */
export function snapshotDatabases(dataDir: string, into: string): string[] {
  const made: string[] = [];
  for (const rel of sqliteDatabases(dataDir)) {
    const target = join(into, rel);
    mkdirSync(dirname(target), { recursive: true });
    const tmp = `${target}.tmp`;
    rmSync(tmp, { force: true });
    let db: Database.Database | undefined;
    try {
      db = new Database(join(dataDir, rel), { readonly: true, fileMustExist: true, timeout: 1_000 });
      db.prepare("VACUUM INTO ?").run(tmp);
      renameSync(tmp, target);
      made.push(rel);
    } catch {
      // Busy, or the node is just creating it: the next round tries again.
      rmSync(tmp, { force: true });
    } finally {
      db?.close();
    }
  }
  return made;
}

/** After a crash: puts back, with ROLLBACK_PROBABILITY each, the copies in `from`. Returns what was rolled back. */
export function rollBackDatabases(dataDir: string, from: string, rng: Rng): Array<{ database: string; copyBytes: number }> {
  const done: Array<{ database: string; copyBytes: number }> = [];
  if (!existsSync(from)) return done;
  for (const rel of sqliteDatabases(dataDir)) {
    const copy = join(from, rel);
    if (!existsSync(copy) || !rng.chance(ROLLBACK_PROBABILITY)) continue;
    const target = join(dataDir, rel);
    rmSync(`${target}-wal`, { force: true });
    rmSync(`${target}-shm`, { force: true });
    copyFileSync(copy, target);
    done.push({ database: relative(dataDir, target), copyBytes: statSync(copy).size });
  }
  return done;
}
