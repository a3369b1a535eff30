/**
 * The command-line tools as a user runs them: real processes from bin/, real data directories.
 * (`npm test` builds dist/ first.)
 */
import { spawn, spawnSync } from "node:child_process";
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { DataDir } from "../../src/log/data-dir.js";
import { SEGMENT_BYTES_MIN } from "../../src/limits.js";
import { appendMany, tempDir } from "../helpers/log-fixtures.js";

const root = join(import.meta.dirname, "..", "..");
const bin = (name: string) => join(root, "bin", `${name}.js`);

/** Servers started by tests listen on ports the system picks, never the defaults 7000/7001/9090. */
const SERVER_ENV = {
  ...process.env, VERITY_BIND_ADDRESS: "127.0.0.1:0", VERITY_SERVER_CLUSTER_ADDRESS: "127.0.0.1:0", VERITY_TELEMETRY_METRICS_ADDRESS: "127.0.0.1:0",
};

function runCli(name: string, args: string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [bin(name), ...args], { encoding: "utf8", timeout: 60_000, env: SERVER_ENV });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

const tmp = tempDir("cli");
afterAll(() => tmp.cleanup());

async function makeDataDir(name: string, batches: number): Promise<string> {
  const path = join(tmp.path, name);
  const dir = await DataDir.open({ path, segmentBytes: SEGMENT_BYTES_MIN });
  for (let b = 0; b < batches; b++) await appendMany(dir.log, 100, 1 + Math.floor(b / 3), 3000);
  await dir.close();
  return path;
}

describe("every binary", () => {
  for (const name of ["verity-server", "verity-admin", "verity-backup", "verity-restore", "verity"]) {
    it(`${name} prints --help and -V`, () => {
      const version = JSON.parse(readFileSync(join(root, "package.json"), "utf8")).version as string;
      const v = runCli(name, ["-V"]);
      expect(v.code).toBe(0);
      expect(v.stdout.trim()).toBe(version);
      const h = runCli(name, ["--help"]);
      expect(h.code).toBe(0);
      expect(h.stdout).toContain(name);
      expect(h.stdout).toMatch(/--help/);
    });
  }

  it("bad usage exits 2 with a hint", () => {
    const r = runCli("verity-admin", ["log", "verify", "--no-such-flag"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--help/);
  });
});

describe("verity-admin log verify / log dump / verify", () => {
  it("verifies a healthy log: summary and exit 0", async () => {
    const dd = await makeDataDir("healthy", 12);
    const r = runCli("verity-admin", ["log", "verify", "--data-dir", dd]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/OK: \d+ segments, 1200 records, \d+ bytes .*first index 1, last index 1200/);
    expect(r.stdout).toMatch(/00000000\.segment\s+sealed/);
    const j = runCli("verity-admin", ["verify", "--data-dir", dd, "--json"]);
    expect(j.code).toBe(0);
    const report = JSON.parse(j.stdout);
    expect(report.ok).toBe(true);
    expect(report.records).toBe(1200);
  });

  it("names segment, byte offset and index of damage, and exits 1", async () => {
    const dd = await makeDataDir("damaged", 12);
    const file = join(dd, "log", "00000001.segment");
    const bytes = readFileSync(file);
    bytes[20_000]! ^= 0x08;
    writeFileSync(file, bytes);
    const r = runCli("verity-admin", ["log", "verify", "--data-dir", dd]);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/DAMAGE: log\/00000001\.segment at byte offset \d+ \(index \d+\): checksum mismatch/);
    expect(r.stdout).toMatch(/FAILED: 1 damaged place found/);
    // The server refuses to start on it, with the same location.
    const s = runCli("verity-server", ["--data-dir", dd]);
    expect(s.code).toBe(1);
    expect(s.stderr).toMatch(/corruption in log\/00000001\.segment at byte offset \d+ \(log index \d+\)/);
  });

  it("reports a torn tail as cut on next start, without failing", async () => {
    const dd = await makeDataDir("torn", 2);
    const file = join(dd, "log", "current.segment");
    const bytes = readFileSync(file);
    writeFileSync(file, bytes.subarray(0, bytes.length - 100));
    const r = runCli("verity-admin", ["log", "verify", "--data-dir", dd]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/TORN TAIL: log\/current\.segment at byte offset \d+ \(index 200\)/);
  });

  it("dumps records as text and as JSON", async () => {
    const dd = await makeDataDir("dump", 1);
    const text = runCli("verity-admin", ["log", "dump", "--data-dir", dd, "--from", "5", "--limit", "3"]);
    expect(text.code).toBe(0);
    const lines = text.stdout.trim().split("\n");
    expect(lines).toHaveLength(3);
    expect(lines[0]).toMatch(/^index=5 term=1 kind=2 tenant=tenant-5 bytes=3000 at=log\/current\.segment:\d+ 0x/);
    const json = runCli("verity-admin", ["log", "dump", "--data-dir", dd, "--from", "99", "--json"]);
    const records = json.stdout.trim().split("\n").map((l) => JSON.parse(l));
    expect(records.map((r) => r.index)).toEqual([99, 100]);
    expect(Buffer.from(records[0].payload_base64, "base64")).toHaveLength(3000);
  });

  it("says clearly when the directory is not a data directory", () => {
    const r = runCli("verity-admin", ["log", "verify", "--data-dir", join(tmp.path, "nope")]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/is not a directory: pass the node's data directory/);
  });
});

describe("verity-server", () => {
  it("opens ./data-style directories, refuses a second process, and stops cleanly on SIGTERM", async () => {
    const dd = join(tmp.path, "server");
    const child = spawn(process.execPath, [bin("verity-server"), "--data-dir", dd], { stdio: ["ignore", "pipe", "pipe"], env: SERVER_ENV });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    // Bounded: 200 polls of 50 ms.
    for (let i = 0; i < 200 && !out.includes("log recovered"); i++) await new Promise((r) => setTimeout(r, 50));
    const line = JSON.parse(out.trim().split("\n")[0]!);
    expect(line).toMatchObject({ level: "INFO", target: "verity_server", message: "data directory open; log recovered" });
    expect(line.fields).toMatchObject({ node_id: 1, view: 0, last_index: 0, sync_mode: "fsync" });
    expect(typeof line.timestamp).toBe("string");
    const second = runCli("verity-server", ["--data-dir", dd]);
    expect(second.code).toBe(1);
    expect(second.stderr).toMatch(new RegExp(`in use by process ${child.pid}`));
    const exit = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
    child.kill("SIGTERM");
    expect(await exit).toBe(0);
    expect(out).toMatch(/"message":"stopped"/);
  });

  it("stops cleanly on SIGTERM while a new cluster still waits for its peers", async () => {
    const dd = join(tmp.path, "lonely");
    // The only peer listed never answers: the node waits to form the cluster.
    const child = spawn(process.execPath, [bin("verity-server"), "--data-dir", dd, "--cluster-peers", "127.0.0.1:1"], {
      stdio: ["ignore", "pipe", "pipe"], env: SERVER_ENV,
    });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    // Bounded: 200 polls of 50 ms.
    for (let i = 0; i < 200 && !out.includes('"message":"listening"'); i++) await new Promise((r) => setTimeout(r, 50));
    const exit = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
    child.kill("SIGTERM");
    expect(await exit).toBe(0);
    expect(out).toMatch(/stopped before the cluster formed/);
  });

  it.runIf(process.getuid?.() === 0)("says clearly when the data directory is not writable", () => {
    // Root ignores permission bits, so run the server as the unprivileged user "nobody".
    const dd = join(tmp.path, "readonly");
    mkdirSync(dd, { mode: 0o755 });
    chmodSync(tmp.path, 0o755);
    const r = spawnSync(process.execPath, [bin("verity-server"), "--data-dir", dd], { encoding: "utf8", uid: 65534, gid: 65534, timeout: 30_000, env: SERVER_ENV });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/cannot write to directory .*readonly: EACCES; check that the user running VerityDB owns the data directory/);
    expect(r.stderr).not.toMatch(/\n\s+at /); // a message, not a stack trace
  });

  it("refuses a data directory of another node or cluster, and one that is a file", async () => {
    const dd = await makeDataDir("owned", 1);
    const r = runCli("verity-server", ["--data-dir", dd, "--node-id", "2"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/belongs to node 1, not to node 2/);
    const meta = join(dd, "meta", "state.json");
    const other = JSON.parse(readFileSync(meta, "utf8"));
    await expect(DataDir.open({ path: dd, clusterId: "00000000-0000-4000-8000-000000000000" })).rejects.toThrow(
      new RegExp(`belongs to cluster ${other.cluster_id}, not to cluster 00000000`),
    );
    const file = join(tmp.path, "a-file");
    writeFileSync(file, "x");
    const f = runCli("verity-server", ["--data-dir", file]);
    expect(f.code).toBe(1);
    expect(f.stderr).toMatch(/is a file, not a directory/);
  });
});
