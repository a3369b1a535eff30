/**
 * The measurements of docs/backup.md, run only when asked (they take a minute or more):
 *
 *   npm run build && VERITY_BACKUP_MEASURE=1 npx vitest run test/backup/measure-backup.test.ts
 *
 * Optional: VERITY_BACKUP_MEASURE_SEGMENT (default 16MB), VERITY_BACKUP_MEASURE_MB (log to write, default 256).
 *
 * One node (fsync on) with a counts projection, s3rver in its own process on loopback, the
 * streamer running continuously while a client appends 1 KB events in batches of 256: the
 * recovery point of every segment (from its seal, the index file's time, to the manifest listing
 * it), the streamer's upload rate; then a restore from S3 (download + checksums, replay of the event
 * index and projections, verify), a snapshot of the running node and a restore of it. Prints one
 * JSON object with everything.
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { statSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { percentile } from "../../src/backup/streamer.js";
import { AdminApi } from "../../src/client/admin-client.js";
import { VerityClient } from "../../src/client/verity-client.js";
import { tempDir } from "../helpers/log-fixtures.js";
import { freePort, until } from "../helpers/process-cluster.js";
import { BUCKET, TestNode, exitOf, root, runCli, startChild } from "./backup-helpers.js";

const enabled = process.env.VERITY_BACKUP_MEASURE === "1";
const SEGMENT = process.env.VERITY_BACKUP_MEASURE_SEGMENT ?? "16MB";
const TOTAL_MB = Number(process.env.VERITY_BACKUP_MEASURE_MB ?? 256);
const EVENT_BYTES = 1024;
const EVENTS_PER_APPEND = 256;
const MiB = 1024 * 1024;

const stops: (() => void)[] = [];
afterAll(() => {
  for (const s of stops.reverse()) s(); // processes first, their directory last
});

describe.skipIf(!enabled)("backup measurements", () => {
  it("recovery point, upload, restore and snapshot rates", async () => {
    const tmp = tempDir("backup-measure");
    stops.push(() => tmp.cleanup());
    const port = await freePort();
    const s3 = spawn(process.execPath, [join(root, "node_modules", "s3rver", "bin", "s3rver.js"), "-d", join(tmp.path, "s3"), "-a", "127.0.0.1", "-p", String(port), "-s", "--configure-bucket", BUCKET], { stdio: "ignore" });
    stops.push(() => s3.kill("SIGKILL"));
    const endpoint = `http://127.0.0.1:${port}`;
    await until("s3rver", async () => (await fetch(endpoint).then(() => true, () => undefined)));
    const s3flags = ["--endpoint", endpoint, "--force-path-style"];

    const node = await TestNode.create(join(tmp.path, "node"));
    node.start();
    stops.push(() => node.kill());
    await node.leading();
    // TestNode starts with 1 MB segments; restart with the measured size.
    await node.stop();
    node.child = startChild("verity-server", ["--data-dir", node.dataDir, "--bind", node.endpoint, "--cluster-address", `127.0.0.1:${node.cluster}`, "--metrics-address", `127.0.0.1:${node.metrics}`], { ...process.env, VERITY_STORAGE_SEGMENT_SIZE: SEGMENT });
    await node.leading();
    const api = new AdminApi({ endpoints: [node.endpoint], tls: undefined });
    await api.call("createTenant", { tenant: "acme" });
    await api.call("migrate", { tenant: "acme", name: "001", sql: "CREATE TABLE counts (stream TEXT PRIMARY KEY, n INTEGER NOT NULL);" });
    await api.call("createProjection", { tenant: "acme", definition: 'name = "counts"\n[[handlers]]\nevent_type = "E"\nsql = "INSERT INTO counts (stream, n) VALUES (:_stream, 1) ON CONFLICT (stream) DO UPDATE SET n = n + 1"\n' });

    const streamer = startChild("verity-backup", ["stream", "--source", join(node.dataDir, "log"), "--destination", `s3://${BUCKET}/m/`, ...s3flags, "--json"]);
    stops.push(() => streamer.process.kill("SIGKILL"));
    const client = new VerityClient({ endpoints: [node.endpoint] });
    // Random text: about as compressible as real JSON payloads with ids and values (base64: 3/4 entropy).
    const pad = () => randomBytes(((EVENT_BYTES - 40) * 3) >> 2).toString("base64");
    const appends = Math.ceil((TOTAL_MB * MiB) / (EVENT_BYTES * EVENTS_PER_APPEND));
    const writeStarted = Date.now();
    for (let i = 0; i < appends; i++) {
      await client.append({ tenant: "acme", stream: `s-${i % 16}`, events: Array.from({ length: EVENTS_PER_APPEND }, (_, j) => ({ type: "E", data: { i, j, pad: pad() } })) });
    }
    const writeMs = Date.now() - writeStarted;
    client.close();
    const sealed = () => streamer.output.split("\n").filter((l) => l.includes('"event":"uploaded"')).length;
    const logSegments = async () => (await import("node:fs")).readdirSync(join(node.dataDir, "log")).filter((n) => /^\d{8}\.segment$/.test(n)).length;
    const expectedSegments = await logSegments();
    await until("every sealed segment uploaded", async () => (sealed() >= expectedSegments ? true : undefined), 120_000);
    streamer.process.kill("SIGTERM");
    await exitOf(streamer.process);
    const lines = streamer.output.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as Record<string, unknown>);
    const uploads = lines.filter((l) => l.event === "uploaded");
    const summary = lines.find((l) => l.event === "summary")!;
    const recovery = uploads.map((u) => u.recovery_point_ms as number);
    const uploadMs = uploads.reduce((n, u) => n + (u.duration_ms as number), 0);
    const uploadBytes = uploads.reduce((n, u) => n + (u.bytes as number), 0);

    const restored = join(tmp.path, "restored-s3");
    const r = await runCli("verity-restore", ["--source", `s3://${BUCKET}/m/`, ...s3flags, "--data-dir", restored, "--new-cluster", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    const restore = JSON.parse(r.stdout) as Record<string, number>;

    const archive = join(tmp.path, "snap.tar.gz");
    const snapStarted = Date.now();
    const sn = await runCli("verity-backup", ["snapshot", "--data-dir", node.dataDir, "--output", archive, "--json"]);
    expect(sn.code, sn.stderr).toBe(0);
    const snap = JSON.parse(sn.stdout) as Record<string, number>;
    const snapMs = Date.now() - snapStarted;
    const rs = await runCli("verity-restore", ["--source", archive, "--data-dir", join(tmp.path, "restored-snap"), "--new-cluster", "--json"]);
    expect(rs.code, rs.stderr).toBe(0);
    const snapRestore = JSON.parse(rs.stdout) as Record<string, number>;
    await node.stop();

    const mbs = (bytes: number, ms: number) => Math.round((bytes / MiB / (ms / 1000)) * 10) / 10;
    const result = {
      segment_size: SEGMENT, log_mb: Math.round(uploadBytes / MiB), segments: uploads.length, events: appends * EVENTS_PER_APPEND,
      write_mb_s: mbs(uploadBytes, writeMs),
      recovery_point_ms: { p50: percentile(recovery, 50), p90: percentile(recovery, 90), max: Math.max(...recovery) },
      upload: { mb_s_while_uploading: mbs(uploadBytes, uploadMs), per_segment_ms_p50: percentile(uploads.map((u) => u.duration_ms as number), 50), summary_lag_segments: summary.lag_segments },
      restore_s3: { bytes: restore.bytes, fetch_mb_s: mbs(restore.bytes!, restore.fetch_ms!), replay_ms: restore.replay_ms, total_ms: restore.duration_ms, total_mb_s: mbs(restore.bytes!, restore.duration_ms!) },
      snapshot: { bytes: snap.bytes, archive_bytes: statSync(archive).size, ms: snapMs, mb_s: mbs(snap.bytes!, snap.duration_ms!) },
      restore_snapshot: { fetch_ms: snapRestore.fetch_ms, replay_ms: snapRestore.replay_ms, total_ms: snapRestore.duration_ms, total_mb_s: mbs(snapRestore.bytes!, snapRestore.duration_ms!) },
    };
    process.stdout.write(`BACKUP MEASUREMENTS ${JSON.stringify(result, null, 2)}\n`);
    expect(uploads.length).toBe(expectedSegments);
  }, 900_000);
});
