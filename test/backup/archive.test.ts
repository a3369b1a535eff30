/**
 * The snapshot archive and the manifests, without a node: a tar.gz written entry by entry reads
 * back byte for byte (and `tar` lists it); an archive cut anywhere, or with a flipped byte, is
 * refused naming the archive; a manifest whose checksum does not match, or whose segments leave a
 * gap, is refused naming the manifest.
 */
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  DamagedBackupError,
  decodeSnapshotManifest,
  decodeStreamManifest,
  encodeSnapshotManifest,
  encodeStreamManifest,
  type StreamManifest,
} from "../../src/backup/manifest.js";
import { TarGzWriter, readTarGz } from "../../src/backup/tar-gz.js";
import { tempDir } from "../helpers/log-fixtures.js";

const tmp = tempDir("backup-archive");
afterAll(() => tmp.cleanup());

const sha = (b: Buffer): string => createHash("sha256").update(b).digest("hex");

async function readAll(path: string): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  await readTarGz(path, (entry) => {
    const chunks: Buffer[] = [];
    return { write: (c) => void chunks.push(Buffer.from(c)), end: () => void out.set(entry.path, Buffer.concat(chunks)) };
  });
  return out;
}

describe("snapshot archives", () => {
  const files = new Map<string, Buffer>([
    ["log/00000000.segment", randomBytes(1_000_000)],
    ["log/current.segment", randomBytes(513)],
    ["projections/tenant_a-rather-long-tenant-name-of-sixty-four-bytes-0123456789abcdef012/projections.sqlite", Buffer.from("x".repeat(70_000))],
    ["state/events.sqlite", Buffer.alloc(0)],
  ]);
  const archive = join(tmp.path, "a.tar.gz");

  it("reads back what was written, and tar lists it", async () => {
    const w = new TarGzWriter(archive);
    for (const [path, body] of files) {
      const source = join(tmp.path, sha(body));
      writeFileSync(source, body);
      expect(await w.addFile(path, source, body.length)).toBe(sha(body));
    }
    await w.addBytes("backup-manifest.json", Buffer.from("{}"));
    await w.finish();
    const back = await readAll(archive);
    expect([...back.keys()]).toEqual([...files.keys(), "backup-manifest.json"]);
    for (const [path, body] of files) expect(sha(back.get(path)!), path).toBe(sha(body));
    const listed = execFileSync("tar", ["-tzf", archive], { encoding: "utf8" }).trim().split("\n");
    expect(listed).toEqual([...files.keys(), "backup-manifest.json"]);
  });

  it("refuses an archive cut short anywhere, or with a damaged byte, naming it", async () => {
    const whole = readFileSync(archive);
    for (const cut of [10, 1000, Math.floor(whole.length / 2), whole.length - 100, whole.length - 4]) {
      const path = join(tmp.path, `cut-${cut}.tar.gz`);
      writeFileSync(path, whole.subarray(0, cut));
      await expect(readAll(path), `cut at ${cut} of ${whole.length}`).rejects.toThrow(DamagedBackupError);
      await expect(readAll(path)).rejects.toThrow(`damaged backup: ${path}`);
    }
    const flipped = Buffer.from(whole);
    flipped[Math.floor(flipped.length / 3)]! ^= 0x40;
    const path = join(tmp.path, "flipped.tar.gz");
    writeFileSync(path, flipped);
    await expect(readAll(path)).rejects.toThrow(DamagedBackupError);
  });
});

describe("manifests", () => {
  const stream: StreamManifest = {
    clusterId: "0123abcd-0000-4000-8000-000000000001", nodeId: 2, term: 3, membership: { index: 0, voters: [1, 2, 3], learners: [] },
    updatedAt: "2026-01-01T00:00:00.000Z",
    segments: [
      { sequence: 0, key: "segments/00000000-1-10.segment", firstIndex: 1, lastIndex: 10, firstTerm: 1, lastTerm: 2, records: 10, bytes: 900, sha256: "a".repeat(64), sealedAt: undefined, uploadedAt: "2026-01-01T00:00:00.000Z" },
      { sequence: 1, key: "segments/00000001-11-20.segment", firstIndex: 11, lastIndex: 20, firstTerm: 2, lastTerm: 3, records: 10, bytes: 900, sha256: "b".repeat(64), sealedAt: "2026-01-01T00:00:00.000Z", uploadedAt: "2026-01-01T00:00:01.000Z" },
    ],
  };

  it("round-trips, and refuses a changed byte or a gap, naming the manifest", () => {
    const bytes = encodeStreamManifest(stream);
    expect(decodeStreamManifest(bytes, "m")).toEqual(stream);
    const edited = Buffer.from(bytes.toString("utf8").replace('"last_index":20', '"last_index":21'));
    expect(() => decodeStreamManifest(edited, "s3://b/p/manifest.json")).toThrow(/damaged backup: s3:\/\/b\/p\/manifest.json: manifest checksum mismatch/);
    const gap = encodeStreamManifest({ ...stream, segments: [stream.segments[0]!, { ...stream.segments[1]!, firstIndex: 12, records: 9 }] });
    expect(() => decodeStreamManifest(gap, "m")).toThrow(/starts at index 12, expected 11: the segments are not contiguous/);
    expect(() => decodeSnapshotManifest(bytes, "m")).toThrow(/not a "verity-snapshot" one/);
  });

  it("checks that a snapshot's segments end at its position", () => {
    const snapshot = { ...stream, position: 20, createdAt: stream.updatedAt, databases: [{ path: "state/events.sqlite", bytes: 1, sha256: "c".repeat(64), appliedPosition: 20, tenant: undefined }] };
    expect(decodeSnapshotManifest(encodeSnapshotManifest(snapshot), "m").position).toBe(20);
    expect(() => decodeSnapshotManifest(encodeSnapshotManifest({ ...snapshot, position: 19 }), "m")).toThrow(/end at index 20, not at the snapshot's position 19/);
  });
});
