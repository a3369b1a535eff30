/** Shared helpers for log tests: deterministic payloads, quick appends, temp dirs. */

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createHash } from "node:crypto";
import type { AppendEntry, SegmentedLog } from "../../src/log/segmented-log.js";
import { RecordKind } from "../../src/log/types.js";

export const CLUSTER_ID = Buffer.from("0123456789abcdef0123456789abcdef", "hex");

/** A payload that depends only on the index and a size, so a reader can check it byte for byte. */
export function payloadFor(index: number, size = 32 + (index % 200)): Buffer {
  const out = Buffer.alloc(size);
  let block = createHash("sha256").update(`payload-${index}`).digest();
  for (let off = 0; off < size; off += block.length) {
    block.copy(out, off, 0, Math.min(block.length, size - off));
    block = createHash("sha256").update(block).digest();
  }
  return out;
}

export function entryFor(index: number, entryTerm = 1, size?: number): AppendEntry {
  return { term: entryTerm, index, kind: RecordKind.EVENTS, tenant: index % 3 === 0 ? "" : `tenant-${index % 7}`, payload: payloadFor(index, size) };
}

/** Appends `count` entries one call each, all concurrently (so they group-commit). */
export async function appendMany(log: SegmentedLog, count: number, entryTerm = 1, size?: number): Promise<void> {
  const calls: Promise<void>[] = [];
  for (let i = 0; i < count; i++) calls.push(log.append([entryFor(log.nextIndex, entryTerm, size)]));
  await Promise.all(calls);
}

export function tempDir(prefix: string): { path: string; cleanup: () => void } {
  const path = mkdtempSync(join(tmpdir(), `verity-${prefix}-`));
  return { path, cleanup: () => rmSync(path, { recursive: true, force: true }) };
}

/** Seeded PRNG for tests (mulberry32). */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
