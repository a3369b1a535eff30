/**
 * The lose-unsynced emulation: the test-only durability journal written by the real file-system
 * adapter (src/log/test-sync-journal.ts, src/log/node-fs.ts), and the cut the harness makes from
 * it after SIGKILL (jepsen/lose-unsynced.ts): nothing journaled durable is ever lost, unsynced
 * bytes are torn, and without the variable nothing is journaled.
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { durableSizes, loseUnsynced, snapshotSizes } from "../../jepsen/lose-unsynced.js";
import { Rng } from "../../jepsen/rng.js";
import { tempDir } from "../helpers/log-fixtures.js";

const tmp = tempDir("lose-unsynced");
afterAll(() => tmp.cleanup());

/** The built adapter (npm test builds first; the cluster tests run dist/ the same way). */
const nodeFs = join(import.meta.dirname, "..", "..", "dist", "src", "log", "node-fs.js");

/** Runs a script against the real adapter in a child process (the journal is read from the environment at load). */
function runAdapter(dir: string, journal: string | undefined): void {
  const script = `
    import { NodeFileSystem } from ${JSON.stringify(nodeFs)};
    const fs = new NodeFileSystem();
    const d = ${JSON.stringify(dir)};
    await fs.mkdir(d + "/log");
    const h = await fs.open(d + "/log/a.tmp", "create-exclusive");
    await h.write(Buffer.alloc(100, 1), 0, 100, 0);
    await h.sync();
    await h.close();
    await fs.rename(d + "/log/a.tmp", d + "/log/a");
    const g = await fs.open(d + "/log/a", "readwrite-dsync");
    await g.write(Buffer.alloc(50, 2), 0, 50, 100);
    await g.close();
    const u = await fs.open(d + "/log/b", "create-exclusive");
    await u.write(Buffer.alloc(10, 3), 0, 10, 0);
    await u.close();
    await fs.unlink(d + "/log/b");
  `;
  execFileSync(process.execPath, ["--input-type=module", "-e", script], {
    env: { ...process.env, VERITY_TEST_SYNC_JOURNAL: journal ?? "" },
    stdio: ["ignore", "pipe", "pipe"],
  });
}

describe("lose-unsynced: the durability journal and the cut", () => {
  it("the adapter journals durable writes, syncs, renames and unlinks only when the variable is set", () => {
    const dir = join(tmp.path, "journal");
    const journal = join(tmp.path, "journal.jsonl");
    runAdapter(dir, journal);
    const lines = readFileSync(journal, "utf8").trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines).toEqual([
      { op: "durable", path: join(dir, "log", "a.tmp"), size: 100 },
      { op: "rename", from: join(dir, "log", "a.tmp"), to: join(dir, "log", "a") },
      { op: "durable", path: join(dir, "log", "a"), size: 150 },
      { op: "unlink", path: join(dir, "log", "b") },
    ]);
    expect(durableSizes(new Map(), readFileSync(journal, "utf8"))).toEqual(new Map([[join(dir, "log", "a"), 150]]));

    const quiet = join(tmp.path, "quiet");
    runAdapter(quiet, undefined);
    expect(existsSync(join(quiet, "log", "a"))).toBe(true);
    expect(existsSync(join(tmp.path, "quiet.jsonl"))).toBe(false);
  });

  it("replays renames and unlinks over the starting sizes; a line cut by the kill is ignored", () => {
    const base = new Map([["/d/log/current.segment", 512], ["/d/meta/state.json", 90]]);
    const journal = [
      { op: "durable", path: "/d/log/current.segment", size: 1000 },
      { op: "durable", path: "/d/meta/state.json.tmp", size: 95 },
      { op: "rename", from: "/d/meta/state.json.tmp", to: "/d/meta/state.json" },
      { op: "rename", from: "/d/log/00000000.index.tmp", to: "/d/log/00000000.index" },
      { op: "rename", from: "/d/log/current.segment", to: "/d/log/00000000.segment" },
      { op: "unlink", path: "/d/log/old" },
    ].map((r) => JSON.stringify(r)).join("\n") + '\n{"op":"durable","path":"/d/log/cur';
    expect(durableSizes(base, journal)).toEqual(new Map([
      ["/d/log/00000000.segment", 1000], ["/d/meta/state.json", 95], ["/d/log/00000000.index", 0],
    ]));
  });

  it("cuts every file back to its durable size at most, keeps every durable byte, and tears the rest", () => {
    const rng = new Rng(7);
    let tornSomewhere = false;
    for (let round = 0; round < 40; round++) {
      const dir = join(tmp.path, `cut-${round}`);
      mkdirSync(join(dir, "log"), { recursive: true });
      mkdirSync(join(dir, "meta"), { recursive: true });
      const segment = join(dir, "log", "current.segment");
      const content = Buffer.from(Array.from({ length: 8192 }, (_, i) => 1 + (i % 250)));
      writeFileSync(segment, content.subarray(0, 1024));
      writeFileSync(join(dir, "meta", "state.json"), "{}");
      const baseline = snapshotSizes(dir);
      // This incarnation: 4096 bytes journaled durable, then 4096 more written and not synced; an index never synced.
      writeFileSync(segment, content);
      writeFileSync(join(dir, "log", "00000000.index"), Buffer.alloc(300, 9));
      const journal = join(dir, "journal.jsonl");
      writeFileSync(journal, JSON.stringify({ op: "durable", path: segment, size: 4096 }) + "\n");
      const cuts = loseUnsynced(dir, baseline, journal, rng);
      const after = readFileSync(segment);
      expect(after.length).toBeGreaterThanOrEqual(4096);
      expect(after.subarray(0, 4096).equals(content.subarray(0, 4096))).toBe(true);
      expect(statSync(join(dir, "meta", "state.json")).size).toBe(2);
      expect(statSync(join(dir, "log", "00000000.index")).size).toBeLessThanOrEqual(300);
      const segmentCut = cuts.find((c) => c.file === segment)!;
      expect(segmentCut).toMatchObject({ sizeBefore: 8192, durable: 4096 });
      if (!after.equals(content)) tornSomewhere = true;
    }
    expect(tornSomewhere).toBe(true);
  });
});
