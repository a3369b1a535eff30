/**
 * Streaming tar.gz for snapshots: ustar headers (encoded and decoded by npm `tar`'s Header), file
 * bodies streamed from disk with backpressure, gzip from node:zlib. Any `tar -xzf` extracts a
 * snapshot; the reader here is the one verity-restore uses, so that a truncated or damaged archive
 * is refused naming the archive and the entry where it breaks, and every body is hashed on the way.
 */

import { createHash } from "node:crypto";
import { createReadStream, createWriteStream, type WriteStream } from "node:fs";
import { open } from "node:fs/promises";
import { once } from "node:events";
import { createGunzip, createGzip, type Gzip } from "node:zlib";
import { Header } from "tar";
import type { Transform } from "node:stream";
import { CorruptionError, InvalidArgumentError, QuotaExceededError, VerityError, invariant } from "../errors.js";
import { ARCHIVE_ENTRIES_MAX, COPY_CHUNK_BYTES } from "./backup-limits.js";
import { DamagedBackupError } from "./manifest.js";

const BLOCK = 512;
/** Output chunk of the gunzip stream while reading an archive. */
const GUNZIP_CHUNK_BYTES = 256 * 1024;
/** gzip level 1: segments are mostly JSON and compress well even so; higher levels cost several times the CPU. */
export const SNAPSHOT_GZIP_LEVEL = 1;
/** The largest size ustar's 11 octal digits hold; larger files use the base-256 extension GNU tar reads. */
const USTAR_SIZE_MAX = 8 ** 11 - 1;

/** Resolves once `stream` drains; rejects if it fails first. Leaves no listener behind. */
export function drained(stream: NodeJS.EventEmitter): Promise<void> {
  return new Promise((resolve, reject) => {
    const onDrain = (): void => {
      stream.removeListener("error", onError);
      resolve();
    };
    const onError = (e: Error): void => {
      stream.removeListener("drain", onDrain);
      reject(e);
    };
    stream.once("drain", onDrain);
    stream.once("error", onError);
  });
}

function headerBlock(path: string, size: number, mtime: Date): Buffer {
  const h = new Header({ path, mode: 0o600, uid: 0, gid: 0, size, mtime, type: "File", uname: "", gname: "" });
  const block = Buffer.alloc(BLOCK);
  h.encode(block, 0);
  if (h.needPax && size <= USTAR_SIZE_MAX) throw new InvalidArgumentError(`archive entry "${path}": the path does not fit a ustar header`);
  return block;
}

/** Writes a .tar.gz file entry by entry. */
export class TarGzWriter {
  private readonly gzip: Gzip;
  private readonly file: WriteStream;
  private entries = 0;
  private failure: Error | undefined;

  /**
   * `encryption`: an encrypted archive (archive-encryption.ts): the prologue is written in the clear,
   * then the tar.gz goes through `encrypt` into the file.
   */
  constructor(readonly path: string, encryption?: { readonly prologue: Buffer; readonly encrypt: Transform }) {
    this.file = createWriteStream(path, { flags: "wx", mode: 0o600 });
    this.gzip = createGzip({ level: SNAPSHOT_GZIP_LEVEL });
    if (encryption === undefined) {
      this.gzip.pipe(this.file);
    } else {
      this.file.write(encryption.prologue);
      encryption.encrypt.on("error", (e) => {
        this.failure ??= e;
        this.gzip.destroy(e);
      });
      this.gzip.pipe(encryption.encrypt).pipe(this.file);
    }
    const fail = (e: Error): void => {
      this.failure ??= e;
    };
    this.file.on("error", (e) => {
      fail(e);
      this.gzip.destroy(e); // so that a write waiting for "drain" ends
    });
    this.gzip.on("error", fail);
  }

  private async push(chunk: Buffer): Promise<void> {
    if (this.failure !== undefined) throw this.failure;
    if (!this.gzip.write(chunk)) await drained(this.gzip);
    if (this.failure !== undefined) throw this.failure;
  }

  private begin(path: string, size: number): Promise<void> {
    if (++this.entries > ARCHIVE_ENTRIES_MAX) throw new QuotaExceededError("ARCHIVE_ENTRIES_MAX", ARCHIVE_ENTRIES_MAX, `an archive holds at most ${ARCHIVE_ENTRIES_MAX} entries`);
    return this.push(headerBlock(path, size, new Date()));
  }

  private pad(size: number): Promise<void> {
    const rest = size % BLOCK;
    return rest === 0 ? Promise.resolve() : this.push(Buffer.alloc(BLOCK - rest));
  }

  /** Adds the first `bytes` bytes of the file at `source`; returns their SHA-256 (hex). */
  async addFile(path: string, source: string, bytes: number, onBytes?: (n: number) => void): Promise<string> {
    await this.begin(path, bytes);
    const hash = createHash("sha256");
    let copied = 0;
    if (bytes > 0) {
      for await (const chunk of createReadStream(source, { start: 0, end: bytes - 1, highWaterMark: COPY_CHUNK_BYTES })) {
        const b = chunk as Buffer;
        hash.update(b);
        copied += b.length;
        await this.push(b);
        onBytes?.(b.length);
      }
    }
    if (copied !== bytes) throw new CorruptionError({ file: source, offset: copied }, `the file ended after ${copied} bytes while ${bytes} were being archived`);
    await this.pad(bytes);
    return hash.digest("hex");
  }

  async addBytes(path: string, body: Buffer): Promise<void> {
    await this.begin(path, body.length);
    await this.push(body);
    await this.pad(body.length);
  }

  /** Ends the archive (two zero blocks), flushes and fsyncs the file. */
  async finish(): Promise<void> {
    await this.push(Buffer.alloc(2 * BLOCK));
    const closed = once(this.file, "close");
    this.gzip.end();
    await closed;
    if (this.failure !== undefined) throw this.failure;
    const fd = await open(this.path, "r+");
    try {
      await fd.sync();
    } finally {
      await fd.close();
    }
  }

  /** Stops writing (after a failure); the caller removes the file. */
  async abort(): Promise<void> {
    this.gzip.destroy();
    if (!this.file.closed) {
      const closed = once(this.file, "close").catch(() => {});
      this.file.destroy();
      await closed;
    }
  }
}

/** Where an entry's body goes while the archive is read. */
export interface EntrySink {
  write(chunk: Buffer): Promise<void> | void;
  end(): Promise<void> | void;
}

/** What the reader tells the caller about each entry. */
export interface ArchiveEntry {
  readonly path: string;
  readonly size: number;
  readonly type: string;
}

/**
 * Reads the .tar.gz at `archive`, calling `onEntry` for each entry and streaming its body into the
 * sink it returns (undefined: skip the body). Throws CorruptionError naming the archive, and the
 * entry being read, when the gzip data or a tar header is damaged or the archive ends early.
 */
export async function readTarGz(
  archive: string,
  onEntry: (entry: ArchiveEntry) => Promise<EntrySink | undefined> | EntrySink | undefined,
  /** Compressed bytes read from the archive so far (for progress). */
  onArchiveBytes?: (n: number) => void,
  /**
   * An encrypted archive (archive-encryption.ts): the tar.gz starts at `bodyOffset` and goes through
   * `decrypt`, whose failure (wrong key, damage, a cut) ends the read with its CorruptionError.
   */
  encrypted?: { readonly bodyOffset: number; readonly decrypt: Transform },
): Promise<number> {
  const source = createReadStream(archive, { highWaterMark: COPY_CHUNK_BYTES, start: encrypted?.bodyOffset ?? 0 });
  if (onArchiveBytes !== undefined) source.on("data", (chunk) => onArchiveBytes(chunk.length));
  const gunzip = createGunzip({ chunkSize: GUNZIP_CHUNK_BYTES });
  source.on("error", (e) => gunzip.destroy(e));
  if (encrypted === undefined) {
    source.pipe(gunzip);
  } else {
    encrypted.decrypt.on("error", (e) => gunzip.destroy(e));
    source.pipe(encrypted.decrypt).pipe(gunzip);
  }
  let pending: Buffer = Buffer.alloc(0);
  let state: { entry: ArchiveEntry; sink: EntrySink | undefined; remaining: number; padding: number } | undefined;
  let entries = 0;
  let ended = false;
  let offset = 0;
  const broken = (detail: string): DamagedBackupError =>
    new DamagedBackupError(archive, state === undefined ? detail : `${detail}, inside entry "${state.entry.path}"`, { offset });
  try {
    // Bounded by the archive's length: every pass consumes the chunk it read.
    for await (const chunk of gunzip) {
      // Past the end blocks the rest is read only so that zlib checks the gzip trailer (CRC, length).
      if (ended) continue;
      pending = pending.length === 0 ? (chunk as Buffer) : Buffer.concat([pending, chunk as Buffer]);
      // Bounded by pending.length: every pass consumes at least one byte or waits for more.
      while (pending.length > 0 && !ended) {
        if (state !== undefined) {
          if (state.remaining > 0) {
            const take = Math.min(state.remaining, pending.length);
            if (state.sink !== undefined) await state.sink.write(pending.subarray(0, take));
            state.remaining -= take;
            pending = pending.subarray(take);
            offset += take;
            continue;
          }
          if (state.padding > 0) {
            const take = Math.min(state.padding, pending.length);
            state.padding -= take;
            pending = pending.subarray(take);
            offset += take;
            if (state.padding > 0) continue;
          }
          await state.sink?.end();
          state = undefined;
          continue;
        }
        if (pending.length < BLOCK) break;
        const block = pending.subarray(0, BLOCK);
        if (block.every((b) => b === 0)) {
          ended = true;
          break;
        }
        const h = new Header(Buffer.from(block));
        if (!h.cksumValid) throw broken("a tar header's checksum does not match");
        if (++entries > ARCHIVE_ENTRIES_MAX) throw broken(`more than ${ARCHIVE_ENTRIES_MAX} entries`);
        const entry: ArchiveEntry = { path: h.path ?? "", size: h.size ?? 0, type: h.type };
        pending = pending.subarray(BLOCK);
        offset += BLOCK;
        const sink = await onEntry(entry);
        state = { entry, sink, remaining: entry.size, padding: (BLOCK - (entry.size % BLOCK)) % BLOCK };
      }
    }
  } catch (e) {
    gunzip.destroy();
    source.destroy();
    encrypted?.decrypt.destroy();
    if (e instanceof CorruptionError || e instanceof VerityError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "Z_BUF_ERROR" || code === "Z_DATA_ERROR" || code === "ERR_STREAM_PREMATURE_CLOSE") {
      throw broken(`the gzip data is damaged or cut short (${(e as Error).message})`);
    }
    throw e;
  }
  gunzip.destroy();
  source.destroy();
  encrypted?.decrypt.destroy();
  if (state !== undefined && state.remaining === 0 && state.padding === 0) {
    await state.sink?.end();
    state = undefined;
  }
  if (!ended) throw broken("the archive ends before its end-of-archive blocks: it was cut short");
  invariant(state === undefined, "an entry is complete before the end blocks");
  return entries;
}
