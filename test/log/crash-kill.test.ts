/**
 * The crash test (issue 2, section 4): a child process appends as fast as it can and reports each
 * acknowledged index; it is killed with SIGKILL at random moments, many times, on the same log.
 * After every kill, every acknowledged record must be there, byte for byte, and the log must
 * reopen as a valid prefix of what was written.
 *
 * SIGKILL keeps the page cache, so this proves the recovery logic and the ack-after-write ordering
 * on a real disk; the in-memory file system tests (crash-memfs.test.ts) drop unsynced data to prove
 * the fsync ordering.
 */
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { NodeFileSystem } from "../../src/log/node-fs.js";
import { SegmentedLog } from "../../src/log/segmented-log.js";
import { SEGMENT_BYTES_MIN } from "../../src/limits.js";
import { CLUSTER_ID, payloadFor, seededRandom, tempDir } from "../helpers/log-fixtures.js";

const KILLS = 12;
const APPENDERS = 32;
const fixture = join(import.meta.dirname, "..", "fixtures", "crash-appender.mjs");

async function runAndKill(dir: string, term: number, killAfterMs: number): Promise<{ maxAcked: number; openedAt: number; acks: number }> {
  const child = spawn(process.execPath, [fixture, dir, String(APPENDERS), String(term)], { stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  let maxAcked = 0;
  let acks = 0;
  let openedAt = -1;
  const exited = new Promise<void>((resolve) => child.on("exit", () => resolve()));
  const lines = createInterface({ input: child.stdout });
  const opened = new Promise<void>((resolve) => {
    lines.on("line", (line) => {
      if (line.startsWith("open ")) {
        openedAt = Number(line.split(" ")[1]);
        resolve();
      } else if (line.startsWith("ack ")) {
        for (const s of line.slice(4).split(",")) {
          acks++;
          maxAcked = Math.max(maxAcked, Number(s));
        }
      }
    });
  });
  await Promise.race([opened, exited]);
  expect(openedAt, `child failed to open the log: ${stderr}`).toBeGreaterThanOrEqual(0);
  await new Promise((r) => setTimeout(r, killAfterMs));
  child.kill("SIGKILL");
  await exited;
  return { maxAcked, openedAt, acks };
}

describe("SIGKILL crash test on a real disk", () => {
  const t = tempDir("crash");
  afterAll(() => t.cleanup());

  it(`keeps every acknowledged record across ${KILLS} kills at random moments`, async () => {
    const dir = join(t.path, "log");
    const random = seededRandom(20261122);
    let everAcked = 0;
    let totalAcks = 0;
    for (let kill = 1; kill <= KILLS; kill++) {
      const { maxAcked, openedAt, acks } = await runAndKill(dir, kill, 60 + Math.floor(random() * 400));
      totalAcks += acks;
      // What the child saw at open covers everything acknowledged by earlier runs.
      expect(openedAt).toBeGreaterThanOrEqual(everAcked);
      everAcked = Math.max(everAcked, maxAcked);
      const log = await SegmentedLog.open({ dir, fs: new NodeFileSystem(), clusterId: CLUSTER_ID, segmentBytes: SEGMENT_BYTES_MIN });
      try {
        expect(log.lastIndex, `kill ${kill}: acknowledged ${maxAcked}, log ends at ${log.lastIndex}`).toBeGreaterThanOrEqual(maxAcked);
        // A valid prefix: every record from 1 to lastIndex, in order, byte for byte.
        let next = 1;
        // Bounded by lastIndex: every read returns at least one entry.
        while (next <= log.lastIndex) {
          const batch = await log.read(next, log.lastIndex + 1, 8 << 20);
          for (const e of batch) {
            expect(e.index).toBe(next);
            expect(Buffer.from(e.payload).equals(payloadFor(e.index))).toBe(true);
            next++;
          }
        }
        // Terms never decrease; each run wrote its own term.
        expect(log.lastTerm).toBeLessThanOrEqual(kill);
      } finally {
        await log.close();
      }
    }
    expect(totalAcks).toBeGreaterThan(KILLS * 10); // the children really did work
  });
});
