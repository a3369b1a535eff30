/**
 * The corrupt nemesis's damage to a stopped node's segment files (docs/log-format.md, "Recovery on
 * open"): bit flips in sealed segments, in segment headers and in a record of current.segment
 * that later records follow, and truncation of a sealed segment, all of which the node must
 * detect and refuse; and truncation of current.segment, which is indistinguishable from a torn
 * tail (or from a shorter log) and is cut or accepted by design.
 */

import { closeSync, existsSync, ftruncateSync, openSync, readdirSync, readSync, statSync, writeSync } from "node:fs";
import { join } from "node:path";
import { NodeFileSystem } from "../src/log/node-fs.js";
import { dumpLog } from "../src/log/offline.js";
import { CORRUPT_BIT_FLIPS_MAX } from "./constants.js";
import type { Rng } from "./rng.js";

export type DamageKind = "flip-sealed" | "flip-header" | "flip-current" | "truncate-sealed" | "truncate-current";
export const DAMAGE_KINDS: readonly DamageKind[] = ["flip-sealed", "flip-header", "flip-current", "truncate-sealed", "truncate-current"];

export interface Damage {
  kind: DamageKind;
  /** Relative to the data directory. */
  file: string;
  offset: number;
  /** Bits flipped (absolute bit numbers within the byte at each offset), or the cut. */
  flips?: Array<{ offset: number; bit: number }>;
  sizeBefore: number;
  sizeAfter: number;
  /** The node must refuse this (docs/log-format.md); a truncated current.segment it may cut as a torn tail. */
  mustDetect: boolean;
  /** The log index of the damaged record, when known. */
  index?: number;
}

const SEGMENT_HEADER_BYTES = 512;
/** Records of current.segment listed at most to pick one (a 1 MB segment holds far fewer). */
const RECORDS_LISTED_MAX = 200_000;
const SEALED = /^\d{8}\.segment$/;

function flip(path: string, offsets: number[], rng: Rng): Array<{ offset: number; bit: number }> {
  const fd = openSync(path, "r+");
  const flips: Array<{ offset: number; bit: number }> = [];
  try {
    for (const offset of offsets) {
      const b = Buffer.alloc(1);
      readSync(fd, b, 0, 1, offset);
      const bit = rng.int(8);
      b[0] = b[0]! ^ (1 << bit);
      writeSync(fd, b, 0, 1, offset);
      flips.push({ offset, bit });
    }
  } finally {
    closeSync(fd);
  }
  return flips;
}

/** One flip per byte: two flips of one byte could cancel out. */
function distinct(offsets: number[]): number[] {
  return [...new Set(offsets)];
}

function cut(path: string, size: number): void {
  const fd = openSync(path, "r+");
  try {
    ftruncateSync(fd, size);
  } finally {
    closeSync(fd);
  }
}

/** Records of current.segment: [offset, frame bytes, index]. */
async function currentRecords(logDir: string): Promise<Array<{ offset: number; end: number; index: number }>> {
  const out: Array<{ offset: number; end: number; index: number }> = [];
  for await (const item of dumpLog(new NodeFileSystem(), logDir, 0, Number.MAX_SAFE_INTEGER)) {
    if (!item.file.endsWith("current.segment")) continue;
    if (!("entry" in item)) break;
    const last = out[out.length - 1];
    if (last !== undefined) last.end = item.offset;
    out.push({ offset: item.offset, end: -1, index: item.entry.index });
    if (out.length >= RECORDS_LISTED_MAX) break;
  }
  return out;
}

/** Damages one segment file of the (stopped) node's data directory; undefined when nothing fits the kind. */
export async function damageSegments(dataDir: string, rng: Rng, kinds: readonly DamageKind[] = DAMAGE_KINDS): Promise<Damage | undefined> {
  const logDir = join(dataDir, "log");
  if (!existsSync(logDir)) return undefined;
  const names = readdirSync(logDir);
  const sealed = names.filter((n) => SEALED.test(n) && statSync(join(logDir, n)).size > SEGMENT_HEADER_BYTES);
  const hasCurrent = names.includes("current.segment");
  const records = hasCurrent ? await currentRecords(logDir) : [];
  const possible = kinds.filter((k) => {
    switch (k) {
      case "flip-sealed":
      case "truncate-sealed":
        return sealed.length > 0;
      case "flip-header":
        return sealed.length > 0 || hasCurrent;
      case "flip-current":
        return records.length >= 2;
      case "truncate-current":
        return records.length >= 1;
    }
  });
  if (possible.length === 0) return undefined;
  const kind = rng.pick(possible);
  const flips = 1 + rng.int(CORRUPT_BIT_FLIPS_MAX);
  switch (kind) {
    case "flip-sealed": {
      const name = rng.pick(sealed);
      const path = join(logDir, name);
      const size = statSync(path).size;
      const offset = SEGMENT_HEADER_BYTES + rng.int(size - SEGMENT_HEADER_BYTES);
      const offsets = distinct(Array.from({ length: flips }, (_, i) => Math.min(size - 1, offset + i * rng.int(64))));
      return { kind, file: `log/${name}`, offset, flips: flip(path, offsets, rng), sizeBefore: size, sizeAfter: size, mustDetect: true };
    }
    case "flip-header": {
      const name = rng.pick([...sealed, ...(hasCurrent ? ["current.segment"] : [])]);
      const path = join(logDir, name);
      const size = statSync(path).size;
      const offset = rng.int(SEGMENT_HEADER_BYTES);
      return { kind, file: `log/${name}`, offset, flips: flip(path, [offset], rng), sizeBefore: size, sizeAfter: size, mustDetect: true };
    }
    case "flip-current": {
      // A record that later records follow: its damage cannot pass for a torn tail.
      const r = records[rng.int(records.length - 1)]!;
      const path = join(logDir, "current.segment");
      const size = statSync(path).size;
      const offsets = distinct(Array.from({ length: flips }, () => r.offset + rng.int(r.end - r.offset)));
      return { kind, file: "log/current.segment", offset: r.offset, index: r.index, flips: flip(path, offsets, rng), sizeBefore: size, sizeAfter: size, mustDetect: true };
    }
    case "truncate-sealed": {
      const name = rng.pick(sealed);
      const path = join(logDir, name);
      const size = statSync(path).size;
      const to = SEGMENT_HEADER_BYTES + rng.int(size - SEGMENT_HEADER_BYTES);
      cut(path, to);
      return { kind, file: `log/${name}`, offset: to, sizeBefore: size, sizeAfter: to, mustDetect: true };
    }
    case "truncate-current": {
      const r = rng.pick(records);
      const path = join(logDir, "current.segment");
      const size = statSync(path).size;
      const to = r.offset + rng.int(Math.max(1, (r.end < 0 ? size : r.end) - r.offset));
      cut(path, to);
      return { kind, file: "log/current.segment", offset: to, index: r.index, sizeBefore: size, sizeAfter: to, mustDetect: false };
    }
  }
}
