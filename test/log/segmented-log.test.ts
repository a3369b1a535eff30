import { afterEach, beforeAll, describe, expect, it } from "vitest";
import type { AtRestEncryption } from "../../src/crypto/at-rest.js";
import { LOG_VARIANTS, encryptionFor, segmentFrames } from "../helpers/log-encryption.js";
import { MemoryFileSystem } from "../../src/log/memory-fs.js";
import { NodeFileSystem } from "../../src/log/node-fs.js";
import { SegmentedLog, type SegmentedLogOptions } from "../../src/log/segmented-log.js";
import { CorruptionError, FailedPreconditionError, InvalidArgumentError, QuotaExceededError, VerityError } from "../../src/errors.js";
import { SEGMENT_BYTES_MIN, SEGMENT_HEADER_BYTES } from "../../src/limits.js";
import { CLUSTER_ID, appendMany, entryFor, payloadFor, tempDir } from "../helpers/log-fixtures.js";
import { readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const DIR = "/data/log";

/** The encryption of the variant whose tests are running (every suite runs plaintext, then encrypted). */
let encryption: () => AtRestEncryption | undefined = () => undefined;

/** Sets `encryption` for the tests of one `describe.each(LOG_VARIANTS)` block. */
function useVariant(variant: (typeof LOG_VARIANTS)[number]): void {
  const get = encryptionFor(variant);
  beforeAll(() => {
    encryption = get;
  });
}

function memOptions(fs: MemoryFileSystem, extra: Partial<SegmentedLogOptions> = {}): SegmentedLogOptions {
  return { dir: DIR, fs, clusterId: CLUSTER_ID, segmentBytes: SEGMENT_BYTES_MIN, encryption: encryption(), ...extra };
}

async function expectContent(log: SegmentedLog, from: number, to: number, size?: (index: number) => number | undefined): Promise<void> {
  const entries = await log.read(from, to + 1);
  expect(entries.length).toBe(to - from + 1);
  for (const [i, e] of entries.entries()) {
    const index = from + i;
    expect(e.index).toBe(index);
    expect(Buffer.from(e.payload).equals(payloadFor(index, size?.(index)))).toBe(true);
    expect(e.tenant).toBe(entryFor(index).tenant);
  }
}

describe.each(LOG_VARIANTS)("SegmentedLog on the in-memory file system (%s)", (variant) => {
  useVariant(variant);
  it("starts empty, appends, reads back, and reopens with the same content", async () => {
    const fs = new MemoryFileSystem();
    let log = await SegmentedLog.open(memOptions(fs));
    expect(log.firstIndex).toBe(1);
    expect(log.lastIndex).toBe(0);
    expect(log.termAt(0)).toBe(0);
    await appendMany(log, 50, 1);
    await appendMany(log, 50, 3);
    expect(log.lastIndex).toBe(100);
    expect(log.lastTerm).toBe(3);
    expect(log.termAt(50)).toBe(1);
    expect(log.termAt(51)).toBe(3);
    expect(log.termAt(101)).toBeUndefined();
    await expectContent(log, 1, 100);
    await expectContent(log, 37, 61);
    await log.close();
    log = await SegmentedLog.open(memOptions(fs));
    expect(log.lastIndex).toBe(100);
    expect(log.termAt(50)).toBe(1);
    expect(log.termAt(51)).toBe(3);
    await expectContent(log, 1, 100);
  });

  it("group-commits concurrent appends: one fdatasync covers many appends", async () => {
    const fs = new MemoryFileSystem();
    const log = await SegmentedLog.open(memOptions(fs));
    const before = fs.counters.datasyncs;
    await appendMany(log, 500);
    const syncs = fs.counters.datasyncs - before;
    expect(syncs).toBeGreaterThan(0);
    expect(syncs).toBeLessThan(10);
    await expectContent(log, 1, 500);
  });

  it("resolves an append only after the fdatasync that covers it", async () => {
    const fs = new MemoryFileSystem();
    const log = await SegmentedLog.open(memOptions(fs));
    const syncsBefore = fs.counters.datasyncs;
    await log.append([entryFor(1)]);
    expect(fs.counters.datasyncs).toBe(syncsBefore + 1);
    // A crash that keeps nothing unsynced still has the acknowledged record.
    fs.crash({ random: () => 0.99, keepProbability: 0 });
    const reopened = await SegmentedLog.open(memOptions(fs));
    expect(reopened.lastIndex).toBe(1);
  });

  it("seals segments at segment_size and reads across them", async () => {
    const fs = new MemoryFileSystem();
    let log = await SegmentedLog.open(memOptions(fs));
    // ~4 KiB records, 1 MiB segments: about 250 records a segment.
    for (let round = 0; round < 10; round++) await appendMany(log, 100, 1, 4000);
    const segs = log.segments();
    expect(segs.length).toBeGreaterThanOrEqual(4);
    for (const s of segs.slice(0, -1)) {
      expect(s.sealed).toBe(true);
      expect(s.bytes).toBeLessThanOrEqual(SEGMENT_BYTES_MIN);
      expect(s.file).toMatch(/^log\/\d{8}\.segment$/);
    }
    expect(segs.at(-1)!.file).toBe("log/current.segment");
    for (let i = 1; i < segs.length; i++) expect(segs[i]!.baseIndex).toBe(segs[i - 1]!.lastIndex + 1);
    const names = await fs.readdir(DIR);
    expect(names).toContain("00000000.segment");
    expect(names).toContain("00000000.index");
    expect(names).toContain("current.segment");
    const all = await log.read(1, 1001);
    expect(all.map((e) => e.index)).toEqual(Array.from({ length: 1000 }, (_, i) => i + 1));
    await log.close();
    log = await SegmentedLog.open(memOptions(fs));
    expect(log.segments()).toEqual(segs);
    expect((await log.read(240, 260)).map((e) => e.index)).toEqual(Array.from({ length: 20 }, (_, i) => 240 + i));
  });

  it("returns at most maxBytes of payload per read, but always at least one entry", async () => {
    const fs = new MemoryFileSystem();
    const log = await SegmentedLog.open(memOptions(fs));
    await appendMany(log, 20, 1, 1000);
    expect((await log.read(1, 21, 3500)).length).toBe(3);
    expect((await log.read(1, 21, 10)).length).toBe(1);
    expect(await log.read(21, 30)).toEqual([]);
    await expect(log.read(0, 5)).rejects.toThrow(InvalidArgumentError);
  });

  it("refuses empty, over-size and malformed records, and writes nothing for them", async () => {
    const fs = new MemoryFileSystem();
    const log = await SegmentedLog.open(memOptions(fs, { recordBytesMax: 1000 }));
    await log.append([entryFor(1)]);
    const empty = { ...entryFor(2), payload: new Uint8Array(0) };
    expect(() => log.append([empty])).toThrow(/empty/);
    const big = { ...entryFor(2), payload: new Uint8Array(1001) };
    expect(() => log.append([big])).toThrow(QuotaExceededError);
    expect(() => log.append([big])).toThrow(/max_record_size \(1000 bytes\)/);
    expect(() => log.append([{ ...entryFor(2), kind: 0 }])).toThrow(/kind 0/);
    expect(() => log.append([{ ...entryFor(2), tenant: "x".repeat(65) }])).toThrow(/tenant id is 65 bytes/);
    // A batch with one bad entry is refused whole.
    expect(() => log.append([entryFor(2), big])).toThrow(QuotaExceededError);
    expect(log.nextIndex).toBe(2);
    await log.append([entryFor(2)]);
    expect(log.lastIndex).toBe(2);
  });

  it("treats out-of-order indexes and falling terms as programmer errors", async () => {
    const fs = new MemoryFileSystem();
    const log = await SegmentedLog.open(memOptions(fs));
    await log.append([entryFor(1, 5)]);
    expect(() => log.append([entryFor(3, 5)])).toThrow(/invariant/);
    expect(() => log.append([entryFor(2, 4)])).toThrow(/invariant/);
  });

  it("truncates a suffix inside the current segment and across sealed segments, and refuses committed entries", async () => {
    const fs = new MemoryFileSystem();
    const log = await SegmentedLog.open(memOptions(fs));
    for (let round = 0; round < 8; round++) await appendMany(log, 100, 2, 4000);
    expect(log.segments().length).toBeGreaterThanOrEqual(3);
    await expect(log.truncateSuffix(300, 300)).rejects.toThrow(FailedPreconditionError);
    await expect(log.truncateSuffix(300, 400)).rejects.toThrow(/committed and can never be removed/);
    await log.truncateSuffix(790, 100);
    expect(log.lastIndex).toBe(789);
    expect(log.nextIndex).toBe(790);
    // Cut into a sealed segment: later segments go, the target becomes current.
    await log.truncateSuffix(300, 100);
    expect(log.lastIndex).toBe(299);
    expect(log.termAt(299)).toBe(2);
    expect(log.termAt(300)).toBeUndefined();
    const segs = log.segments();
    expect(segs.at(-1)!.file).toBe("log/current.segment");
    expect(segs.at(-1)!.lastIndex).toBe(299);
    // New entries from a newer term take the place of the old ones, and survive a reopen.
    await log.append([entryFor(300, 3), entryFor(301, 3)]);
    await log.close();
    const again = await SegmentedLog.open(memOptions(fs));
    expect(again.lastIndex).toBe(301);
    expect(again.termAt(300)).toBe(3);
    await expectContent(again, 1, 301, (i) => (i < 300 ? 4000 : undefined));
    const names = await fs.readdir(DIR);
    expect(names).not.toContain("truncate.intent");
  });

  it("truncating at a segment's first index leaves an empty current segment with that base", async () => {
    const fs = new MemoryFileSystem();
    const log = await SegmentedLog.open(memOptions(fs));
    for (let round = 0; round < 4; round++) await appendMany(log, 100, 1, 4000);
    const second = log.segments()[1]!;
    await log.truncateSuffix(second.baseIndex, 0);
    expect(log.lastIndex).toBe(second.baseIndex - 1);
    await log.close();
    const again = await SegmentedLog.open(memOptions(fs));
    expect(again.lastIndex).toBe(second.baseIndex - 1);
    await again.append([entryFor(second.baseIndex, 2)]);
    expect(again.termAt(second.baseIndex)).toBe(2);
  });

  it("finishes a truncation interrupted by a crash, from its intent file", async () => {
    const fs = new MemoryFileSystem();
    const log = await SegmentedLog.open(memOptions(fs));
    for (let round = 0; round < 6; round++) await appendMany(log, 100, 1, 4000);
    const target = log.segments()[1]!;
    const cut = target.baseIndex + 10;
    // The rename of the cut segment to current.segment fails; the process "dies" right there.
    fs.failNext("rename", "EIO", ".segment");
    await expect(log.truncateSuffix(cut, 0)).rejects.toThrow(VerityError);
    await expect(log.append([entryFor(log.nextIndex)])).rejects.toThrow(/stopped accepting writes/);
    fs.crash({ random: () => 0.3 });
    const again = await SegmentedLog.open(memOptions(fs));
    expect(again.recovery.truncationCompletedFrom).toBe(cut);
    expect(again.lastIndex).toBe(cut - 1);
    await expectContent(again, 1, cut - 1, () => 4000);
    expect(await fs.readdir(DIR)).not.toContain("truncate.intent");
  });

  it("stops accepting writes after a failed fdatasync (no retry over a lost page cache)", async () => {
    const fs = new MemoryFileSystem();
    const log = await SegmentedLog.open(memOptions(fs));
    await log.append([entryFor(1)]);
    fs.failNext("datasync", "EIO");
    await expect(log.append([entryFor(2)])).rejects.toThrow(/EIO/);
    await expect(log.append([entryFor(3)])).rejects.toThrow(/restart the node/i);
  });

  it("in async mode, acknowledges before the sync and warns at open", async () => {
    const fs = new MemoryFileSystem();
    const warnings: string[] = [];
    const sink = { info() {}, error() {}, warn: (_o: object, m: string) => void warnings.push(m) };
    const log = await SegmentedLog.open(memOptions(fs, { syncMode: "async", logger: sink }));
    expect(warnings.join()).toMatch(/acknowledged BEFORE they are on disk/);
    await appendMany(log, 100);
    expect(log.lastIndex).toBe(100);
  });

  it("refuses a log that belongs to another cluster", async () => {
    const fs = new MemoryFileSystem();
    const log = await SegmentedLog.open(memOptions(fs));
    await log.append([entryFor(1)]);
    await log.close();
    const other = Buffer.alloc(16, 7);
    await expect(SegmentedLog.open({ ...memOptions(fs), clusterId: other, encryption: undefined })).rejects.toThrow(/belongs to cluster/);
  });

  it("refuses a log with a segment file missing", async () => {
    const fs = new MemoryFileSystem();
    const log = await SegmentedLog.open(memOptions(fs));
    for (let round = 0; round < 8; round++) await appendMany(log, 100, 1, 4000);
    await log.close();
    await fs.unlink(`${DIR}/00000001.segment`);
    await expect(SegmentedLog.open(memOptions(fs))).rejects.toThrow(/segment 1 is missing/);
  });

  it("rejects out-of-range settings with the range in the message", async () => {
    const fs = new MemoryFileSystem();
    await expect(SegmentedLog.open(memOptions(fs, { segmentBytes: 1000 }))).rejects.toThrow(/between 1048576 \(1MB\)/);
    await expect(SegmentedLog.open(memOptions(fs, { recordBytesMax: 0 }))).rejects.toThrow(/max_record_size/);
  });
});

describe.each(LOG_VARIANTS)("recovery on the real disk (%s)", (variant) => {
  useVariant(variant);
  let cleanup: (() => void) | undefined;
  const opened: SegmentedLog[] = [];
  afterEach(async () => {
    for (const log of opened.splice(0)) await log.close();
    cleanup?.();
  });

  async function writeLog(records: number, size?: number): Promise<string> {
    const t = tempDir("recovery");
    cleanup = t.cleanup;
    const dir = join(t.path, "log");
    const log = await SegmentedLog.open({ dir, fs: new NodeFileSystem(), clusterId: CLUSTER_ID, segmentBytes: SEGMENT_BYTES_MIN, encryption: encryption() });
    for (let done = 0; done < records; done += 100) await appendMany(log, Math.min(100, records - done), 1, size);
    await log.close();
    return dir;
  }

  const open = async (dir: string, verifyOnOpen = true): Promise<SegmentedLog> => {
    const log = await SegmentedLog.open({ dir, fs: new NodeFileSystem(), clusterId: CLUSTER_ID, segmentBytes: SEGMENT_BYTES_MIN, verifyOnOpen, encryption: encryption() });
    opened.push(log);
    return log;
  };

  it("cuts a torn tail (the file ends inside the last record) and reports the bytes cut", async () => {
    const dir = await writeLog(100);
    const file = join(dir, "current.segment");
    const bytes = readFileSync(file);
    writeFileSync(file, bytes.subarray(0, bytes.length - 10));
    // Plaintext loses the record cut through; encrypted, the whole unit it belongs to (never acknowledged).
    const lost = segmentFrames(bytes).at(-1)!.unitFirstIndex;
    expect(lost).toBe(encryption() === undefined ? 100 : lost);
    const log = await open(dir);
    expect(log.lastIndex).toBe(lost - 1);
    expect(log.recovery.tornBytesCut).toBeGreaterThan(0);
    expect(log.recovery.tornAt?.index).toBe(lost);
    await expectContent(log, 1, lost - 1);
    // The cut is durable and the log goes on from there.
    await log.append([entryFor(lost)]);
    await log.close();
    expect((await open(dir)).lastIndex).toBe(lost);
  });

  it("cuts a zero-filled tail (space the file system allocated but never wrote)", async () => {
    const dir = await writeLog(50);
    const file = join(dir, "current.segment");
    writeFileSync(file, Buffer.concat([readFileSync(file), Buffer.alloc(8192)]));
    const log = await open(dir);
    expect(log.lastIndex).toBe(50);
    expect(log.recovery.tornBytesCut).toBe(8192);
  });

  it("refuses to open on a bad checksum before the tail, naming file, offset and index", async () => {
    const dir = await writeLog(100);
    const file = join(dir, "current.segment");
    const bytes = readFileSync(file);
    const at = SEGMENT_HEADER_BYTES + 40 * 10 + 30; // inside an early record
    bytes[at]! ^= 0x01;
    writeFileSync(file, bytes);
    const err = await open(dir).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CorruptionError);
    const c = err as CorruptionError;
    expect(c.location.file).toBe("log/current.segment");
    expect(c.location.offset).toBeLessThanOrEqual(at);
    expect(c.location.index).toBeGreaterThan(0);
    expect(c.message).toMatch(/corruption in log\/current\.segment at byte offset \d+ \(log index \d+\)/);
    expect(c.message).toMatch(/verity-admin log verify/);
  });

  it("refuses a bit flip in the last whole record (not a torn write)", async () => {
    const dir = await writeLog(20);
    const file = join(dir, "current.segment");
    const bytes = readFileSync(file);
    bytes[bytes.length - 5]! ^= 0x40;
    writeFileSync(file, bytes);
    await expect(open(dir)).rejects.toThrow(CorruptionError);
  });

  it("refuses damage in a sealed segment, with or without full verification on open", async () => {
    const dir = await writeLog(600, 4000);
    const file = join(dir, "00000000.segment");
    const bytes = readFileSync(file);
    bytes[bytes.length - 100]! ^= 0xff;
    writeFileSync(file, bytes);
    await expect(open(dir)).rejects.toThrow(/00000000\.segment/);
    // Trusting the index at open, the damage is found when the range is read, and never served.
    const log = await open(dir, false);
    await expect(log.read(1, 400)).rejects.toThrow(CorruptionError);
  });

  it("rebuilds missing and stale index files on open", async () => {
    const dir = await writeLog(600, 4000);
    rmSync(join(dir, "00000000.index"));
    writeFileSync(join(dir, "00000001.index"), Buffer.from("garbage"));
    const log = await open(dir, false);
    expect(log.recovery.indexesRebuilt).toBe(2);
    expect(readdirSync(dir)).toContain("00000000.index");
    expect((await log.read(1, 601)).length).toBe(600);
  });
});
