/**
 * The streamer and the restore in one process, against s3rver on loopback, on data directories
 * written with the real log (1 MB segments) and a commit index the test controls: a segment is
 * uploaded once, and only when all of it is committed; a crash between an upload and the
 * manifest's replacement leaves neither a gap nor a duplicate; a source that does not line up
 * with the backup, and a second streamer on the same prefix, are refused; a point-in-time restore
 * gives the source's records exactly; a damaged or missing object stops the restore with its name;
 * a non-empty target is refused without --force.
 */
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { DeleteObjectCommand, GetObjectCommand, PutObjectCommand } from "@aws-sdk/client-s3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { STREAM_MANIFEST_KEY, decodeStreamManifest, type StreamManifest } from "../../src/backup/manifest.js";
import type { ObjectStore } from "../../src/backup/object-store.js";
import { ByteProgress } from "../../src/backup/progress.js";
import { restore, type RestoreOptions } from "../../src/backup/restore.js";
import { Streamer } from "../../src/backup/streamer.js";
import { resolveSource } from "../../src/backup/source-dir.js";
import { ErrorCode } from "../../src/errors.js";
import { SEGMENT_BYTES_MIN } from "../../src/limits.js";
import { DataDir } from "../../src/log/data-dir.js";
import { NodeFileSystem } from "../../src/log/node-fs.js";
import { appendMany, tempDir } from "../helpers/log-fixtures.js";
import { BUCKET, TestS3, readRecords, recordLines } from "./backup-helpers.js";

const tmp = tempDir("backup-stream");
let s3: TestS3;
const fs = new NodeFileSystem();

beforeAll(async () => {
  s3 = await TestS3.start(join(tmp.path, "s3"));
});
afterAll(async () => {
  await s3.close();
  tmp.cleanup();
});

/** A data directory with `batches` x 100 records of 3 KB (about 3.5 batches per 1 MB segment). */
async function makeDataDir(name: string, batches: number): Promise<string> {
  const path = join(tmp.path, name);
  const dir = await DataDir.open({ path, segmentBytes: SEGMENT_BYTES_MIN });
  for (let b = 0; b < batches; b++) await appendMany(dir.log, 100, 1 + Math.floor(b / 4), 3000);
  await dir.close();
  return path;
}

/** Sealed segments of a data dir, by sequence number. */
function sealedOf(dataDir: string): { sequence: number; name: string }[] {
  return readdirSync(join(dataDir, "log")).filter((n) => /^\d{8}\.segment$/.test(n)).sort().map((name) => ({ sequence: Number(name.slice(0, 8)), name }));
}

class Commit {
  value = 0;
  readonly description = "test";
  async commitIndex(): Promise<number> {
    return this.value;
  }
}

async function manifestOf(prefix: string): Promise<StreamManifest> {
  const r = await s3.client.send(new GetObjectCommand({ Bucket: BUCKET, Key: prefix + STREAM_MANIFEST_KEY }));
  return decodeStreamManifest(Buffer.from(await r.Body!.transformToByteArray()), "manifest");
}

/** The bucket holds exactly the manifest's segments, each once, byte for byte the node's file. */
async function expectBucketMatches(prefix: string, dataDir: string): Promise<StreamManifest> {
  const manifest = await manifestOf(prefix);
  const objects = (await s3.store(prefix).list("segments/", 100_000)).map((o) => o.key).sort();
  expect(objects).toEqual(manifest.segments.map((s) => s.key).sort());
  let expected = 1;
  for (const s of manifest.segments) {
    expect(s.firstIndex).toBe(expected);
    expected = s.lastIndex + 1;
    const body = await s3.client.send(new GetObjectCommand({ Bucket: BUCKET, Key: prefix + s.key }));
    const bytes = Buffer.from(await body.Body!.transformToByteArray());
    expect(createHash("sha256").update(bytes).digest("hex")).toBe(s.sha256);
    const local = readFileSync(join(dataDir, "log", `${String(s.sequence).padStart(8, "0")}.segment`));
    expect(bytes.equals(local), `object ${s.key} equals the node's file`).toBe(true);
  }
  return manifest;
}

const quiet = new ByteProgress("test", 0, false, true);

function restoreOptions(dataDir: string, store: ObjectStore, position?: number): RestoreOptions {
  return { fs, dataDir, source: { kind: "s3", store }, position, force: false, start: { kind: "new-cluster", nodeId: undefined }, progress: quiet };
}

describe("verity-backup stream (in process)", () => {
  let source: string;
  beforeAll(async () => {
    source = await makeDataDir("source", 16);
  });

  it("uploads each sealed segment once, and only when every record in it is committed", async () => {
    const sealed = sealedOf(source);
    expect(sealed.length).toBeGreaterThanOrEqual(4);
    const commit = new Commit();
    const uploads: number[] = [];
    const streamer = new Streamer({ fs, source: resolveSource(join(source, "log")), store: s3.store("gated/"), commit, onUpload: (r) => uploads.push(r.segment.sequence) });
    // Nothing committed: nothing uploaded, and the pass says a segment waits.
    expect(await streamer.pass()).toEqual({ uploaded: 0, waitingForCommit: true });
    commit.value = Number.MAX_SAFE_INTEGER;
    const all = await streamer.pass();
    expect(all).toEqual({ uploaded: sealed.length, waitingForCommit: false });
    const manifest = await expectBucketMatches("gated/", source);
    expect(manifest.segments.map((s) => s.sequence)).toEqual(sealed.map((s) => s.sequence));
    expect(uploads).toEqual(sealed.map((s) => s.sequence));
    // Again: nothing new, nothing uploaded twice.
    expect(await streamer.pass()).toEqual({ uploaded: 0, waitingForCommit: false });

    // A fresh streamer with the commit index one short of the second segment's end uploads one segment and waits.
    const second = manifest.segments[1]!;
    const gated = new Commit();
    gated.value = second.lastIndex - 1;
    const s2 = new Streamer({ fs, source: resolveSource(source), store: s3.store("gated-2/"), commit: gated });
    expect(await s2.pass()).toEqual({ uploaded: 1, waitingForCommit: true });
    expect((await manifestOf("gated-2/")).segments.map((s) => s.lastIndex)).toEqual([manifest.segments[0]!.lastIndex]);
    gated.value = second.lastIndex;
    expect(await s2.pass()).toEqual({ uploaded: 1, waitingForCommit: true });
    expect(s2.stats.lastUploadedIndex).toBe(second.lastIndex);
    expect(s2.stats.lagSegments).toBe(sealed.length - 2);
  });

  it("resumes after a crash between an upload and the manifest: no gap, no duplicate", async () => {
    const commit = new Commit();
    commit.value = Number.MAX_SAFE_INTEGER;
    const real = s3.store("crash/");
    let manifestWrites = 0;
    // The "process" dies when it replaces the manifest for the third time: the segment is uploaded, the manifest is not.
    const dying: ObjectStore = {
      location: real.location,
      putFile: (...a) => real.putFile(...a),
      get: (k) => real.get(k),
      list: (p, l) => real.list(p, l),
      putBytes: async (k, b, t) => {
        if (k === STREAM_MANIFEST_KEY && ++manifestWrites === 3) throw new Error("killed");
        return real.putBytes(k, b, t);
      },
    };
    await expect(new Streamer({ fs, source: resolveSource(source), store: dying, commit }).pass()).rejects.toThrow("killed");
    const before = await manifestOf("crash/");
    expect(before.segments).toHaveLength(2);
    // The orphan object is there, not in the manifest.
    expect((await real.list("segments/", 1000)).length).toBe(3);
    const resumed = new Streamer({ fs, source: resolveSource(source), store: real, commit });
    const r = await resumed.pass();
    expect(r.uploaded).toBe(sealedOf(source).length - 2);
    const after = await expectBucketMatches("crash/", source);
    expect(after.segments.slice(0, 2)).toEqual(before.segments);
  });

  it("refuses another cluster's log, and a second streamer on the same prefix", async () => {
    const other = await makeDataDir("other-cluster", 5);
    const commit = new Commit();
    commit.value = Number.MAX_SAFE_INTEGER;
    await new Streamer({ fs, source: resolveSource(source), store: s3.store("shared/"), commit }).pass();
    await expect(new Streamer({ fs, source: resolveSource(other), store: s3.store("shared/"), commit }).pass()).rejects.toMatchObject({
      code: ErrorCode.FAILED_PRECONDITION, message: expect.stringMatching(/belongs to cluster .*give each cluster its own prefix/),
    });
    // Two streamers of one node on one prefix: the one whose manifest is stale stops.
    const gated = new Commit();
    const a = new Streamer({ fs, source: resolveSource(source), store: s3.store("two/"), commit: gated });
    const b = new Streamer({ fs, source: resolveSource(source), store: s3.store("two/"), commit: gated });
    await a.pass();
    await b.pass(); // both have read "no manifest yet"
    gated.value = Number.MAX_SAFE_INTEGER;
    await a.pass();
    await expect(b.pass()).rejects.toMatchObject({ code: ErrorCode.FAILED_PRECONDITION, message: expect.stringMatching(/another verity-backup stream/) });
  });
});

describe("verity-restore from S3 (in process)", () => {
  let source: string;
  let manifest: StreamManifest;
  beforeAll(async () => {
    source = await makeDataDir("restore-source", 14);
    const commit = new Commit();
    commit.value = Number.MAX_SAFE_INTEGER;
    await new Streamer({ fs, source: resolveSource(source), store: s3.store("restore/"), commit }).pass();
    manifest = await manifestOf("restore/");
  });

  it("restores the log up to a position, record by record as the source", async () => {
    const seg = manifest.segments[2]!;
    const position = Math.floor((seg.firstIndex + seg.lastIndex) / 2);
    const target = join(tmp.path, "restored-pit");
    const r = await restore(restoreOptions(target, s3.store("restore/"), position));
    expect(r.ok).toBe(true);
    expect(r.position).toBe(position);
    expect(r.segments).toBe(3);
    const restored = await readRecords(target, Number.MAX_SAFE_INTEGER);
    const original = await readRecords(source, position);
    expect(restored.length).toBe(position);
    expect(recordLines(restored)).toEqual(recordLines(original));
    expect(readdirSync(join(target, "log")).sort()).toEqual(["00000000.index", "00000000.segment", "00000001.index", "00000001.segment", "current.segment"]);
    expect(JSON.parse(readFileSync(join(target, "meta", "state.json"), "utf8"))).toMatchObject({ membership: { index: position, voters: [1], learners: [] }, vote: 0 });
    expect(existsSync(join(target, "LOCK"))).toBe(false);
    expect(existsSync(join(target, ".verity-restore"))).toBe(false);
  });

  it("refuses a non-empty data directory without --force, and replaces it with --force", async () => {
    const target = join(tmp.path, "occupied");
    mkdirSync(join(target, "log"), { recursive: true });
    writeFileSync(join(target, "log", "00000000.segment"), "old");
    await expect(restore(restoreOptions(target, s3.store("restore/")))).rejects.toMatchObject({
      code: ErrorCode.FAILED_PRECONDITION, message: expect.stringMatching(/is not empty \(it holds log\).*--force/),
    });
    expect(readFileSync(join(target, "log", "00000000.segment"), "utf8")).toBe("old");
    const r = await restore({ ...restoreOptions(target, s3.store("restore/")), force: true });
    expect(r.ok).toBe(true);
    expect(r.removed).toEqual(["log"]);
    expect(r.position).toBe(manifest.segments[manifest.segments.length - 1]!.lastIndex);
  });

  it("stops at a damaged or a missing object, naming it, and leaves the target empty", async () => {
    // A copy of the backup to damage.
    const store = s3.store("damaged/");
    const commit = new Commit();
    commit.value = Number.MAX_SAFE_INTEGER;
    await new Streamer({ fs, source: resolveSource(source), store, commit }).pass();
    const victim = manifest.segments[1]!;
    const body = await s3.client.send(new GetObjectCommand({ Bucket: BUCKET, Key: "damaged/" + victim.key }));
    const bytes = Buffer.from(await body.Body!.transformToByteArray());
    bytes[bytes.length >> 1]! ^= 0x01;
    await s3.client.send(new PutObjectCommand({ Bucket: BUCKET, Key: "damaged/" + victim.key, Body: bytes }));
    const target = join(tmp.path, "restored-damaged");
    await expect(restore(restoreOptions(target, store))).rejects.toMatchObject({
      code: ErrorCode.CORRUPTION, message: expect.stringContaining(`damaged backup: s3://${BUCKET}/damaged/${victim.key}`),
    });
    expect(readdirSync(target)).toEqual([]);
    await s3.client.send(new DeleteObjectCommand({ Bucket: BUCKET, Key: "damaged/" + victim.key }));
    await expect(restore(restoreOptions(target, store))).rejects.toMatchObject({
      code: ErrorCode.CORRUPTION, message: expect.stringMatching(new RegExp(`${victim.key}.*the object is missing from the bucket`)),
    });
    // A position before the damage still restores.
    const r = await restore(restoreOptions(target, store, victim.firstIndex - 1));
    expect(r.ok).toBe(true);
  });
});
