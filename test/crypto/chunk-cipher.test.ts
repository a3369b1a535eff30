import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CorruptionError } from "../../src/errors.js";
import { createDecryptingStream, createEncryptingStream, decodeEncryptedFileHeader } from "../../src/crypto/chunk-cipher.js";
import { backupFileIdentity } from "../../src/crypto/encryption-context.js";
import type { EncryptionContext } from "../../src/crypto/encryption-context.js";
import { LocalKeyProvider, initLocalKeyFile } from "../../src/crypto/local-kms.js";

const CHUNK = 1000;
const CONTEXT: EncryptionContext = { clusterId: "cluster-1", fileIdentity: backupFileIdentity("snapshot-000123.tar.gz") };
const FILE = "snapshot-000123.tar.gz.enc";

let dir: string;
let kms: LocalKeyProvider;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "verity-chunks-"));
  await initLocalKeyFile(join(dir, "master.key"));
  kms = await LocalKeyProvider.open(join(dir, "master.key"));
});
afterAll(async () => {
  await kms.close();
  await rm(dir, { recursive: true, force: true });
});

/** Feeds `input` in pieces of `piece` bytes through `transform`, collecting the output. */
async function run(transform: NodeJS.ReadWriteStream, input: Buffer, piece = 777): Promise<Buffer> {
  const out: Buffer[] = [];
  const pieces = Array.from({ length: Math.ceil(input.length / piece) }, (_, i) => input.subarray(i * piece, (i + 1) * piece));
  await pipeline(Readable.from(pieces), transform, new Writable({ write(chunk: Buffer, _e, done) { out.push(chunk); done(); } }));
  return Buffer.concat(out);
}

const encrypt = async (plaintext: Buffer, context = CONTEXT): Promise<Buffer> => run(await createEncryptingStream(kms, context, CHUNK), plaintext);
const decrypt = (sealed: Buffer, context = CONTEXT): Promise<Buffer> => run(createDecryptingStream(kms, context, FILE), sealed, 1234);

async function expectCorrupt(sealed: Buffer, context = CONTEXT): Promise<CorruptionError> {
  let error: unknown;
  try {
    await decrypt(sealed, context);
  } catch (e) {
    error = e;
  }
  expect(error).toBeInstanceOf(CorruptionError);
  expect((error as Error).message).toContain(FILE);
  return error as CorruptionError;
}

describe("chunked file encryption", () => {
  it("round-trips empty, short, exact-multiple and long files, fed in any piece sizes", async () => {
    for (const size of [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 10_007]) {
      const plaintext = randomBytes(size);
      const sealed = await encrypt(plaintext);
      const header = decodeEncryptedFileHeader(sealed, FILE);
      expect(header).not.toBe("more");
      expect((await decrypt(sealed)).equals(plaintext)).toBe(true);
      if (size > 16) expect(sealed.includes(plaintext.subarray(0, 16))).toBe(false);
    }
  });

  it("refuses a file cut at a chunk boundary, cut inside a chunk, or cut inside its header", async () => {
    const plaintext = randomBytes(5 * CHUNK);
    const sealed = await encrypt(plaintext);
    const header = decodeEncryptedFileHeader(sealed, FILE);
    if (header === "more") throw new Error("header");
    const sealedChunk = CHUNK + 28;
    const boundary = header.bytes.length + 3 * sealedChunk;
    const cut = await expectCorrupt(sealed.subarray(0, boundary));
    expect(cut.location.offset).toBe(header.bytes.length + 2 * sealedChunk);
    await expectCorrupt(sealed.subarray(0, boundary + 100));
    await expectCorrupt(sealed.subarray(0, 10));
  });

  it("refuses reordered, dropped, repeated and appended chunks, and bit flips anywhere", async () => {
    const sealed = await encrypt(randomBytes(4 * CHUNK + 10));
    const header = decodeEncryptedFileHeader(sealed, FILE);
    if (header === "more") throw new Error("header");
    const h = header.bytes.length;
    const n = CHUNK + 28;
    const chunk = (i: number): Buffer => sealed.subarray(h + i * n, h + (i + 1) * n);
    const head = sealed.subarray(0, h);
    await expectCorrupt(Buffer.concat([head, chunk(1), chunk(0), sealed.subarray(h + 2 * n)])); // swapped
    await expectCorrupt(Buffer.concat([head, chunk(0), sealed.subarray(h + 2 * n)])); // dropped
    await expectCorrupt(Buffer.concat([head, chunk(0), chunk(0), sealed.subarray(h + n)])); // repeated
    await expectCorrupt(Buffer.concat([sealed, chunk(0)])); // appended
    for (const at of [0, 9, 12, 20, h - 1, h, h + 20, h + n + 5, sealed.length - 1]) {
      const damaged = Buffer.from(sealed);
      damaged[at]! ^= 0x10;
      await expectCorrupt(damaged);
    }
  });

  it("refuses the file under another context (another backup object or cluster) as corruption of its key", async () => {
    const sealed = await encrypt(randomBytes(100));
    const error = await expectCorrupt(sealed, { ...CONTEXT, fileIdentity: backupFileIdentity("snapshot-000124.tar.gz") });
    expect(error.message).toMatch(/wrapped data key/);
  });
});
