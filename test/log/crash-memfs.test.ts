/**
 * Crashes at random moments on the faulty file system: everything not fsync'd is lost (or partly
 * kept, out of order), the last write may be torn, directory changes not synced are lost. After
 * each crash the log must reopen without error as a valid prefix holding every acknowledged record.
 */
import { describe, expect, it } from "vitest";
import { LOG_VARIANTS, encryptionFor } from "../helpers/log-encryption.js";
import { MemoryFileSystem } from "../../src/log/memory-fs.js";
import { SegmentedLog } from "../../src/log/segmented-log.js";
import { SEGMENT_BYTES_MIN } from "../../src/limits.js";
import { RecordKind } from "../../src/log/types.js";
import { CrashingFileSystem } from "../helpers/crashing-fs.js";
import { CLUSTER_ID, seededRandom } from "../helpers/log-fixtures.js";

const DIR = "/node/log";
const SEEDS = Number(process.env.VERITY_CRASH_SEEDS ?? 60);
const CRASHES_PER_SEED = 4;

function payload(random: () => number, index: number, round: number): Buffer {
  // Mostly small records, sometimes big ones, so segments seal within a few hundred appends.
  const size = random() < 0.1 ? 20_000 + Math.floor(random() * 60_000) : 1 + Math.floor(random() * 500);
  const buf = Buffer.alloc(size, (index * 31 + round) & 0xff);
  if (size >= 4) buf.writeUInt32LE(index >>> 0, 0);
  return buf;
}

describe.each(LOG_VARIANTS)("crash recovery on the faulty file system (%s)", (variant) => {
  const encryption = encryptionFor(variant);
  it(`keeps every acknowledged record through ${SEEDS * CRASHES_PER_SEED} crashes (${SEEDS} seeds)`, async () => {
    let acknowledgedTotal = 0;
    let tornTotal = 0;
    for (let seed = 1; seed <= SEEDS; seed++) {
      const random = seededRandom(seed);
      const mem = new MemoryFileSystem();
      /** Every payload ever offered at each index (a truncation lets an index be written again). */
      const written = new Map<number, Buffer[]>();
      /** Acknowledged and not since truncated away by the test itself: must survive. */
      const durable = new Map<number, Buffer>();
      for (let round = 0; round < CRASHES_PER_SEED; round++) {
        const fs = new CrashingFileSystem(mem, 20 + Math.floor(random() * 400), random);
        let log: SegmentedLog;
        try {
          log = await SegmentedLog.open({ dir: DIR, fs, clusterId: CLUSTER_ID, segmentBytes: SEGMENT_BYTES_MIN, encryption: encryption() });
        } catch (e) {
          if (fs.dead) continue; // crashed during open itself: recovery must cope next round
          throw e;
        }
        // Bounded: each pass issues a bounded burst of appends; the crash ends it.
        for (let burst = 0; burst < 200 && !fs.dead; burst++) {
          if (random() < 0.05 && log.lastIndex > 5) {
            // A follower's conflicting tail goes: entries from `from` on are no longer owed.
            const from = log.lastIndex - Math.floor(random() * 5);
            for (const i of [...durable.keys()]) if (i >= from) durable.delete(i);
            await log.truncateSuffix(from, 0).catch(() => {});
            continue;
          }
          const calls: Promise<void>[] = [];
          const n = 1 + Math.floor(random() * 20);
          for (let k = 0; k < n && !fs.dead; k++) {
            const index = log.nextIndex;
            const p = payload(random, index, round);
            written.set(index, [...(written.get(index) ?? []), p]);
            let call: Promise<void>;
            try {
              call = log.append([{ term: round + 1, index, kind: RecordKind.EVENTS, tenant: "t", payload: p }]);
            } catch {
              break;
            }
            calls.push(call.then(() => void durable.set(index, p)));
          }
          await Promise.allSettled(calls);
        }
        tornTotal += fs.report?.tornWrites ?? 0;
        acknowledgedTotal += durable.size;
        // Restart on the crashed disk.
        const reopened = await SegmentedLog.open({ dir: DIR, fs: mem, clusterId: CLUSTER_ID, segmentBytes: SEGMENT_BYTES_MIN, encryption: encryption() });
        const maxDurable = Math.max(0, ...durable.keys());
        expect(reopened.lastIndex, `seed ${seed} round ${round}`).toBeGreaterThanOrEqual(maxDurable);
        const all = reopened.lastIndex === 0 ? [] : await reopened.read(1, reopened.lastIndex + 1, 1 << 30);
        expect(all.length).toBe(reopened.lastIndex);
        for (const e of all) {
          const must = durable.get(e.index);
          const p = Buffer.from(e.payload);
          if (must !== undefined) expect(p.equals(must), `seed ${seed}: index ${e.index} changed`).toBe(true);
          else expect(written.get(e.index)?.some((w) => w.equals(p)), `seed ${seed}: index ${e.index} never written`).toBe(true);
        }
        // What is there now is durable: the next round's crash must keep it.
        for (const e of all) durable.set(e.index, Buffer.from(e.payload));
        for (const i of [...durable.keys()]) if (i > reopened.lastIndex) durable.delete(i);
        await reopened.close();
      }
    }
    expect(acknowledgedTotal).toBeGreaterThan(SEEDS * 10);
    expect(tornTotal).toBeGreaterThan(0); // the faults really happened
  });
});
