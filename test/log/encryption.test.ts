/**
 * At-rest encryption of the log (issue 9): what the parametrized suites cannot show by themselves.
 * Nothing readable on disk; tampering and wrong keys are CorruptionErrors naming the file; a torn
 * tail rewritten at the same index gets a new nonce; plaintext and encrypted segments side by side;
 * a KMS outage at roll time refuses appends without writing; header re-wrap and its crash safety.
 */
import { afterEach, describe, expect, it } from "vitest";
import { crc32c } from "@node-rs/crc32";
import { MemoryFileSystem } from "../../src/log/memory-fs.js";
import { SegmentedLog, type SegmentedLogOptions } from "../../src/log/segmented-log.js";
import { CorruptionError, ErrorCode, VerityError } from "../../src/errors.js";
import { SEGMENT_BYTES_MIN, SEGMENT_HEADER_BYTES } from "../../src/limits.js";
import { decodeSegmentHeader } from "../../src/log/segment-header.js";
import { rotateLocalKeyFile } from "../../src/crypto/local-kms.js";
import { CachingKeyProvider, DataKeyCache } from "../../src/crypto/data-key-cache.js";
import type { AtRestEncryption } from "../../src/crypto/at-rest.js";
import { verifyLog } from "../../src/log/offline.js";
import { RecordKind } from "../../src/log/types.js";
import { CrashingFileSystem } from "../helpers/crashing-fs.js";
import { FlakyKeyProvider, localKeyForTests, segmentFrames } from "../helpers/log-encryption.js";
import { CLUSTER_ID, appendMany, payloadFor, seededRandom } from "../helpers/log-fixtures.js";

const DIR = "/enc/log";
const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});

async function key(): Promise<Awaited<ReturnType<typeof localKeyForTests>>> {
  const k = await localKeyForTests();
  cleanups.push(k.cleanup);
  return k;
}

function options(fs: MemoryFileSystem | CrashingFileSystem, encryption: AtRestEncryption | undefined, extra: Partial<SegmentedLogOptions> = {}): SegmentedLogOptions {
  return { dir: DIR, fs, clusterId: CLUSTER_ID, segmentBytes: SEGMENT_BYTES_MIN, encryption, ...extra };
}

const MARKER = Buffer.from("MARKER-7f3a-plaintext-must-not-appear");
function markedPayload(index: number): Buffer {
  return Buffer.concat([MARKER, payloadFor(index, 200)]);
}
async function appendMarked(log: SegmentedLog, count: number, entryTerm = 1): Promise<void> {
  const calls: Promise<void>[] = [];
  for (let i = 0; i < count; i++) {
    const index = log.nextIndex;
    calls.push(log.append([{ term: entryTerm, index, kind: RecordKind.EVENTS, tenant: "acme", payload: markedPayload(index) }]));
  }
  await Promise.all(calls);
}

function files(mem: MemoryFileSystem): string[] {
  return ["00000000.segment", "00000001.segment", "00000002.segment", "00000003.segment", "current.segment"]
    .filter((n) => mem.peek(`${DIR}/${n}`) !== undefined);
}

/** Creates a file durably on the in-memory file system. */
async function put(mem: MemoryFileSystem, path: string, bytes: Uint8Array): Promise<void> {
  const h = await mem.open(path, "create-exclusive");
  await h.write(bytes, 0, bytes.length, 0);
  await h.sync();
  await h.close();
}

/** Offsets of the frames of a segment file. */
function frameStarts(bytes: Uint8Array): number[] {
  const b = Buffer.from(bytes);
  const out: number[] = [];
  for (let off = SEGMENT_HEADER_BYTES; off + 8 <= b.length; off += 8 + b.readUInt32LE(off + 4)) out.push(off);
  return out;
}

describe("log at-rest encryption", () => {
  it("writes no payload in the clear; headers name the key; everything reads back after a reopen", async () => {
    const k = await key();
    const mem = new MemoryFileSystem();
    let log = await SegmentedLog.open(options(mem, k.encryption));
    for (let r = 0; r < 12; r++) await appendMarked(log, 500, 1 + r);
    expect(log.segments().length).toBeGreaterThanOrEqual(2);
    await log.close();
    for (const name of files(mem)) {
      const bytes = Buffer.from(mem.peek(`${DIR}/${name}`)!);
      expect(bytes.includes(MARKER), name).toBe(false);
      const h = decodeSegmentHeader(bytes);
      expect(h.ok && h.header.encryption.algorithm).toBe(1);
      expect(h.ok && Buffer.from(h.header.encryption.keyId).toString()).toBe(k.local.keyId);
      expect(h.ok && h.header.encryption.keyVersion).toBe("1");
    }
    log = await SegmentedLog.open(options(mem, k.encryption, { verifyOnOpen: false }));
    const all = await log.read(1, log.lastIndex + 1, 1 << 30);
    expect(all.length).toBe(6000);
    for (const e of all) expect(Buffer.from(e.payload).equals(markedPayload(e.index))).toBe(true);
    expect(log.segments().every((s) => s.keyId === k.local.keyId && s.keyVersion === "1")).toBe(true);
    await log.close();
    // Structure and checksums are checked without any key.
    const report = await verifyLog(mem, DIR);
    expect(report.ok).toBe(true);
    expect(report.records).toBe(6000);
  });

  it("a tampered byte in the middle record of a unit is a CorruptionError naming file, the unit's offset and first index; no record of that unit is served", async () => {
    const k = await key();
    const mem = new MemoryFileSystem();
    const log = await SegmentedLog.open(options(mem, k.encryption));
    await appendMarked(log, 30); // one group commit: one unit of 30 records
    await appendMarked(log, 30); // the next unit
    await appendMarked(log, 30);
    await log.close();
    const path = `${DIR}/current.segment`;
    const bytes = Buffer.from(mem.peek(path)!);
    const frames = segmentFrames(bytes);
    const units = [...new Set(frames.map((f) => f.unitStart))];
    expect(units.length).toBe(3);
    const middle = frames.filter((f) => f.unitStart === units[1])[15]!;
    expect(middle.position).toBe(15);
    bytes[middle.end - 40]! ^= 0x01; // inside the record's ciphertext slice
    bytes.writeUInt32LE(crc32c(bytes.subarray(middle.offset + 4, middle.end)), middle.offset); // an attacker recomputes the CRC
    mem.poke(path, bytes);
    const reopened = await SegmentedLog.open(options(mem, k.encryption, { verifyOnOpen: false })); // structure is fine
    for (const [from, to] of [[1, 91], [46, 47], [31, 32], [60, 61], [25, 40]] as const) {
      const error = await reopened.read(from, to).catch((e: unknown) => e);
      expect(error, `read ${from}..${to}`).toBeInstanceOf(CorruptionError);
      expect((error as CorruptionError).location).toMatchObject({ file: "log/current.segment", offset: units[1], index: 31 });
      expect((error as VerityError).code).toBe(ErrorCode.CORRUPTION);
      expect((error as Error).message).toMatch(/unit of 30 record\(s\), indexes 31\.\.60/);
    }
    // The other units are served whole.
    expect((await reopened.read(1, 31)).length).toBe(30);
    expect((await reopened.read(61, 91)).map((e) => e.index)).toEqual(Array.from({ length: 30 }, (_, i) => 61 + i));
    await reopened.close();
  });

  it("reads single records from the middle of units, in any order, with a cold and a warm cache", async () => {
    const k = await key();
    const mem = new MemoryFileSystem();
    let log = await SegmentedLog.open(options(mem, k.encryption));
    for (let r = 0; r < 8; r++) await appendMarked(log, 120 + r * 37, 1 + r);
    const last = log.lastIndex;
    await log.close();
    const frames = segmentFrames(mem.peek(`${DIR}/current.segment`)!);
    expect(frames.some((f) => f.count > 100)).toBe(true);
    expect(frames.some((f) => f.position > 0 && f.position < f.count - 1)).toBe(true);
    const random = seededRandom(5);
    for (const verifyOnOpen of [false, true]) {
      log = await SegmentedLog.open(options(mem, k.encryption, { verifyOnOpen }));
      const order = Array.from({ length: last }, (_, i) => i + 1).sort(() => random() - 0.5);
      for (const index of order.slice(0, 400)) {
        const [e] = await log.read(index, index + 1);
        expect(e!.index).toBe(index);
        expect(Buffer.from(e!.payload).equals(markedPayload(index))).toBe(true);
      }
      // Ranges that start and end inside units, and payloads handed out are copies.
      const range = await log.read(57, 301);
      expect(range.map((e) => e.index)).toEqual(Array.from({ length: 244 }, (_, i) => 57 + i));
      range[0]!.payload.fill(0);
      expect(Buffer.from((await log.read(57, 58))[0]!.payload).equals(markedPayload(57))).toBe(true);
      // A byte budget stops inside a unit and the next read goes on from there.
      const part = await log.read(100, last + 1, 1000);
      expect(part.map((e) => e.index)).toEqual([100, 101, 102, 103]);
      await log.close();
    }
  });

  it("a unit torn by a crash is cut back to its first frame; earlier units stay; a rewrite of the same indexes gets a fresh nonce", async () => {
    const k = await key();
    const mem = new MemoryFileSystem();
    let log = await SegmentedLog.open(options(mem, k.encryption));
    await appendMarked(log, 10);
    await appendMarked(log, 10);
    await log.close();
    const path = `${DIR}/current.segment`;
    const before = Buffer.from(mem.peek(path)!);
    const frames = segmentFrames(before);
    const second = frames.filter((f) => f.unitFirstIndex === 11);
    expect(second.length).toBe(10);
    for (const cut of [second[4]!.end, second[4]!.end - 7, before.length - 5]) {
      mem.poke(path, before.subarray(0, cut)); // torn inside the second unit
      log = await SegmentedLog.open(options(mem, k.encryption));
      expect(log.recovery.tornAt).toMatchObject({ index: 11, offset: second[0]!.offset });
      expect(log.recovery.tornBytesCut).toBe(cut - second[0]!.offset);
      expect(log.lastIndex).toBe(10);
      expect((await log.read(1, 11)).length).toBe(10);
      await appendMarked(log, 10);
      expect(log.lastIndex).toBe(20);
      expect((await log.read(1, 21)).map((e) => e.index)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
      await log.close();
      const after = Buffer.from(mem.peek(path)!);
      expect(after.length).toBe(before.length); // the same records, the same frame sizes
      const nonceAt = second[0]!.offset + 26 + 4 + 8; // frame header, tenant "acme", unit fields
      expect(after.subarray(nonceAt, nonceAt + 12).equals(before.subarray(nonceAt, nonceAt + 12))).toBe(false);
      expect((await verifyLog(mem, DIR)).ok).toBe(true);
    }
  });

  it("a Raft truncation inside a unit re-seals the kept prefix as a new unit with a new nonce; the old unit's bytes are gone", async () => {
    const k = await key();
    const mem = new MemoryFileSystem();
    let log = await SegmentedLog.open(options(mem, k.encryption));
    await appendMarked(log, 20, 1);
    await appendMarked(log, 20, 1);
    const path = `${DIR}/current.segment`;
    const before = Buffer.from(mem.peek(path)!);
    const oldUnit = segmentFrames(before).filter((f) => f.unitFirstIndex === 21);
    const oldTag = before.subarray(oldUnit.at(-1)!.end - 16, oldUnit.at(-1)!.end);
    const nonceAt = oldUnit[0]!.offset + 26 + 4 + 8;
    const oldNonce = Buffer.from(before.subarray(nonceAt, nonceAt + 12));
    await log.read(21, 41); // the old unit is in the cache: the truncation must drop it
    await log.truncateSuffix(28, 5);
    expect(log.lastIndex).toBe(27);
    const cut = Buffer.from(mem.peek(path)!);
    const kept = segmentFrames(cut).filter((f) => f.unitFirstIndex === 21);
    expect(kept.map((f) => [f.position, f.count])).toEqual(Array.from({ length: 7 }, (_, i) => [i, 7]));
    expect(cut.length).toBe(kept.at(-1)!.end);
    expect(cut.subarray(nonceAt, nonceAt + 12).equals(oldNonce)).toBe(false);
    expect(cut.includes(oldTag)).toBe(false);
    expect((await log.read(21, 28)).map((e) => Buffer.from(e.payload).equals(markedPayload(e.index)))).toEqual(Array(7).fill(true));
    // New entries at the cut indexes, of a new term, with other payloads.
    const calls = Array.from({ length: 15 }, (_, i) => log.append([{ term: 2, index: 28 + i, kind: RecordKind.EVENTS, tenant: "acme", payload: payloadFor(1000 + i, 150) }]));
    await Promise.all(calls);
    const check = async (l: SegmentedLog): Promise<void> => {
      const all = await l.read(1, 43);
      expect(all.length).toBe(42);
      for (const e of all.slice(0, 27)) expect(Buffer.from(e.payload).equals(markedPayload(e.index))).toBe(true);
      for (const e of all.slice(27)) expect([e.term, Buffer.from(e.payload).equals(payloadFor(1000 + e.index - 28, 150))]).toEqual([2, true]);
    };
    await check(log);
    await log.close();
    expect(mem.peek(`${DIR}/truncate.intent`)).toBeUndefined();
    log = await SegmentedLog.open(options(mem, k.encryption));
    await check(log);
    await log.close();
    expect((await verifyLog(mem, DIR)).ok).toBe(true);
    // A cut at a unit boundary rewrites nothing.
    log = await SegmentedLog.open(options(mem, k.encryption));
    const boundary = Buffer.from(mem.peek(path)!);
    await log.truncateSuffix(21, 5);
    expect(Buffer.from(mem.peek(path)!).equals(boundary.subarray(0, oldUnit[0]!.offset))).toBe(true);
    await log.close();
  });

  it("a truncation inside a unit is crash-safe: a crash at every step keeps the kept prefix readable and the cut complete", async () => {
    const k = await key();
    const base = new MemoryFileSystem();
    const log = await SegmentedLog.open(options(base, k.encryption));
    await appendMarked(log, 20, 1);
    await appendMarked(log, 20, 1);
    await log.close();
    const snapshot = new Map((await base.readdir(DIR)).map((n) => [n, Buffer.from(base.peek(`${DIR}/${n}`)!)]));
    let crashes = 0;
    // Bounded: one pass per operation of a whole truncation (it ends when one completes).
    for (let crashAt = 1; crashAt < 200; crashAt++) {
      const mem = new MemoryFileSystem();
      await mem.mkdir("/enc");
      await mem.mkdir(DIR);
      for (const [n, b] of snapshot) await put(mem, `${DIR}/${n}`, b);
      await mem.syncDir(DIR);
      const opened = await SegmentedLog.open(options(mem, k.encryption));
      const fs = new CrashingFileSystem(mem, crashAt, seededRandom(crashAt));
      (opened as unknown as { fs: unknown }).fs = fs;
      const done = await opened.truncateSuffix(33, 5).then(() => true, () => false);
      if (done) break;
      crashes++;
      if (!fs.dead) mem.crash({ random: seededRandom(crashAt) });
      const reopened = await SegmentedLog.open(options(mem, k.encryption));
      // Either the truncation had not begun (its intent was not durable) or it is complete.
      expect([32, 40], `crash at ${crashAt}`).toContain(reopened.lastIndex);
      const all = await reopened.read(1, reopened.lastIndex + 1);
      expect(all.length).toBe(reopened.lastIndex);
      for (const e of all) expect(Buffer.from(e.payload).equals(markedPayload(e.index))).toBe(true);
      expect(mem.peek(`${DIR}/truncate.intent`)).toBeUndefined();
      await reopened.close();
      expect((await verifyLog(mem, DIR)).ok).toBe(true);
    }
    expect(crashes).toBeGreaterThan(3);
  });

  it("an edited cleartext field (tenant) with the CRC fixed up does not authenticate", async () => {
    const k = await key();
    const mem = new MemoryFileSystem();
    const log = await SegmentedLog.open(options(mem, k.encryption));
    await appendMarked(log, 5);
    await log.close();
    const path = `${DIR}/current.segment`;
    const bytes = Buffer.from(mem.peek(path)!);
    const at = frameStarts(bytes)[2]!;
    const end = at + 8 + bytes.readUInt32LE(at + 4);
    bytes[at + 26] = "b".charCodeAt(0); // "acme" -> "bcme"
    bytes.writeUInt32LE(crc32c(bytes.subarray(at + 4, end)), at);
    mem.poke(path, bytes);
    const reopened = await SegmentedLog.open(options(mem, k.encryption));
    await expect(reopened.read(3, 4)).rejects.toBeInstanceOf(CorruptionError);
    await reopened.close();
  });

  it("a wrong master key is a CorruptionError naming the segment file; no key at all is a clear FAILED_PRECONDITION", async () => {
    const k = await key();
    const other = await key();
    const mem = new MemoryFileSystem();
    const log = await SegmentedLog.open(options(mem, k.encryption));
    await appendMarked(log, 10);
    await log.close();
    const error = await SegmentedLog.open(options(mem, other.encryption)).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CorruptionError);
    expect((error as CorruptionError).location.file).toBe("log/current.segment");
    expect((error as Error).message).toMatch(/another master key/);
    const none = await SegmentedLog.open(options(mem, undefined)).catch((e: unknown) => e);
    expect((none as VerityError).code).toBe(ErrorCode.FAILED_PRECONDITION);
    expect((none as Error).message).toMatch(/log\/current\.segment is encrypted.*\[encryption\] enabled = true/);
  });

  it("mixed plaintext and encrypted segments: turning encryption on seals the plaintext segment; all stay readable", async () => {
    const k = await key();
    const mem = new MemoryFileSystem();
    let log = await SegmentedLog.open(options(mem, undefined));
    await appendMany(log, 100);
    await log.close();
    log = await SegmentedLog.open(options(mem, k.encryption));
    const segs = log.segments();
    expect(segs.map((s) => s.keyId === undefined)).toEqual([true, false]);
    expect(segs[1]!.baseIndex).toBe(101);
    await appendMarked(log, 100);
    await log.close();
    log = await SegmentedLog.open(options(mem, k.encryption));
    const all = await log.read(1, 201);
    expect(all.length).toBe(200);
    expect(Buffer.from(all[150]!.payload).equals(markedPayload(151))).toBe(true);
    // A cut back into the plaintext segment does not make new records plaintext.
    await log.truncateSuffix(51, 0);
    expect(log.segments().length).toBe(2);
    expect(log.segments()[1]!.keyId).toBe(k.local.keyId);
    await appendMarked(log, 10);
    await log.close();
    expect(Buffer.from(mem.peek(`${DIR}/current.segment`)!).includes(MARKER)).toBe(false);
    log = await SegmentedLog.open(options(mem, k.encryption));
    expect((await log.read(1, 61)).length).toBe(60);
    await log.close();
  });

  it("makes the next segment's key ahead of time; with the KMS down at the roll, appends fail UNAVAILABLE and nothing is written", async () => {
    const k = await key();
    const flaky = new FlakyKeyProvider(k.encryption.provider);
    const encryption = { provider: flaky, clusterId: k.encryption.clusterId };
    const mem = new MemoryFileSystem();
    const log = await SegmentedLog.open(options(mem, encryption));
    expect(flaky.generated).toBe(1);
    // Past half full: the next key is made in the background.
    await appendMany(log, 150, 1, 4000);
    await new Promise((r) => setImmediate(r));
    expect(flaky.generated).toBe(2);
    flaky.down = true;
    await appendMany(log, 200, 1, 4000); // rolls using the key made ahead: the KMS is not needed
    expect(log.segments().length).toBe(2);
    const last = log.lastIndex;
    // The next roll has no key ready: refused whole, nothing written, and the log stays usable.
    const calls = Array.from({ length: 300 }, (_, i) => log.append([{ term: 1, index: last + 1 + i, kind: 2, tenant: "", payload: payloadFor(last + 1 + i, 4000) }]));
    const outcomes = await Promise.allSettled(calls);
    const refused = outcomes.filter((o) => o.status === "rejected");
    expect(refused.length).toBeGreaterThan(0);
    expect(((refused[0] as PromiseRejectedResult).reason as VerityError).code).toBe(ErrorCode.UNAVAILABLE);
    expect((refused[0] as PromiseRejectedResult).reason.message).toMatch(/never falls back to plaintext/);
    expect(log.segments().length).toBe(2);
    expect(log.nextIndex).toBe(log.lastIndex + 1);
    flaky.down = false;
    await appendMany(log, 300, 1, 4000);
    expect(log.segments().length).toBe(3);
    const all = await log.read(1, log.lastIndex + 1, 1 << 30);
    expect(all.length).toBe(log.lastIndex);
    await log.close();
  });

  it("rotation: re-wraps every header under the new key version without touching a record", async () => {
    const k = await key();
    const mem = new MemoryFileSystem();
    let log = await SegmentedLog.open(options(mem, k.encryption));
    for (let r = 0; r < 6; r++) await appendMarked(log, 500, 1);
    const names = files(mem);
    const bodies = new Map(names.map((n) => [n, Buffer.from(mem.peek(`${DIR}/${n}`)!).subarray(SEGMENT_HEADER_BYTES)]));
    await rotateLocalKeyFile(k.keyFile);
    await (k.encryption.provider as CachingKeyProvider).reload();
    const progress: number[] = [];
    const result = await log.rewrapHeaders((p) => progress.push(p.done));
    expect(result).toEqual({ total: names.length, rewrapped: names.length });
    expect(progress).toEqual(names.map((_, i) => i + 1));
    expect(log.segments().every((s) => s.keyVersion === "2")).toBe(true);
    // A second pass finds every key current.
    expect(await log.rewrapHeaders()).toEqual({ total: names.length, rewrapped: 0 });
    await appendMarked(log, 10);
    await log.close();
    for (const n of names) {
      const body = Buffer.from(mem.peek(`${DIR}/${n}`)!).subarray(SEGMENT_HEADER_BYTES);
      expect(body.subarray(0, bodies.get(n)!.length).equals(bodies.get(n)!), n).toBe(true);
    }
    // Readable with a fresh cache (keys unwrapped under version 2), and the index files still trusted.
    const fresh = { provider: new CachingKeyProvider(k.local, new DataKeyCache()), clusterId: k.encryption.clusterId };
    log = await SegmentedLog.open(options(mem, fresh, { verifyOnOpen: false }));
    expect(log.recovery.indexesRebuilt).toBe(0);
    const all = await log.read(1, log.lastIndex + 1, 1 << 30);
    expect(all.length).toBe(3010);
    await log.close();
  });

  it("rotation is crash-safe: a crash at every step of a re-wrap leaves every segment readable", async () => {
    const k = await key();
    const base = new MemoryFileSystem();
    const log = await SegmentedLog.open(options(base, k.encryption));
    for (let r = 0; r < 4; r++) await appendMarked(log, 500, 1);
    await log.close();
    const names = files(base);
    const snapshot = new Map((await base.readdir(DIR)).map((n) => [n, Buffer.from(base.peek(`${DIR}/${n}`)!)]));
    await rotateLocalKeyFile(k.keyFile);
    await k.local.reload();
    let crashes = 0;
    // Bounded: one pass per operation of a full re-wrap (it ends when a re-wrap completes).
    for (let crashAt = 1; crashAt < 500; crashAt++) {
      const mem = new MemoryFileSystem();
      await mem.mkdir("/enc");
      await mem.mkdir(DIR);
      for (const [n, b] of snapshot) await put(mem, `${DIR}/${n}`, b);
      await mem.syncDir(DIR);
      const opened = await SegmentedLog.open(options(mem, k.encryption));
      const fs = new CrashingFileSystem(mem, crashAt, seededRandom(crashAt));
      // Swap the file system under the open log: the re-wrap's operations count towards the crash.
      (opened as unknown as { fs: unknown }).fs = fs;
      const done = await opened.rewrapHeaders().then(() => true, () => false);
      if (done) break;
      crashes++;
      if (!fs.dead) mem.crash({ random: seededRandom(crashAt) });
      const fresh = { provider: new CachingKeyProvider(k.local, new DataKeyCache()), clusterId: k.encryption.clusterId };
      const reopened = await SegmentedLog.open(options(mem, fresh));
      const all = await reopened.read(1, reopened.lastIndex + 1, 1 << 30);
      expect(all.length, `crash at ${crashAt}`).toBe(2000);
      for (const e of all) expect(Buffer.from(e.payload).equals(markedPayload(e.index))).toBe(true);
      expect(mem.peek(`${DIR}/rewrap.intent`)).toBeUndefined();
      await reopened.close();
    }
    expect(crashes).toBeGreaterThan(names.length * 3);
  });
});
