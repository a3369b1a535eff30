/**
 * verity-backup and verity-restore as an operator runs them, against real verity-server processes
 * (1 MB segments, so that segments seal often) and s3rver on loopback:
 *
 * - stream from a follower of a 3-node mutual-TLS cluster while clients append, with the streamer
 *   killed with SIGKILL in the middle of a segment's upload, between an upload and the manifest's
 *   replacement, and at a random moment: afterwards the bucket holds every sealed, committed
 *   segment of the node once, byte for byte, and exactly what the manifest lists; a restore to a
 *   position gives the node's records up to it, record by record; a damaged object is refused by name;
 * - snapshot a running single node while it appends, restore it as a new single-node cluster,
 *   verity-admin verify it, start a node on it and query its projections (equal to what the source
 *   had at the snapshot's position); an earlier position rebuilds the projections to it; a truncated
 *   archive and a non-empty data directory are refused.
 */
import { spawnSync } from "node:child_process";
import { createHash, randomInt } from "node:crypto";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import * as net from "node:net";
import { join } from "node:path";
import Database from "better-sqlite3-multiple-ciphers";
import { GetObjectCommand, PutObjectCommand } from "@aws-sdk/client-s3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { STREAM_MANIFEST_KEY, decodeStreamManifest } from "../../src/backup/manifest.js";
import { AdminApi } from "../../src/client/admin-client.js";
import { VerityClient } from "../../src/client/verity-client.js";
import { TestCa } from "../helpers/certs.js";
import { tempDir } from "../helpers/log-fixtures.js";
import { AdminClient, ProcessCluster, freePort, until, type ProcessNode } from "../helpers/process-cluster.js";
import { BUCKET, TestNode, TestS3, bin, exitOf, readRecords, recordLines, runCli, runCommand, startChild, type Child } from "./backup-helpers.js";

const tmp = tempDir("backup-cluster");
let s3: TestS3;
const cleanups: (() => void)[] = [];

beforeAll(async () => {
  s3 = await TestS3.start(join(tmp.path, "s3"));
});
afterAll(async () => {
  for (const c of cleanups) c();
  await s3.close();
  tmp.cleanup();
});

const PAD = "x".repeat(3000);
/** 32 events of about 3 KB: about a tenth of a segment per append. */
const batch = (i: number) => Array.from({ length: 32 }, (_, j) => ({ type: "E", data: { i, j, pad: PAD } }));

async function getBytes(key: string): Promise<Buffer> {
  const r = await s3.client.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }));
  return Buffer.from(await r.Body!.transformToByteArray());
}

/**
 * A TCP proxy between the streamer and s3rver that kills the streamer (SIGKILL) at a chosen point
 * of the S3 protocol: in the middle of a segment's PUT body, or instead of forwarding the
 * manifest's PUT (the segment is in the bucket, the manifest does not list it).
 */
class KillingProxy {
  private server: net.Server | undefined;
  port = 0;
  private trigger: { kind: "segment-body" | "manifest-put"; fire: () => void } | undefined;

  async start(target: number): Promise<void> {
    this.port = await freePort();
    this.server = net.createServer((client) => {
      const upstream = net.connect(target, "127.0.0.1");
      upstream.pipe(client);
      let armed = false;
      let cut = false;
      const fire = (): void => {
        cut = true;
        const t = this.trigger;
        this.trigger = undefined;
        t?.fire();
        setTimeout(() => {
          client.destroy();
          upstream.destroy();
        }, 50);
      };
      client.on("data", (chunk: Buffer) => {
        if (cut) return;
        const t = this.trigger;
        const text = chunk.toString("latin1");
        if (t?.kind === "manifest-put" && text.includes(`PUT /${BUCKET}/stream/${STREAM_MANIFEST_KEY}`)) return fire();
        if (t?.kind === "segment-body" && text.includes(`PUT /${BUCKET}/stream/segments/`)) armed = true;
        if (armed && chunk.length > 4096) {
          upstream.write(chunk.subarray(0, chunk.length >> 1));
          return fire();
        }
        upstream.write(chunk);
      });
      client.on("error", () => upstream.destroy());
      upstream.on("error", () => client.destroy());
      client.on("close", () => upstream.end());
    });
    await new Promise<void>((r) => this.server!.listen(this.port, "127.0.0.1", () => r()));
  }

  /** Resolves when the trigger fired (it calls `fire` first, which kills the streamer). */
  arm(kind: "segment-body" | "manifest-put", fire: () => void): Promise<void> {
    return new Promise((resolve) => {
      this.trigger = { kind, fire: () => (fire(), resolve()) };
    });
  }

  close(): void {
    this.server?.close();
  }
}

describe("verity-backup stream on a 3-node cluster", () => {
  const ca = new TestCa(join(tmp.path, "ca"));
  const procs = new ProcessCluster(tmp.path, ca);
  const proxy = new KillingProxy();
  let nodes: ProcessNode[] = [];
  cleanups.push(() => procs.killAll(), () => proxy.close());

  it("uploads every sealed, committed segment once, through kill -9 of the streamer, and restores to a position", async () => {
    nodes = [await procs.addNode(1), await procs.addNode(2), await procs.addNode(3)];
    for (const n of nodes) procs.start(n, { env: { VERITY_STORAGE_SEGMENT_SIZE: "1MB" } });
    const { leader } = (await until("a leader", () => procs.leaderOf(nodes)))!;
    await procs.createTenants(nodes, "acme");
    const follower = nodes.find((n) => n !== leader)!;
    const dataDir = join(tmp.path, `node${follower.id}`);
    await proxy.start(Number(new URL(s3.endpoint).port));

    // Clients append all along.
    const client = new VerityClient({ endpoints: nodes.map((n) => `127.0.0.1:${n.client}`), tls: { ca: ca.cert, ...procs.admin }, attempts: 40 });
    let writing = true;
    let appends = 0;
    const writer = (async () => {
      // Bounded: stops when the kills are done, or after 250 appends (about 25 MB).
      while (writing && appends < 250) await client.append({ tenant: "acme", stream: `s-${appends % 7}`, events: batch(appends++) });
    })();

    const streamArgs = (endpoint: string) => ["stream", "--source", join(dataDir, "log"), "--destination", `s3://${BUCKET}/stream/`, ...s3.flags(endpoint)];
    const kills: string[] = [];
    let streamer: Child | undefined;
    for (const mode of ["segment-body", "manifest-put", "segment-body", "random", "manifest-put", "random"] as const) {
      streamer = startChild("verity-backup", streamArgs(`http://127.0.0.1:${proxy.port}`));
      const s = streamer;
      if (mode === "random") {
        await new Promise((r) => setTimeout(r, 200 + randomInt(600)));
        s.process.kill("SIGKILL");
      } else {
        await proxy.arm(mode, () => s.process.kill("SIGKILL"));
      }
      const exit = await exitOf(s.process);
      expect(exit.signal, s.output).toBe("SIGKILL");
      kills.push(`${mode}: ${s.output.split("\n").filter((l) => l.startsWith("uploaded")).length} uploads before the kill`);
      // Whatever the moment of the kill, the manifest is whole and lists only whole objects.
      const listed = await bucketState();
      if (mode === "manifest-put") expect(listed.orphans, "the upload the manifest does not list yet").toHaveLength(1);
    }
    // SIGTERM ends a run cleanly, with its summary; its metrics are served meanwhile.
    const metricsPort = await freePort();
    const graceful = startChild("verity-backup", [...streamArgs(s3.endpoint), "--metrics-address", `127.0.0.1:${metricsPort}`]);
    const metrics = await until("the streamer's metrics", async () => {
      try {
        const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
        return /verity_backup_segments_uploaded_total [1-9]/.test(text) ? text : undefined;
      } catch {
        return undefined;
      }
    });
    for (const name of ["verity_backup_bytes_uploaded_total", "verity_backup_last_uploaded_index", "verity_backup_lag_segments", "verity_backup_lag_entries", "verity_backup_recovery_point_seconds_count"]) {
      expect(metrics).toContain(name);
    }
    graceful.process.kill("SIGTERM");
    expect((await exitOf(graceful.process)).code, graceful.output).toBe(0);
    expect(graceful.output).toMatch(/verity-backup stream: \d+ segments .* uploaded in/);

    writing = false;
    await writer;
    client.close();
    expect(appends).toBeGreaterThan(20);

    // Every node has applied everything: all of the follower's sealed segments are committed. One --once pass uploads the rest.
    const commit = (await procs.status(leader))!.commit_index as number;
    await until("the follower applied everything", async () => (((await procs.status(follower))?.applied_index as number) >= commit ? true : undefined));
    const once = await runCli("verity-backup", [...streamArgs(s3.endpoint), "--once", "--json"]);
    expect(once.code, once.stdout + once.stderr).toBe(0);
    const summary = JSON.parse(once.stdout.trim().split("\n").pop()!) as Record<string, number>;
    expect(summary.lag_segments).toBe(0);

    const manifest = decodeStreamManifest(await getBytes(`stream/${STREAM_MANIFEST_KEY}`), "manifest");
    const sealed = readdirSync(join(dataDir, "log")).filter((n) => /^\d{8}\.segment$/.test(n)).sort();
    expect(manifest.segments.map((s) => `${String(s.sequence).padStart(8, "0")}.segment`), kills.join("; ")).toEqual(sealed);
    expect(sealed.length).toBeGreaterThanOrEqual(3);
    const objects = (await s3.store("stream/").list("segments/", 10_000)).map((o) => o.key).sort();
    expect(objects).toEqual(manifest.segments.map((s) => s.key).sort());
    let next = 1;
    for (const s of manifest.segments) {
      expect(s.firstIndex).toBe(next);
      next = s.lastIndex + 1;
      expect((await getBytes(`stream/${s.key}`)).equals(readFileSync(join(dataDir, "log", `${String(s.sequence).padStart(8, "0")}.segment`))), s.key).toBe(true);
    }
    expect(manifest.nodeId).toBe(follower.id);
    expect(manifest.membership?.voters.sort()).toEqual([1, 2, 3]);

    // Point in time: the middle of the last segment.
    const last = manifest.segments[manifest.segments.length - 1]!;
    const position = Math.floor((last.firstIndex + last.lastIndex) / 2);
    const restored = join(tmp.path, "restored-from-s3");
    const r = await runCli("verity-restore", ["--source", `s3://${BUCKET}/stream/`, ...s3.flags(), "--position", String(position), "--data-dir", restored, "--new-cluster", "--json"]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, position, segments: manifest.segments.length, start: "new-cluster" });
    expect(recordLines(await readRecords(restored, Number.MAX_SAFE_INTEGER))).toEqual(recordLines(await readRecords(dataDir, position)));

    // The guide's "Data Corruption" procedure: the follower's disk is lost; restored from the bucket as
    // the seed of the same member, it rejoins, syncs the rest from the leader, and votes again.
    follower.process!.kill("SIGKILL");
    await exitOf(follower.process!);
    const others = nodes.filter((n) => n !== follower);
    const seed = await runCli("verity-restore", [
      "--source", `s3://${BUCKET}/stream/`, ...s3.flags(), "--data-dir", dataDir, "--force", "--json",
      "--peers", others.map((n) => `127.0.0.1:${n.client}`).join(","), "--tls-ca", ca.cert, "--tls-cert", procs.admin.cert, "--tls-key", procs.admin.key,
    ]);
    expect(seed.code, seed.stdout + seed.stderr).toBe(0);
    const seeded = JSON.parse(seed.stdout) as { start: string; node_id: number; recover_until: number; position: number };
    expect(seeded).toMatchObject({ start: "member", node_id: follower.id, position: last.lastIndex });
    expect(seeded.recover_until).toBeGreaterThanOrEqual(commit);
    procs.start(follower, { env: { VERITY_STORAGE_SEGMENT_SIZE: "1MB" } });
    // The leader still holds the follower's old match index, past the restored log, and never probes
    // below it (src/consensus/raft.ts; see docs/backup.md, "Not yet"). A leader elected after the
    // restore starts from fresh progress: hand leadership to the other member first.
    const healthy = others.find((n) => n !== leader)!;
    await procs.call(leader, AdminClient, "transferLeadership", { to: healthy.id });
    const again = new VerityClient({ endpoints: others.map((n) => `127.0.0.1:${n.client}`), tls: { ca: ca.cert, ...procs.admin }, attempts: 40 });
    await again.append({ tenant: "acme", stream: "after", events: [{ type: "E", data: {} }] });
    again.close();
    const target = (await procs.status(healthy))!.commit_index as number;
    await until("the restored member caught up", async () => (((await procs.status(follower))?.applied_index as number) >= target ? true : undefined), 30_000)
      .catch((e: Error) => {
        throw new Error(`${e.message}; node ${follower.id}:\n${follower.output.slice(-3000)}`);
      });
    await until("one leader all agree on", () => procs.leaderOf(nodes));
    expect(follower.output).not.toMatch(/corruption|refus/i);

    // A damaged object stops a restore, naming it.
    await corrupt(`stream/${manifest.segments[1]!.key}`);
    const bad = await runCli("verity-restore", ["--source", `s3://${BUCKET}/stream/`, ...s3.flags(), "--data-dir", join(tmp.path, "restored-bad")]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain(`damaged backup: s3://${BUCKET}/stream/${manifest.segments[1]!.key}`);
    for (const n of nodes) n.process!.kill("SIGKILL");
  });
});

/** The bucket's segment objects, and those the manifest does not list (uploads a kill left behind). */
async function bucketState(): Promise<{ manifest: ReturnType<typeof decodeStreamManifest> | undefined; orphans: string[] }> {
  const objects = (await s3.store("stream/").list("segments/", 10_000)).map((o) => o.key);
  let manifest;
  try {
    manifest = decodeStreamManifest(await getBytes(`stream/${STREAM_MANIFEST_KEY}`), "manifest");
  } catch (e) {
    if ((e as { name?: string }).name === "NoSuchKey") return { manifest: undefined, orphans: objects };
    throw e;
  }
  const listed = new Set(manifest.segments.map((s) => s.key));
  for (const s of manifest.segments) {
    expect(objects).toContain(s.key);
    expect(createHash("sha256").update(await getBytes(`stream/${s.key}`)).digest("hex"), s.key).toBe(s.sha256);
  }
  return { manifest, orphans: objects.filter((k) => !listed.has(k)) };
}

async function corrupt(key: string): Promise<void> {
  const bytes = await getBytes(key);
  bytes[bytes.length - 100]! ^= 0xff;
  await s3.client.send(new PutObjectCommand({ Bucket: BUCKET, Key: key, Body: bytes }));
}

const COUNTS_MIGRATION = "CREATE TABLE counts (stream TEXT PRIMARY KEY, n INTEGER NOT NULL);";
const COUNTS_PROJECTION = `
name = "counts"
[[handlers]]
event_type = "E"
sql = "INSERT INTO counts (stream, n) VALUES (:_stream, 1) ON CONFLICT (stream) DO UPDATE SET n = n + 1"
`;

describe("verity-backup snapshot and verity-restore on a running node", () => {
  let source: TestNode;
  let restoredNode: TestNode | undefined;
  cleanups.push(() => source?.kill(), () => restoredNode?.kill());

  it("snapshots while appending; the restore verifies, starts as a new cluster and answers queries as of the snapshot", async () => {
    source = await TestNode.create(join(tmp.path, "single"));
    source.start();
    await source.leading();
    const api = new AdminApi({ endpoints: [source.endpoint], tls: undefined });
    await api.call("createTenant", { tenant: "acme" });
    await api.call("migrate", { tenant: "acme", name: "001_counts", sql: COUNTS_MIGRATION });
    await api.call("createProjection", { tenant: "acme", definition: COUNTS_PROJECTION });
    const client = new VerityClient({ endpoints: [source.endpoint] });
    const appended: { stream: string; last: number }[] = [];
    const append = async (i: number) => {
      const stream = `s-${i % 5}`;
      const r = await client.append({ tenant: "acme", stream, events: batch(i) });
      appended.push({ stream, last: r.lastPosition });
    };
    for (let i = 0; i < 40; i++) await append(i);
    // Snapshot while appends go on.
    const more = (async () => {
      for (let i = 40; i < 70; i++) await append(i);
    })();
    const archive = join(tmp.path, "snap.tar.gz");
    const snap = await runCli("verity-backup", ["snapshot", "--data-dir", source.dataDir, "--output", archive, "--json"]);
    await more;
    expect(snap.code, snap.stdout + snap.stderr).toBe(0);
    const snapshot = JSON.parse(snap.stdout) as { position: number; segments: number; databases: { path: string; applied_position: number }[] };
    expect(snapshot.segments).toBeGreaterThanOrEqual(3);
    expect(snapshot.databases.map((d) => d.path).sort()).toEqual(["projections/tenant_acme/projections.sqlite", "state/events.sqlite"]);
    // On a terminal, a progress bar redrawn in place (util-linux script(1) gives the command a pseudo-terminal).
    if (spawnSync("script", ["--version"]).status === 0) {
      const command = [process.execPath, bin("verity-backup"), "snapshot", "--data-dir", source.dataDir, "--output", join(tmp.path, "snap-tty.tar.gz")].map((a) => `'${a}'`).join(" ");
      const tty = await runCommand("script", ["-qec", command, "/dev/null"]);
      expect(tty.code, tty.stdout).toBe(0);
      expect(tty.stdout).toMatch(/\rverity-backup snapshot: archiving \[#+-*\] +\d+%/);
      expect(tty.stdout).toMatch(/\[#{30}\] 100%/);
    }
    const countsAt = (position: number) => {
      const counts = new Map<string, number>();
      for (const a of appended) if (a.last <= position) counts.set(a.stream, (counts.get(a.stream) ?? 0) + 32);
      return [...counts.entries()].sort().map(([stream, n]) => [stream, n]);
    };

    const restored = join(tmp.path, "restored-snapshot");
    const r = await runCli("verity-restore", ["--source", archive, "--data-dir", restored, "--new-cluster"]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toContain(`log indexes 1..${snapshot.position}`);
    expect(r.stdout).toMatch(/OK: verify passed/);
    const verify = await runCli("verity-admin", ["verify", "--data-dir", restored]);
    expect(verify.code, verify.stdout).toBe(0);
    expect(recordLines(await readRecords(restored, Number.MAX_SAFE_INTEGER))).toEqual(recordLines(await readRecords(source.dataDir, snapshot.position)));

    // A node on it: a new single-node cluster whose projections are those of the snapshot's position.
    restoredNode = await TestNode.create(restored);
    restoredNode.start();
    await restoredNode.leading();
    const rc = new VerityClient({ endpoints: [restoredNode.endpoint] });
    const q = await rc.query({ tenant: "acme", sql: "SELECT stream, n FROM counts ORDER BY stream" });
    expect(q.rows).toEqual(countsAt(snapshot.position));
    await rc.append({ tenant: "acme", stream: "after-restore", events: [{ type: "E", data: {} }] });
    rc.close();
    client.close();
    await restoredNode.stop();

    // An earlier position, inside a batch: the databases are left out and rebuilt, the cut batch is not applied.
    const early = Math.floor(snapshot.position / 2);
    const earlyArchive = join(tmp.path, "snap-early.tar.gz");
    const s2 = await runCli("verity-backup", ["snapshot", "--data-dir", source.dataDir, "--position", String(early), "--output", earlyArchive, "--json"]);
    expect(s2.code, s2.stderr).toBe(0);
    expect(JSON.parse(s2.stdout).omitted).toHaveLength(2);
    const restoredEarly = join(tmp.path, "restored-early");
    const r2 = await runCli("verity-restore", ["--source", earlyArchive, "--data-dir", restoredEarly, "--json"]);
    expect(r2.code, r2.stdout + r2.stderr).toBe(0);
    expect(JSON.parse(r2.stdout)).toMatchObject({ ok: true, position: early, start: "member", recover_until: early + 1 });
    const db = new Database(join(restoredEarly, "projections", "tenant_acme", "projections.sqlite"), { readonly: true });
    expect(db.prepare("SELECT stream, n FROM counts ORDER BY stream").raw(true).all()).toEqual(countsAt(early));
    db.close();
    await source.stop();

    // Refusals: a truncated archive, by name; a non-empty data directory.
    const whole = readFileSync(archive);
    const truncated = join(tmp.path, "truncated.tar.gz");
    writeFileSync(truncated, whole.subarray(0, Math.floor(whole.length * 0.6)));
    const t = await runCli("verity-restore", ["--source", truncated, "--data-dir", join(tmp.path, "restored-truncated")]);
    expect(t.code).toBe(1);
    expect(t.stderr).toMatch(new RegExp(`damaged backup: ${truncated.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")}.*cut short`));
    expect(readdirSync(join(tmp.path, "restored-truncated"))).toEqual([]);
    const busy = await runCli("verity-restore", ["--source", archive, "--data-dir", restored]);
    expect(busy.code).toBe(1);
    expect(busy.stderr).toMatch(/is not empty .*add --force/);
  });
});
