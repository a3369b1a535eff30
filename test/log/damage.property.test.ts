/**
 * Random damage against recovery (issue 2, section 4): flip bytes or cut files at random places.
 * Recovery must never return a damaged record, never lose a record that was synced before the
 * damaged point, and must report damage before the tail as corruption (with file and offset).
 */
import { beforeAll, describe, expect, it } from "vitest";
import fc from "fast-check";
import { MemoryFileSystem } from "../../src/log/memory-fs.js";
import { SegmentedLog } from "../../src/log/segmented-log.js";
import { CorruptionError } from "../../src/errors.js";
import { SEGMENT_BYTES_MIN, SEGMENT_HEADER_BYTES } from "../../src/limits.js";
import { CLUSTER_ID, appendMany, payloadFor } from "../helpers/log-fixtures.js";
import type { AtRestEncryption } from "../../src/crypto/at-rest.js";
import { LOG_VARIANTS, encryptionFor, segmentFrames } from "../helpers/log-encryption.js";

const DIR = "/d/log";
/** The running variant's encryption (the suite runs plaintext, then encrypted). */
let encryption: () => AtRestEncryption | undefined = () => undefined;

interface Written {
  mem: MemoryFileSystem;
  /** Per segment file: [file name, byte offsets at which each record starts, index of each record]. */
  files: Array<{ name: string; sealed: boolean; starts: number[]; indexes: number[]; unitEnds: number[]; size: number }>;
  last: number;
}

/** Writes a log of ~1.5 segments: sealed 00000000.segment and a current.segment. */
async function build(): Promise<Written> {
  const mem = new MemoryFileSystem();
  const log = await SegmentedLog.open({ dir: DIR, fs: mem, clusterId: CLUSTER_ID, segmentBytes: SEGMENT_BYTES_MIN, encryption: encryption() });
  for (let r = 0; r < 6; r++) await appendMany(log, 100, 1 + r, 2500);
  const segments = log.segments();
  await log.close();
  const files = [];
  for (const s of segments) {
    const name = s.file.replace("log/", "");
    const bytes = mem.peek(`${DIR}/${name}`)!;
    const starts: number[] = [];
    const indexes: number[] = [];
    let off = SEGMENT_HEADER_BYTES;
    for (let i = s.baseIndex; i <= s.lastIndex; i++) {
      starts.push(off);
      indexes.push(i);
      off += 8 + Buffer.from(bytes).readUInt32LE(off + 4);
    }
    // Encrypted records survive a cut only with their whole unit (a plaintext record is its own unit).
    const unitEnds = segmentFrames(bytes).map((f) => f.unitEnd);
    expect(unitEnds.length).toBe(starts.length);
    files.push({ name, sealed: s.sealed, starts, indexes, unitEnds, size: bytes.length });
  }
  return { mem, files, last: segments.at(-1)!.lastIndex };
}

/** The index of the record whose bytes include `offset`, or 0 for the header. */
function recordAt(file: Written["files"][number], offset: number): number {
  let found = 0;
  for (let k = 0; k < file.starts.length; k++) if (file.starts[k]! <= offset) found = file.indexes[k]!;
  return offset < SEGMENT_HEADER_BYTES ? 0 : found;
}

async function checkServed(mem: MemoryFileSystem): Promise<{ last: number } | { error: unknown }> {
  try {
    const log = await SegmentedLog.open({ dir: DIR, fs: mem, clusterId: CLUSTER_ID, segmentBytes: SEGMENT_BYTES_MIN, encryption: encryption() });
    const all = log.lastIndex === 0 ? [] : await log.read(1, log.lastIndex + 1, 1 << 30);
    expect(all.length).toBe(log.lastIndex);
    for (const e of all) expect(Buffer.from(e.payload).equals(payloadFor(e.index, 2500)), `index ${e.index} served damaged`).toBe(true);
    return { last: log.lastIndex };
  } catch (error) {
    return { error };
  }
}

describe.each(LOG_VARIANTS)("recovery under random damage (%s)", (variant) => {
  const get = encryptionFor(variant);
  beforeAll(() => {
    encryption = get;
  });
  it("bit flips: corruption before the tail is refused; nothing damaged is ever served", async () => {
    const base = await build();
    const pristine = base.files.map((f) => base.mem.peek(`${DIR}/${f.name}`)!.slice());
    await fc.assert(
      fc.asyncProperty(fc.nat(base.files.length - 1), fc.double({ min: 0, max: 1, noNaN: true }), fc.integer({ min: 1, max: 255 }), async (fileNo, where, mask) => {
        const file = base.files[fileNo]!;
        base.files.forEach((f, i) => base.mem.poke(`${DIR}/${f.name}`, pristine[i]!));
        const offset = Math.min(file.size - 1, Math.floor(where * file.size));
        const bytes = pristine[fileNo]!.slice();
        bytes[offset]! ^= mask;
        base.mem.poke(`${DIR}/${file.name}`, bytes);
        const damaged = recordAt(file, offset);
        const isLastRecord = !file.sealed && damaged === file.indexes.at(-1);
        const outcome = await checkServed(base.mem);
        if ("error" in outcome) {
          expect(outcome.error).toBeInstanceOf(CorruptionError);
          const loc = (outcome.error as CorruptionError).location;
          expect(loc.file).toBe(`log/${file.name}`);
          expect(loc.offset).toBeLessThanOrEqual(offset);
        } else {
          // Opening is only allowed when the damage was in the last record of current.segment and
          // looked like a torn write: then exactly that record is cut, nothing before it.
          expect(isLastRecord, `flip at ${file.name}:${offset} (index ${damaged}) was not refused`).toBe(true);
          expect(outcome.last).toBe(damaged - 1);
        }
      }),
      { numRuns: 300, seed: 4242 },
    );
  });

  it("cuts: a cut current.segment is a torn tail; a cut sealed segment is corruption", async () => {
    const base = await build();
    const pristine = base.files.map((f) => base.mem.peek(`${DIR}/${f.name}`)!.slice());
    await fc.assert(
      fc.asyncProperty(fc.nat(base.files.length - 1), fc.double({ min: 0, max: 1, noNaN: true }), async (fileNo, where) => {
        const file = base.files[fileNo]!;
        base.files.forEach((f, i) => base.mem.poke(`${DIR}/${f.name}`, pristine[i]!));
        const cut = Math.floor(where * (file.size - 1));
        base.mem.poke(`${DIR}/${file.name}`, pristine[fileNo]!.slice(0, cut));
        const outcome = await checkServed(base.mem);
        if (file.sealed || cut < SEGMENT_HEADER_BYTES) {
          expect("error" in outcome ? outcome.error : undefined).toBeInstanceOf(CorruptionError);
          return;
        }
        expect("last" in outcome, String("error" in outcome ? outcome.error : "")).toBe(true);
        // Every record whose unit ended at or before the cut survives; the unit cut through does not.
        const whole = file.indexes.filter((_, k) => file.unitEnds[k]! <= cut);
        const expected = whole.length > 0 ? whole.at(-1)! : file.indexes[0]! - 1;
        expect((outcome as { last: number }).last).toBe(expected);
      }),
      { numRuns: 200, seed: 777 },
    );
  });
});
