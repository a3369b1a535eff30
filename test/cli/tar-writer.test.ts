/**
 * The ustar writer of `verity-admin diagnostics export`: archives it writes are extracted by the
 * system's `tar -xzf` and compared byte for byte (text, binary, empty, block-sized and long-path
 * files, directories, modes and times); paths ustar cannot hold are refused with the reason.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import { afterAll, describe, expect, it } from "vitest";
import { TAR_BLOCK_BYTES, TarWriter, splitTarPath } from "../../src/cli/tar-writer.js";
import { seededRandom, tempDir } from "../helpers/log-fixtures.js";

const tmp = tempDir("tar-writer");
afterAll(() => tmp.cleanup());

function randomBytes(seed: number, n: number): Buffer {
  const next = seededRandom(seed);
  const out = Buffer.alloc(n);
  for (let i = 0; i < n; i++) out[i] = Math.floor(next() * 256);
  return out;
}

describe("TarWriter", () => {
  it("writes a .tar.gz that the system tar extracts to the same bytes", () => {
    const longDir = "verity-diag/" + "d".repeat(90);
    const files: Array<[string, Buffer]> = [
      ["verity-diag/summary.txt", Buffer.from("collected: everything\nnaïve UTF-8 ✓\n")],
      ["verity-diag/empty.txt", Buffer.alloc(0)],
      ["verity-diag/block.bin", randomBytes(1, TAR_BLOCK_BYTES)],
      ["verity-diag/binary.bin", randomBytes(2, 3 * TAR_BLOCK_BYTES + 17)],
      ["verity-diag/big.bin", randomBytes(3, 1_000_003)],
      [`${longDir}/${"f".repeat(95)}.txt`, Buffer.from("a path longer than 100 bytes, split into prefix and name\n")],
    ];
    const mtime = new Date("2024-01-15T10:30:00Z");
    const tar = new TarWriter();
    tar.addDirectory("verity-diag", { mtime });
    tar.addDirectory(longDir, { mtime });
    for (const [name, data] of files) tar.addFile(name, data, { mtime, mode: name.endsWith(".bin") ? 0o600 : 0o644 });
    const gz = tar.finishGzip();
    expect(gunzipSync(gz).length % TAR_BLOCK_BYTES).toBe(0);

    const archive = join(tmp.path, "out.tar.gz");
    writeFileSync(archive, gz);
    const into = join(tmp.path, "extracted");
    mkdirSync(into);
    execFileSync("tar", ["-xzf", archive, "-C", into], { stdio: ["ignore", "ignore", "pipe"] });
    for (const [name, data] of files) {
      expect(readFileSync(join(into, name)).equals(data), name).toBe(true);
      expect(statSync(join(into, name)).mtime.toISOString()).toBe(mtime.toISOString());
    }
    expect(statSync(join(into, "verity-diag/binary.bin")).mode & 0o777).toBe(0o600);
    expect(statSync(join(into, longDir)).isDirectory()).toBe(true);

    // tar's own listing agrees on names and sizes, and reads no warnings (valid checksums, ustar magic).
    const listed = spawnSync("tar", ["-tzvf", archive], { encoding: "utf8" });
    expect(listed.status).toBe(0);
    expect(listed.stderr).toBe("");
    const listing = listed.stdout;
    for (const [name, data] of files) expect(listing).toMatch(new RegExp(`\\s${data.length}\\s.*${name.replace(/[.]/g, "\\.")}`));
  });

  it("refuses paths ustar cannot hold, and entries added twice", () => {
    expect(() => splitTarPath("/etc/passwd")).toThrow(/relative path/);
    expect(() => splitTarPath("a/../b")).toThrow(/without "\.\."/);
    expect(() => splitTarPath("x".repeat(101))).toThrow(/at most 100 bytes/);
    expect(splitTarPath("a/" + "b".repeat(100))).toEqual({ prefix: "a", name: "b".repeat(100) });
    const tar = new TarWriter();
    tar.addFile("a.txt", "x");
    expect(() => tar.addFile("a.txt", "y")).toThrow(/added twice/);
  });
});
