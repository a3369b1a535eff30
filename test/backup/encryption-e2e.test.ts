/**
 * At-rest encryption end to end (issue 9), on a real verity-server process with a local master key
 * file and s3rver on loopback: a tenant, a migration and a projection, events carrying a marker
 * string in their data, stream names, event ids and metadata; then every file under the data
 * directory, every file s3rver keeps for the bucket after `verity-backup stream --once`, and the
 * snapshot archive, are searched for the marker (and its base64 and hex forms) and none holds it.
 * The node restarts and reads and queries everything back; a projection rebuild moves the tenant's
 * database to a new data key; the snapshot restores (with the same key file) onto another data
 * directory, verity-admin verify passes (and without --config says it needs one), and a node
 * started on it answers; a restore without a key, or with another key file, fails clearly and
 * leaves the target empty.
 */
import { randomUUID } from "node:crypto";
import { existsSync, readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DeleteObjectCommand, PutObjectCommand } from "@aws-sdk/client-s3";
import { STREAM_MANIFEST_KEY, decodeStreamManifest } from "../../src/backup/manifest.js";
import { AdminApi } from "../../src/client/admin-client.js";
import { VerityClient } from "../../src/client/verity-client.js";
import { initLocalKeyFile } from "../../src/crypto/local-kms.js";
import { tempDir } from "../helpers/log-fixtures.js";
import { until } from "../helpers/process-cluster.js";
import { BUCKET, TestNode, TestS3, runCli } from "./backup-helpers.js";

const tmp = tempDir("encryption-e2e");
let s3: TestS3;
const nodes: TestNode[] = [];

beforeAll(async () => {
  s3 = await TestS3.start(join(tmp.path, "s3"));
});
afterAll(async () => {
  for (const n of nodes) n.kill();
  await s3.close();
  tmp.cleanup();
});

const MARKER = `MRK${randomUUID().replace(/-/g, "").slice(0, 20)}`;
/** The marker as it could appear on disk: as is, base64 (blobs, JSON of bytes) and hex. */
const FORMS = [MARKER, Buffer.from(MARKER).toString("base64").slice(0, 24), Buffer.from(MARKER).toString("hex")].map((f) => Buffer.from(f, "latin1"));
const PAD = "p".repeat(2500);

function filesUnder(dir: string): string[] {
  if (!existsSync(dir)) return [];
  if (statSync(dir).isFile()) return [dir];
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? filesUnder(join(dir, e.name)) : e.isFile() ? [join(dir, e.name)] : []));
}

/** The files under `dir` holding the marker in any form (expected: none). */
function filesWithMarker(dir: string): string[] {
  return filesUnder(dir).filter((f) => {
    const bytes = readFileSync(f);
    return FORMS.some((form) => bytes.includes(form));
  });
}

const MIGRATION = "CREATE TABLE notes (id TEXT PRIMARY KEY, stream TEXT NOT NULL, body TEXT NOT NULL);";
const PROJECTION = `
name = "notes"
[[handlers]]
event_type = "Noted"
sql = "INSERT INTO notes (id, stream, body) VALUES (:id, :_stream, :body)"
`;

function config(name: string, keyFile: string): string {
  const path = join(tmp.path, `${name}.toml`);
  writeFileSync(path, `[encryption]\nenabled = true\nkms_provider = "local"\nkms_key_id = ${JSON.stringify(keyFile)}\n`);
  return path;
}

describe("turning encryption on over a plaintext node", () => {
  it("rebuilds the event index and projections encrypted from the log; everything reads and queries back", async () => {
    const keyFile = join(tmp.path, "later.key");
    await initLocalKeyFile(keyFile);
    const cfg = config("later", keyFile);
    const dataDir = join(tmp.path, "plain-then-encrypted");
    const node = await TestNode.create(dataDir);
    nodes.push(node);
    node.start();
    await node.leading();
    const api = new AdminApi({ endpoints: [node.endpoint], tls: undefined });
    await api.call("createTenant", { tenant: "acme" });
    await api.call("migrate", { tenant: "acme", name: "001_notes", sql: MIGRATION });
    await api.call("createProjection", { tenant: "acme", definition: PROJECTION });
    const client = new VerityClient({ endpoints: [node.endpoint] });
    await client.append({ tenant: "acme", stream: `${MARKER}-s`, events: Array.from({ length: 50 }, (_, i) => ({ type: "Noted", data: { id: `n${i}`, body: `${MARKER} ${i}` } })) });
    client.close();
    await node.stop();
    const sqliteFiles = (): string[] => [...filesUnder(join(dataDir, "state")), ...filesUnder(join(dataDir, "projections"))];
    expect(sqliteFiles().filter((f) => FORMS.some((form) => readFileSync(f).includes(form))).length).toBeGreaterThan(0);

    node.start(["--config", cfg]);
    await node.leading().catch((e: Error) => {
      throw new Error(`${e.message}\n${node.child?.output.slice(-3000)}`);
    });
    const again = new VerityClient({ endpoints: [node.endpoint] });
    expect((await again.query({ tenant: "acme", sql: `SELECT COUNT(*), SUM(instr(body, '${MARKER}') > 0) FROM notes` })).rows).toEqual([[50, 50]]);
    expect((await again.readAll({ tenant: "acme", limit: 100 })).events).toHaveLength(50);
    again.close();
    await node.stop();
    expect(node.child?.output).toMatch(/plaintext: removing it; it is rebuilt, encrypted, from the log/);
    expect(existsSync(join(dataDir, "state", "events.key")) && existsSync(join(dataDir, "projections", "tenant_acme", "projections.key"))).toBe(true);
    // The SQLite files hold no marker any more (segments written before encryption stay plaintext: docs/encryption.md).
    expect(sqliteFiles().filter((f) => FORMS.some((form) => readFileSync(f).includes(form)))).toEqual([]);
  });
});

describe("a node with encryption on", () => {
  it("keeps the marker out of every file on disk, in the bucket and in the snapshot; restarts, restores and refuses without the key", async () => {
    const keyFile = join(tmp.path, "master.key");
    await initLocalKeyFile(keyFile);
    const cfg = config("node", keyFile);
    const otherKeyFile = join(tmp.path, "other.key");
    await initLocalKeyFile(otherKeyFile);
    const otherCfg = config("other", otherKeyFile);

    const dataDir = join(tmp.path, "node");
    const node = await TestNode.create(dataDir);
    nodes.push(node);
    node.start(["--config", cfg]);
    await node.leading().catch((e: Error) => {
      throw new Error(`${e.message}\n${node.child?.output.slice(-3000)}`);
    });
    const api = new AdminApi({ endpoints: [node.endpoint], tls: undefined });
    await api.call("createTenant", { tenant: "acme" });
    await api.call("migrate", { tenant: "acme", name: "001_notes", sql: MIGRATION });
    await api.call("createProjection", { tenant: "acme", definition: PROJECTION });
    const client = new VerityClient({ endpoints: [node.endpoint] });
    const EVENTS = 600; // about 1.7 MB: more than one 1 MB segment, so one seals for the stream backup
    for (let i = 0; i < EVENTS; i += 20) {
      await client.append({
        tenant: "acme", stream: `${MARKER}-stream-${i % 3}`,
        events: Array.from({ length: 20 }, (_, j) => ({
          type: "Noted", eventId: `${MARKER}-${i + j}`, metadata: { note: MARKER },
          data: { id: `n${i + j}`, body: `${MARKER} says ${i + j}`, pad: PAD },
        })),
      });
    }
    const q = await client.query({ tenant: "acme", sql: `SELECT COUNT(*) AS n, SUM(instr(body, '${MARKER}') > 0) AS marked FROM notes` });
    expect(q.rows).toEqual([[EVENTS, EVENTS]]);

    // A rebuild moves the tenant's database to a new data key.
    const sidecar = join(dataDir, "projections", "tenant_acme", "projections.key");
    const keyBefore = readFileSync(sidecar);
    await api.call("rebuildProjection", { tenant: "acme", projection: "notes" });
    await until("the rebuild moved to a new key", async () => (readFileSync(sidecar).equals(keyBefore) ? undefined : true), 30_000);
    expect((await client.query({ tenant: "acme", sql: "SELECT COUNT(*) FROM notes" })).rows).toEqual([[EVENTS]]);

    // Backups: the stream (segments as they are on disk) and a snapshot, both with the node's config.
    const stream = await runCli("verity-backup", ["stream", "--once", "--source", dataDir, "--destination", `s3://${BUCKET}/enc/`, ...s3.flags(), "--config", cfg, "--json"]);
    expect(stream.code, stream.stdout + stream.stderr).toBe(0);
    expect(stream.stdout).toMatch(/"event":"uploaded"/);
    const streamNoKey = await runCli("verity-backup", ["stream", "--once", "--source", dataDir, "--destination", `s3://${BUCKET}/enc/`, ...s3.flags()]);
    expect(streamNoKey.code).toBe(1);
    expect(streamNoKey.stderr).toMatch(/encrypted.*--config.*--node-endpoint/);
    const archive = join(tmp.path, "snap.tar.gz");
    const plainTry = await runCli("verity-backup", ["snapshot", "--data-dir", dataDir, "--output", join(tmp.path, "plain.tar.gz")]);
    expect(plainTry.code).toBe(1);
    expect(plainTry.stderr).toMatch(/encrypted.*--config/);
    const snap = await runCli("verity-backup", ["snapshot", "--data-dir", dataDir, "--output", archive, "--config", cfg, "--json"]);
    expect(snap.code, snap.stdout + snap.stderr).toBe(0);
    const snapshot = JSON.parse(snap.stdout) as { position: number; encrypted: boolean };
    expect(snapshot.encrypted).toBe(true);

    // The search finds the marker where it is in the clear (s3rver keeps object bodies as files).
    await s3.client.send(new PutObjectCommand({ Bucket: BUCKET, Key: "control/plain", Body: `x${MARKER}x` }));
    expect(filesWithMarker(join(tmp.path, "s3")).length).toBe(1);
    await s3.client.send(new DeleteObjectCommand({ Bucket: BUCKET, Key: "control/plain" }));
    const manifest = decodeStreamManifest(await s3.store("enc/").get(STREAM_MANIFEST_KEY).then(async (body) => {
      const chunks: Buffer[] = [];
      for await (const c of body!) chunks.push(c as Buffer);
      return Buffer.concat(chunks);
    }), "manifest");
    expect(manifest.segments.length).toBeGreaterThanOrEqual(1);
    expect(manifest.segments.every((seg) => seg.keyId?.startsWith("local:"))).toBe(true);

    // No marker anywhere: data directory (log, sidecars, databases with WAL and shm), bucket, archive.
    expect(filesUnder(join(dataDir, "log")).filter((f) => f.endsWith(".segment")).length).toBeGreaterThanOrEqual(2);
    const dataFiles = filesUnder(dataDir);
    expect(dataFiles.some((f) => f.endsWith("projections.sqlite-wal") || f.endsWith("events.sqlite-wal"))).toBe(true);
    expect(filesWithMarker(dataDir)).toEqual([]);
    expect(filesUnder(join(tmp.path, "s3")).length).toBeGreaterThan(2);
    expect(filesWithMarker(join(tmp.path, "s3"))).toEqual([]);
    expect(filesWithMarker(archive)).toEqual([]);

    // Restart: everything reads and queries back.
    await node.stop();
    node.start(["--config", cfg]);
    await node.leading();
    const again = new VerityClient({ endpoints: [node.endpoint] });
    const read = await again.readAll({ tenant: "acme", limit: 10_000 });
    expect(read.events).toHaveLength(EVENTS);
    expect(read.events.every((e) => e.stream.startsWith(MARKER) && e.eventId.startsWith(MARKER) && e.metadata.note === MARKER)).toBe(true);
    expect(Buffer.from(read.events[0]!.data).toString()).toContain(MARKER);
    const q2 = await again.query({ tenant: "acme", sql: `SELECT COUNT(*), SUM(instr(body, '${MARKER}') > 0) FROM notes` });
    expect(q2.rows).toEqual([[EVENTS, EVENTS]]);
    again.close();
    client.close();
    await node.stop();
    expect(filesWithMarker(dataDir)).toEqual([]);

    // Restore without a key, and with another key file: refused, saying what to do; nothing restored.
    const noKey = join(tmp.path, "restored-no-key");
    const r0 = await runCli("verity-restore", ["--source", archive, "--data-dir", noKey, "--new-cluster"]);
    expect(r0.code).toBe(1);
    expect(r0.stderr).toMatch(/is encrypted .*give --config/);
    expect(readdirSync(noKey)).toEqual([]);
    const wrongKey = join(tmp.path, "restored-wrong-key");
    const r1 = await runCli("verity-restore", ["--source", archive, "--data-dir", wrongKey, "--new-cluster", "--config", otherCfg]);
    expect(r1.code).toBe(1);
    expect(r1.stderr).toMatch(/does not unwrap.*kms_key_id/s);
    expect(readdirSync(wrongKey)).toEqual([]);

    // The stream backup restores too (its segments are encrypted: the key is needed to rebuild the databases).
    const fromS3 = join(tmp.path, "restored-s3");
    const s3NoKey = await runCli("verity-restore", ["--source", `s3://${BUCKET}/enc/`, ...s3.flags(), "--data-dir", join(tmp.path, "restored-s3-no-key"), "--new-cluster"]);
    expect(s3NoKey.code).toBe(1);
    expect(s3NoKey.stderr).toMatch(/segments are encrypted: give verity-restore --config/);
    expect(readdirSync(join(tmp.path, "restored-s3-no-key"))).toEqual([]);
    const rs = await runCli("verity-restore", ["--source", `s3://${BUCKET}/enc/`, ...s3.flags(), "--data-dir", fromS3, "--new-cluster", "--config", cfg]);
    expect(rs.code, rs.stdout + rs.stderr).toBe(0);
    expect(existsSync(join(fromS3, "state", "events.key"))).toBe(true);
    expect(filesWithMarker(fromS3)).toEqual([]);

    // Restore with the same key file onto another data directory, verify it, start a node on it.
    const restored = join(tmp.path, "restored");
    const r = await runCli("verity-restore", ["--source", archive, "--data-dir", restored, "--new-cluster", "--config", cfg]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/OK: verify passed/);
    expect(filesWithMarker(restored)).toEqual([]);
    const verify = await runCli("verity-admin", ["verify", "--data-dir", restored, "--config", cfg]);
    expect(verify.code, verify.stdout + verify.stderr).toBe(0);
    const verifyNoKey = await runCli("verity-admin", ["verify", "--data-dir", restored]);
    expect(verifyNoKey.code).toBe(1);
    expect(verifyNoKey.stdout + verifyNoKey.stderr).toMatch(/--config/);
    const restoredNode = await TestNode.create(restored);
    nodes.push(restoredNode);
    restoredNode.start(["--config", cfg]);
    await restoredNode.leading().catch((e: Error) => {
      throw new Error(`${e.message}\n${restoredNode.child?.output.slice(-3000)}`);
    });
    const rc = new VerityClient({ endpoints: [restoredNode.endpoint] });
    expect((await rc.query({ tenant: "acme", sql: `SELECT COUNT(*), SUM(instr(body, '${MARKER}') > 0) FROM notes` })).rows).toEqual([[EVENTS, EVENTS]]);
    expect((await rc.readAll({ tenant: "acme", limit: 10_000 })).events).toHaveLength(EVENTS);
    rc.close();
    await restoredNode.stop();
    expect(filesWithMarker(restored)).toEqual([]);
  });
});
