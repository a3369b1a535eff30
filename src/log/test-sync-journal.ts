/**
 * TEST ONLY: the durability journal that lets the jepsen-lite harness emulate a power loss
 * (docs/jepsen.md, "lose-unsynced"). Off unless the environment variable
 * VERITY_TEST_SYNC_JOURNAL names a file; production never sets it, and then `syncJournal` is
 * undefined and the file-system adapter does nothing extra.
 *
 * When on, the real file-system adapter (node-fs.ts) appends one JSON line to that file after each
 * operation that made bytes durable, before the operation resolves:
 *
 *   {"op":"durable","path":"/abs/log/current.segment","size":123456}   a write on an O_DSYNC handle
 *                                                                      returned, or fdatasync/fsync did
 *   {"op":"rename","from":"/abs/a.tmp","to":"/abs/a"}                  a rename returned
 *   {"op":"unlink","path":"/abs/a"}                                    an unlink returned
 *
 * The line is written synchronously (one `write` on an O_APPEND descriptor), so when the process is
 * killed the journal holds every durability point the process could have acted on. After SIGKILL,
 * the harness cuts each file back to its last journaled durable size, keeping a random part of
 * what was written after it (a torn write). Directory operations count as durable once they
 * return (the harness does not undo renames or unlinks): that is weaker than a real power loss,
 * and docs/jepsen.md says so.
 */

import { openSync, writeSync } from "node:fs";
import { resolve } from "node:path";

/** The environment variable that turns the journal on (a path to append to). */
export const SYNC_JOURNAL_ENV = "VERITY_TEST_SYNC_JOURNAL";

export interface SyncJournal {
  /** The first `size` bytes of `path` are durable. */
  durable(path: string, size: number): void;
  renamed(from: string, to: string): void;
  removed(path: string): void;
}

class FileSyncJournal implements SyncJournal {
  constructor(private readonly fd: number) {}

  private line(record: object): void {
    writeSync(this.fd, JSON.stringify(record) + "\n");
  }

  durable(path: string, size: number): void {
    this.line({ op: "durable", path: resolve(path), size });
  }

  renamed(from: string, to: string): void {
    this.line({ op: "rename", from: resolve(from), to: resolve(to) });
  }

  removed(path: string): void {
    this.line({ op: "unlink", path: resolve(path) });
  }
}

function openJournal(): SyncJournal | undefined {
  const path = process.env[SYNC_JOURNAL_ENV];
  if (path === undefined || path === "") return undefined;
  return new FileSyncJournal(openSync(path, "a"));
}

/** The journal, when VERITY_TEST_SYNC_JOURNAL is set; undefined otherwise (always in production). */
export const syncJournal: SyncJournal | undefined = openJournal();
