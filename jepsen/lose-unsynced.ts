/**
 * The lose-unsynced nemesis's file surgery: after a node was killed with SIGKILL, make its data
 * directory look as if the machine had lost power at that moment.
 *
 * The node ran with the test-only durability journal (src/log/test-sync-journal.ts): one line per
 * durable write (O_DSYNC), fdatasync/fsync, rename and unlink. Starting from the file sizes
 * recorded when the incarnation started (`snapshotSizes`), replaying the journal gives, for every
 * file, how many of its first bytes were durable when the process died. Then, for every file of
 * the log and of meta/ (the files that go through the log's file-system port):
 *
 * - bytes past the durable size were in the page cache only: a random part of them is kept as a
 *   prefix (a torn write: nothing, some, or all of what the last write added), or, sometimes, all
 *   of them except one 512-byte sector that is zeroed (sectors reaching the disk out of order);
 * - a file never made durable since it was created (an index file written without fsync, a
 *   temporary file) keeps a random prefix, possibly nothing;
 * - files that are shorter than their durable size (a truncation that was not yet synced) are
 *   left alone: the cut bytes cannot be brought back.
 *
 * What this does not emulate (docs/jepsen.md): directory entries are durable once a rename or an
 * unlink returns (no lost renames); the SQLite files (state/, projections/), which the node
 * derives from the log and rebuilds on replay, keep what the page cache had, as after a process
 * crash; writes are assumed to be appends (the log never overwrites bytes in place).
 */

import { closeSync, existsSync, openSync, readdirSync, readFileSync, statSync, ftruncateSync, writeSync } from "node:fs";
import { join, resolve } from "node:path";
import type { Rng } from "./rng.js";

/** Absolute path -> size in bytes. */
export type FileSizes = Map<string, number>;

/** The sub-directories of a data directory whose files go through the log's file-system port. */
const JOURNALED_DIRS = ["log", "meta"];
/** Files in a directory, at most (a bound on the walk). */
const FILES_PER_DIR_MAX = 100_000;
/** Journal lines read at most. */
const JOURNAL_LINES_MAX = 10_000_000;
/** The torn-write granularity when a sector is lost. */
const SECTOR_BYTES = 512;
/** Chance that a torn write loses one sector in the middle instead of its end. */
const LOST_SECTOR_PROBABILITY = 0.25;

function journaledFiles(dataDir: string): string[] {
  const out: string[] = [];
  for (const sub of JOURNALED_DIRS) {
    const dir = join(dataDir, sub);
    if (!existsSync(dir)) continue;
    const names = readdirSync(dir);
    if (names.length > FILES_PER_DIR_MAX) throw new Error(`${dir} has ${names.length} files, more than ${FILES_PER_DIR_MAX}`);
    for (const name of names) {
      const path = resolve(dir, name);
      if (statSync(path).isFile()) out.push(path);
    }
  }
  return out;
}

/** The sizes of the journaled files now: what a new incarnation starts from (all of it durable). */
export function snapshotSizes(dataDir: string): FileSizes {
  return new Map(journaledFiles(dataDir).map((p) => [p, statSync(p).size]));
}

type JournalRecord = { op: "durable"; path: string; size: number } | { op: "rename"; from: string; to: string } | { op: "unlink"; path: string };

/** Replays a journal over the starting sizes: how many bytes of each file were durable at the end. */
export function durableSizes(baseline: FileSizes, journalText: string): FileSizes {
  const sizes = new Map(baseline);
  const lines = journalText.split("\n");
  if (lines.length > JOURNAL_LINES_MAX) throw new Error(`the durability journal has ${lines.length} lines, more than ${JOURNAL_LINES_MAX}`);
  for (const line of lines) {
    if (line === "") continue;
    let r: JournalRecord;
    try {
      r = JSON.parse(line) as JournalRecord;
    } catch {
      continue; // a line cut by the kill: the operation it records had not returned to its caller
    }
    switch (r.op) {
      case "durable":
        sizes.set(r.path, r.size);
        break;
      case "rename": {
        const size = sizes.get(r.from);
        sizes.delete(r.from);
        // A file renamed before any sync: none of it is known durable.
        sizes.set(r.to, size ?? 0);
        break;
      }
      case "unlink":
        sizes.delete(r.path);
        break;
    }
  }
  return sizes;
}

export interface FileCut {
  file: string;
  sizeBefore: number;
  durable: number;
  sizeAfter: number;
  /** "prefix": kept the first bytes of the unsynced part; "lost-sector": zeroed one sector in it. */
  how: "prefix" | "lost-sector";
}

/**
 * Cuts the journaled files of a killed node's data directory back to what was durable, tearing the
 * unsynced part at a random point. Returns what was changed.
 */
export function loseUnsynced(dataDir: string, baseline: FileSizes, journalPath: string, rng: Rng): FileCut[] {
  const journal = existsSync(journalPath) ? readFileSync(journalPath, "utf8") : "";
  const durable = durableSizes(baseline, journal);
  const cuts: FileCut[] = [];
  for (const file of journaledFiles(dataDir)) {
    const size = statSync(file).size;
    const safe = durable.get(file) ?? 0;
    if (size <= safe) continue;
    const unsynced = size - safe;
    const fd = openSync(file, "r+");
    try {
      const firstSector = Math.ceil(safe / SECTOR_BYTES);
      const lastSector = Math.floor(size / SECTOR_BYTES) - 1;
      if (lastSector >= firstSector && rng.next() < LOST_SECTOR_PROBABILITY) {
        const sector = firstSector + rng.int(lastSector - firstSector + 1);
        writeSync(fd, Buffer.alloc(SECTOR_BYTES), 0, SECTOR_BYTES, sector * SECTOR_BYTES);
        cuts.push({ file, sizeBefore: size, durable: safe, sizeAfter: size, how: "lost-sector" });
      } else {
        // Keep nothing, all, or anything between, with the ends a little more likely.
        const roll = rng.next();
        const kept = roll < 0.3 ? 0 : roll < 0.4 ? unsynced : rng.int(unsynced + 1);
        ftruncateSync(fd, safe + kept);
        cuts.push({ file, sizeBefore: size, durable: safe, sizeAfter: safe + kept, how: "prefix" });
      }
    } finally {
      closeSync(fd);
    }
  }
  return cuts;
}
