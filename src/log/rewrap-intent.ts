/**
 * Crash-safe re-wrapping of a segment header (key rotation, docs/encryption.md "Rotation").
 *
 * The header holds the only copy of the segment's wrapped data key: a torn 512-byte overwrite
 * would make the whole segment unreadable. So a re-wrap first makes `log/rewrap.intent` durable
 * (temporary file, fsync, rename, fsync the directory), holding the segment's file name and
 * sequence, the old header and the new one; then overwrites the header in place and fsyncs; then
 * removes the intent. On open, an intent left by a crash is finished (`finishRewrap`): the new
 * header is written unless the file already holds it. Both headers wrap the same data key, and
 * the new one came from the KMS, so finishing is always right; the old header is kept in the
 * intent so that a person can see what was there.
 *
 * Layout, little-endian:
 *   0    8    magic "VRTYRWP\0"
 *   8    4    segment sequence
 *   12   1    file name length n (at most REWRAP_NAME_BYTES_MAX)
 *   13   n    file name (current.segment or 0000000N.segment)
 *   13+n 512  old header
 *   ..   512  new header
 *   ..   4    CRC32C of everything before it
 */

import { posix as pathPosix } from "node:path";
import { crc32c } from "@node-rs/crc32";
import { CorruptionError } from "../errors.js";
import { SEGMENT_HEADER_BYTES } from "../limits.js";
import { writeFileAtomic } from "./atomic-file.js";
import type { FileSystem } from "./fs-port.js";
import { readFully } from "./segment-scan.js";
import { decodeSegmentHeader } from "./segment-header.js";

export const REWRAP_INTENT_NAME = "rewrap.intent";
const MAGIC = Buffer.from("VRTYRWP\0", "latin1");
/** A segment file name in the intent at most this long (names are 15 to 17 bytes). */
const REWRAP_NAME_BYTES_MAX = 64;

export interface RewrapIntent {
  /** The segment file's name in log/ when the re-wrap started. */
  readonly name: string;
  readonly sequence: number;
  readonly oldHeader: Buffer;
  readonly newHeader: Buffer;
}

export function encodeRewrapIntent(intent: RewrapIntent): Buffer {
  const name = Buffer.from(intent.name, "utf8");
  if (name.length === 0 || name.length > REWRAP_NAME_BYTES_MAX) throw new RangeError(`segment file name ${intent.name} does not fit the intent`);
  if (intent.oldHeader.length !== SEGMENT_HEADER_BYTES || intent.newHeader.length !== SEGMENT_HEADER_BYTES) throw new RangeError("headers are 512 bytes");
  const buf = Buffer.alloc(13 + name.length + 2 * SEGMENT_HEADER_BYTES + 4);
  MAGIC.copy(buf, 0);
  buf.writeUInt32LE(intent.sequence, 8);
  buf[12] = name.length;
  name.copy(buf, 13);
  intent.oldHeader.copy(buf, 13 + name.length);
  intent.newHeader.copy(buf, 13 + name.length + SEGMENT_HEADER_BYTES);
  buf.writeUInt32LE(crc32c(buf.subarray(0, buf.length - 4)), buf.length - 4);
  return buf;
}

/** The intent, or undefined when the bytes are not a whole, valid intent. */
export function decodeRewrapIntent(bytes: Uint8Array): RewrapIntent | undefined {
  const b = Buffer.from(bytes);
  if (b.length < 13 || !b.subarray(0, 8).equals(MAGIC)) return undefined;
  const nameLength = b[12]!;
  if (nameLength === 0 || nameLength > REWRAP_NAME_BYTES_MAX || b.length !== 13 + nameLength + 2 * SEGMENT_HEADER_BYTES + 4) return undefined;
  if (crc32c(b.subarray(0, b.length - 4)) !== b.readUInt32LE(b.length - 4)) return undefined;
  const at = 13 + nameLength;
  const intent = {
    name: b.toString("utf8", 13, at),
    sequence: b.readUInt32LE(8),
    oldHeader: Buffer.from(b.subarray(at, at + SEGMENT_HEADER_BYTES)),
    newHeader: Buffer.from(b.subarray(at + SEGMENT_HEADER_BYTES, at + 2 * SEGMENT_HEADER_BYTES)),
  };
  // The new header must be a valid header of that segment, or finishing would write garbage.
  const decoded = decodeSegmentHeader(intent.newHeader);
  if (!decoded.ok || decoded.header.sequence !== intent.sequence || intent.name.includes("/")) return undefined;
  return intent;
}

/** Step 1: the intent, durable before the header is touched. */
export async function writeRewrapIntent(fs: FileSystem, dir: string, intent: RewrapIntent): Promise<void> {
  await writeFileAtomic(fs, pathPosix.join(dir, REWRAP_INTENT_NAME), encodeRewrapIntent(intent));
}

/** Step 2 (and recovery): the new header over the old one, made durable. */
export async function writeHeaderInPlace(fs: FileSystem, path: string, header: Buffer): Promise<void> {
  const handle = await fs.open(path, "readwrite");
  try {
    await handle.write(header, 0, header.length, 0);
    await handle.datasync();
  } finally {
    await handle.close();
  }
}

/**
 * Recovery at open, before segment headers are read: finishes the re-wrap `intentBytes` records
 * (writes the new header unless the file already holds it), then removes the intent. Needs no keys.
 * Returns the file finished, or undefined when it was already done or the segment no longer exists.
 */
export async function finishRewrap(fs: FileSystem, dir: string, intentBytes: Uint8Array, displayPrefix: string): Promise<string | undefined> {
  const intent = decodeRewrapIntent(intentBytes);
  if (intent === undefined) {
    // Written atomically: a damaged intent is damage, and the header it names may be torn.
    throw new CorruptionError({ file: displayPrefix + REWRAP_INTENT_NAME, offset: 0 },
      "the header re-wrap intent file is damaged, so an interrupted key re-wrap cannot be finished; restore this node's log/ from a backup or re-sync it from its peers");
  }
  const path = pathPosix.join(dir, intent.name);
  let finished: string | undefined;
  if ((await fs.stat(path)) !== undefined) {
    const handle = await fs.open(path, "read");
    const head = Buffer.alloc(SEGMENT_HEADER_BYTES);
    let got: number;
    try {
      got = await readFully(handle, head, 0);
    } finally {
      await handle.close();
    }
    const present = decodeSegmentHeader(head.subarray(0, got));
    const sameSegment = !present.ok || present.header.sequence === intent.sequence;
    if (sameSegment && (got < SEGMENT_HEADER_BYTES || !head.equals(intent.newHeader))) {
      await writeHeaderInPlace(fs, path, intent.newHeader);
      finished = displayPrefix + intent.name;
    }
  }
  await fs.unlink(pathPosix.join(dir, REWRAP_INTENT_NAME));
  await fs.syncDir(dir);
  return finished;
}
