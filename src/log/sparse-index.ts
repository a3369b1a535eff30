/**
 * The sparse index of one segment (index -> byte offset, one entry per SPARSE_INDEX_INTERVAL_BYTES
 * of data at least) and the term runs of the log (the first index of each term), plus the on-disk
 * form of both for sealed segments (`NNNNNNNN.index`), which is verified and rebuilt when missing
 * or stale.
 */

import { crc32c } from "@node-rs/crc32";
import { SEGMENT_HEADER_BYTES, SPARSE_INDEX_INTERVAL_BYTES } from "../limits.js";
import { readU32, readU64, writeU64 } from "./record.js";
import type { LogIndex, Term } from "./types.js";

export class SparseIndex {
  /** Invariant: strictly increasing, and `offsets` too; same length. */
  private readonly indexes: number[] = [];
  private readonly offsets: number[] = [];

  /** Notes the record at `offset`; keeps it if it is the first or far enough past the last kept one. */
  note(index: number, offset: number): void {
    const n = this.offsets.length;
    if (n === 0 || offset - this.offsets[n - 1]! >= SPARSE_INDEX_INTERVAL_BYTES) {
      this.indexes.push(index);
      this.offsets.push(offset);
    }
  }

  /** The byte offset to start scanning from to find `index`: the greatest kept entry at or before it. */
  floorOffset(index: number): number {
    let lo = 0;
    let hi = this.indexes.length - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (this.indexes[mid]! <= index) {
        found = mid;
        lo = mid + 1;
      } else {
        hi = mid - 1;
      }
    }
    return found < 0 ? SEGMENT_HEADER_BYTES : this.offsets[found]!;
  }

  /** Forgets entries for `index` and later (after a suffix truncation). */
  truncateFrom(index: number): void {
    while (this.indexes.length > 0 && this.indexes[this.indexes.length - 1]! >= index) {
      this.indexes.pop();
      this.offsets.pop();
    }
  }

  get size(): number {
    return this.indexes.length;
  }

  entries(): Array<[number, number]> {
    return this.indexes.map((index, i) => [index, this.offsets[i]!]);
  }
}

/** One run of entries with the same term: every index from `firstIndex` up to the next run's start. */
export interface TermRun {
  firstIndex: LogIndex;
  term: Term;
}

/** Term of every index in the log, kept compactly: terms change rarely, so this stays tiny. */
export class TermRuns {
  /** Invariant: firstIndex strictly increasing, term strictly increasing. */
  private readonly runs: TermRun[] = [];

  /** Notes that `index` has `t`; indexes must be noted in increasing order. */
  note(index: LogIndex, t: Term): void {
    const last = this.runs[this.runs.length - 1];
    if (last === undefined || last.term !== t) this.runs.push({ firstIndex: index, term: t });
  }

  /** The term of `index`, or undefined if no run covers it (the caller checks the log's range). */
  termAt(index: number): Term | undefined {
    let lo = 0;
    let hi = this.runs.length - 1;
    let found: TermRun | undefined;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const run = this.runs[mid]!;
      if (run.firstIndex <= index) {
        found = run;
        lo = mid + 1;
      } else {
        hi = mid - 1;
      }
    }
    return found?.term;
  }

  truncateFrom(index: number): void {
    while (this.runs.length > 0 && this.runs[this.runs.length - 1]!.firstIndex >= index) this.runs.pop();
  }

  /** Runs whose first index lies in [from, to]. */
  runsBetween(from: number, to: number): TermRun[] {
    return this.runs.filter((r) => r.firstIndex >= from && r.firstIndex <= to);
  }

  get count(): number {
    return this.runs.length;
  }
}

// ---- The index file of a sealed segment. ----

const INDEX_MAGIC = Buffer.from("VRTYIDX\0", "latin1");
const INDEX_VERSION = 1;
const INDEX_FIXED_BYTES = 8 + 4 + 8 + 8 + 8 + 4 + 4 + 4;

/** What an index file claims about its segment; checked against the segment before it is trusted. */
export interface IndexFileContent {
  baseIndex: number;
  lastIndex: number;
  /** Size of the segment file the index was built from: a different size means the index is stale. */
  segmentBytes: number;
  /** CRC32C of the segment header, so an index cannot be paired with another segment. */
  headerCrc: number;
  entries: Array<[number, number]>;
  termRuns: TermRun[];
}

export function encodeIndexFile(content: IndexFileContent): Buffer {
  const bytes = INDEX_FIXED_BYTES + content.entries.length * 12 + content.termRuns.length * 16 + 4;
  const buf = Buffer.alloc(bytes);
  INDEX_MAGIC.copy(buf, 0);
  buf.writeUInt32LE(INDEX_VERSION, 8);
  writeU64(buf, content.baseIndex, 12);
  writeU64(buf, content.lastIndex, 20);
  writeU64(buf, content.segmentBytes, 28);
  buf.writeUInt32LE(content.headerCrc, 36);
  buf.writeUInt32LE(content.entries.length, 40);
  buf.writeUInt32LE(content.termRuns.length, 44);
  let off = INDEX_FIXED_BYTES;
  for (const [index, offset] of content.entries) {
    writeU64(buf, index, off);
    buf.writeUInt32LE(offset, off + 8);
    off += 12;
  }
  for (const run of content.termRuns) {
    writeU64(buf, run.firstIndex, off);
    writeU64(buf, run.term, off + 8);
    off += 16;
  }
  buf.writeUInt32LE(crc32c(buf.subarray(0, off)), off);
  return buf;
}

/** Decodes an index file, or returns undefined when it is damaged or of another version (then it is rebuilt). */
export function decodeIndexFile(buf: Uint8Array): IndexFileContent | undefined {
  if (buf.length < INDEX_FIXED_BYTES + 4) return undefined;
  const view = Buffer.from(buf.buffer, buf.byteOffset, buf.length);
  if (!view.subarray(0, 8).equals(INDEX_MAGIC) || view.readUInt32LE(8) !== INDEX_VERSION) return undefined;
  const entryCount = view.readUInt32LE(40);
  const runCount = view.readUInt32LE(44);
  const expected = INDEX_FIXED_BYTES + entryCount * 12 + runCount * 16 + 4;
  if (expected !== buf.length) return undefined;
  if (crc32c(view.subarray(0, buf.length - 4)) !== readU32(view, buf.length - 4)) return undefined;
  const entries: Array<[number, number]> = [];
  let off = INDEX_FIXED_BYTES;
  for (let i = 0; i < entryCount; i++, off += 12) entries.push([readU64(view, off), view.readUInt32LE(off + 8)]);
  const termRuns: TermRun[] = [];
  for (let i = 0; i < runCount; i++, off += 16) {
    termRuns.push({ firstIndex: readU64(view, off) as LogIndex, term: readU64(view, off + 8) as Term });
  }
  return {
    baseIndex: readU64(view, 12),
    lastIndex: readU64(view, 20),
    segmentBytes: readU64(view, 28),
    headerCrc: view.readUInt32LE(36),
    entries,
    termRuns,
  };
}
