/**
 * A minimal POSIX ustar writer (IEEE Std 1003.1, "pax" format's ustar header) for
 * `verity-admin diagnostics export`: regular files and directories, in memory, then gzip'd with
 * node:zlib. Enough for a bundle of small text files that any `tar -xzf` extracts; not a general
 * archiver (no links, no pax extended headers, no files of 8 GiB or more).
 *
 * The project has no `tar` dependency, and package.json is not this tool's to change; this file
 * is the whole format.
 */

import { gzipSync } from "node:zlib";
import { InvalidArgumentError, QuotaExceededError, invariant } from "../errors.js";

export const TAR_BLOCK_BYTES = 512;
/** The largest size the 11 octal digits of the size field hold. */
export const TAR_FILE_BYTES_MAX = 8 ** 11 - 1;
/** A diagnostics bundle is small text; this bounds the archive held in memory. */
export const TAR_ARCHIVE_BYTES_MAX = 512 * 1024 * 1024;
/** Entries in one archive at most. */
export const TAR_ENTRIES_MAX = 10_000;
const NAME_BYTES_MAX = 100;
const PREFIX_BYTES_MAX = 155;

// Header field offsets and lengths (ustar).
const FIELD = {
  name: [0, 100], mode: [100, 8], uid: [108, 8], gid: [116, 8], size: [124, 12], mtime: [136, 12], checksum: [148, 8],
  typeflag: [156, 1], linkname: [157, 100], magic: [257, 6], version: [263, 2], uname: [265, 32], gname: [297, 32],
  devmajor: [329, 8], devminor: [337, 8], prefix: [345, 155],
} as const;

invariant(TAR_ARCHIVE_BYTES_MAX % TAR_BLOCK_BYTES === 0, "archives are whole blocks");

export interface TarEntryOptions {
  /** Permission bits; 0o644 for files and 0o755 for directories unless given. */
  mode?: number;
  /** Modification time; now unless given. */
  mtime?: Date;
}

/** Splits a path into ustar's prefix and name fields (at a "/"), or says why it cannot be stored. */
export function splitTarPath(path: string): { prefix: string; name: string } {
  const bytes = Buffer.byteLength(path);
  if (path === "" || path.startsWith("/") || path.split("/").some((part) => part === "..")) {
    throw new InvalidArgumentError(`tar entry "${path}": give a relative path without ".." parts`);
  }
  if (bytes <= NAME_BYTES_MAX) return { prefix: "", name: path };
  // Bounded: one candidate per "/" in the path.
  for (let slash = path.indexOf("/"); slash > 0; slash = path.indexOf("/", slash + 1)) {
    const prefix = path.slice(0, slash);
    const name = path.slice(slash + 1);
    if (Buffer.byteLength(prefix) <= PREFIX_BYTES_MAX && Buffer.byteLength(name) <= NAME_BYTES_MAX && name !== "") return { prefix, name };
  }
  throw new InvalidArgumentError(`tar entry "${path}": a ustar path is at most ${NAME_BYTES_MAX} bytes, or a ${PREFIX_BYTES_MAX}-byte directory part and a ${NAME_BYTES_MAX}-byte name`);
}

function writeText(header: Buffer, field: readonly [number, number], text: string): void {
  const bytes = Buffer.from(text, "utf8");
  invariant(bytes.length <= field[1], `tar header field of ${field[1]} bytes holds "${text}"`);
  bytes.copy(header, field[0]);
}

/** An octal number in a field, zero-padded, ending in NUL (as GNU and BSD tar write them). */
function writeOctal(header: Buffer, field: readonly [number, number], value: number): void {
  invariant(Number.isSafeInteger(value) && value >= 0, `tar header number ${value} is a non-negative integer`);
  const digits = field[1] - 1;
  const text = value.toString(8).padStart(digits, "0");
  invariant(text.length === digits, `${value} fits in ${digits} octal digits`);
  writeText(header, field, text + "\0");
}

function header(path: string, type: "0" | "5", size: number, mode: number, mtime: Date): Buffer {
  const { prefix, name } = splitTarPath(path);
  const h = Buffer.alloc(TAR_BLOCK_BYTES);
  writeText(h, FIELD.name, name);
  writeOctal(h, FIELD.mode, mode & 0o7777);
  writeOctal(h, FIELD.uid, 0);
  writeOctal(h, FIELD.gid, 0);
  writeOctal(h, FIELD.size, size);
  writeOctal(h, FIELD.mtime, Math.max(0, Math.floor(mtime.getTime() / 1000)));
  writeText(h, FIELD.typeflag, type);
  writeText(h, FIELD.magic, "ustar\0");
  writeText(h, FIELD.version, "00");
  writeText(h, FIELD.uname, "root");
  writeText(h, FIELD.gname, "root");
  writeOctal(h, FIELD.devmajor, 0);
  writeOctal(h, FIELD.devminor, 0);
  writeText(h, FIELD.prefix, prefix);
  // The checksum is the byte sum of the header with the checksum field read as spaces.
  h.fill(0x20, FIELD.checksum[0], FIELD.checksum[0] + FIELD.checksum[1]);
  let sum = 0;
  for (const byte of h) sum += byte;
  writeText(h, FIELD.checksum, sum.toString(8).padStart(6, "0") + "\0 ");
  return h;
}

/** Builds a tar archive in memory, entry by entry; `finish` adds the two zero blocks that end it. */
export class TarWriter {
  private readonly blocks: Buffer[] = [];
  private bytes = 0;
  private entries = 0;
  private readonly names = new Set<string>();
  private finished = false;

  addDirectory(path: string, options: TarEntryOptions = {}): void {
    const clean = path.replace(/\/+$/, "");
    this.push(header(`${clean}/`, "5", 0, options.mode ?? 0o755, options.mtime ?? new Date()), clean);
  }

  addFile(path: string, content: Buffer | string, options: TarEntryOptions = {}): void {
    const data = typeof content === "string" ? Buffer.from(content, "utf8") : content;
    if (data.length > TAR_FILE_BYTES_MAX) throw new QuotaExceededError("TAR_FILE_BYTES_MAX", TAR_FILE_BYTES_MAX, `tar entry "${path}" is ${data.length} bytes; ustar holds at most ${TAR_FILE_BYTES_MAX}`);
    this.push(header(path, "0", data.length, options.mode ?? 0o644, options.mtime ?? new Date()), path);
    if (data.length === 0) return;
    const padding = (TAR_BLOCK_BYTES - (data.length % TAR_BLOCK_BYTES)) % TAR_BLOCK_BYTES;
    this.append(data);
    if (padding > 0) this.append(Buffer.alloc(padding));
  }

  /** The archive: every entry, then two zero blocks. The writer takes no more entries after this. */
  finish(): Buffer {
    invariant(!this.finished, "a tar archive is finished once");
    this.finished = true;
    this.append(Buffer.alloc(2 * TAR_BLOCK_BYTES));
    return Buffer.concat(this.blocks, this.bytes);
  }

  /** The archive, gzip'd (a .tar.gz). */
  finishGzip(): Buffer {
    return gzipSync(this.finish());
  }

  private push(block: Buffer, name: string): void {
    invariant(!this.finished, "no entries after finish()");
    if (this.names.has(name)) throw new InvalidArgumentError(`tar entry "${name}" was added twice`);
    if (this.entries >= TAR_ENTRIES_MAX) throw new QuotaExceededError("TAR_ENTRIES_MAX", TAR_ENTRIES_MAX, `a tar archive here holds at most ${TAR_ENTRIES_MAX} entries`);
    this.names.add(name);
    this.entries++;
    this.append(block);
  }

  private append(data: Buffer): void {
    // Room is kept for the two end blocks.
    if (this.bytes + data.length + (this.finished ? 0 : 2 * TAR_BLOCK_BYTES) > TAR_ARCHIVE_BYTES_MAX) {
      throw new QuotaExceededError("TAR_ARCHIVE_BYTES_MAX", TAR_ARCHIVE_BYTES_MAX, `the archive would be larger than ${TAR_ARCHIVE_BYTES_MAX} bytes`);
    }
    this.blocks.push(data);
    this.bytes += data.length;
  }
}
