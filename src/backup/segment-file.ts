/**
 * Reading one segment file for a backup: every record checked (src/log/segment-scan.ts, the same
 * checks as recovery and `log verify`), the index range and terms, the byte offset where a given
 * index ends (to cut a snapshot or a point-in-time restore there), and the file's SHA-256.
 */

import { createHash } from "node:crypto";
import { CorruptionError, invariant } from "../errors.js";
import type { FileSystem } from "../log/fs-port.js";
import { uuidFromBytes } from "../log/meta-state.js";
import { readFully, scanSegment } from "../log/segment-scan.js";
import { SEGMENT_HEADER_BYTES } from "../limits.js";
import { EncryptionAlgorithm } from "../log/segment-header.js";
import { COPY_CHUNK_BYTES } from "./backup-limits.js";

/** What a checked segment file holds. */
export interface SegmentContent {
  readonly sequence: number;
  readonly clusterId: string;
  /** The header's base index: the first record's index. */
  readonly baseIndex: number;
  readonly records: number;
  /** baseIndex - 1 when the segment holds no record. */
  readonly lastIndex: number;
  /** Term of the first record (0 when none). */
  readonly firstTerm: number;
  readonly lastTerm: number;
  /** Bytes of the file that hold the header and records up to `lastIndex` (the whole file unless cut). */
  readonly bytes: number;
  /** An encrypted segment: the header's KMS key id and key version label (undefined for a plaintext one). */
  readonly keyId?: string | undefined;
  readonly keyVersion?: string | undefined;
}

export interface InspectOptions {
  /** For messages: the file's name relative to the data dir, or the object's key. */
  readonly displayName: string;
  /** A sealed segment must be whole; current.segment may end in a torn write (ignored past `upTo`). */
  readonly sealed: boolean;
  /** Stop at this index: `bytes` ends just past its record (the file may go on). */
  readonly upTo?: number;
}

/**
 * Scans the segment at `path`. Damage at or before `upTo` (or anywhere in a sealed segment when
 * `upTo` is not given) throws CorruptionError naming `displayName`, the byte offset and the index.
 */
export async function inspectSegment(fs: FileSystem, path: string, options: InspectOptions): Promise<SegmentContent> {
  const handle = await fs.open(path, "read");
  try {
    const upTo = options.upTo ?? Number.MAX_SAFE_INTEGER;
    let firstTerm = 0;
    let lastTerm = 0;
    let lastIndex = -1;
    let end = -1;
    const scan = await scanSegment(handle, {
      displayName: options.displayName,
      mayHaveTornTail: !options.sealed,
      previousTerm: 0,
      onRecord: (info, offset) => {
        if (info.index > upTo) return;
        if (firstTerm === 0) firstTerm = info.term;
        lastTerm = info.term;
        lastIndex = info.index;
        end = offset + info.frameBytes;
      },
    });
    if (scan.header === undefined) {
      throw new CorruptionError({ file: options.displayName, offset: 0 }, scan.damage?.reason ?? "segment header damaged");
    }
    const damage = scan.damage;
    const damagedInRange = damage !== undefined && damage.index <= upTo && (options.sealed || damage.kind === "corruption" || options.upTo !== undefined);
    if (damagedInRange) {
      throw new CorruptionError({ file: options.displayName, offset: damage.offset, index: damage.index }, damage.reason);
    }
    const records = lastIndex === -1 ? 0 : lastIndex - scan.header.baseIndex + 1;
    invariant(records >= 0, "records counted from the base index");
    return {
      sequence: scan.header.sequence,
      clusterId: uuidFromBytes(scan.header.clusterId),
      baseIndex: scan.header.baseIndex,
      records,
      lastIndex: lastIndex === -1 ? scan.header.baseIndex - 1 : lastIndex,
      firstTerm,
      lastTerm,
      bytes: end === -1 ? SEGMENT_HEADER_BYTES : end,
      ...(scan.header.encryption.algorithm === EncryptionAlgorithm.NONE ? {} : {
        keyId: new TextDecoder().decode(scan.header.encryption.keyId),
        keyVersion: scan.header.encryption.keyVersion ?? "",
      }),
    };
  } finally {
    await handle.close();
  }
}

/** SHA-256 (hex) of the first `bytes` bytes of the file at `path`. */
export async function hashFile(fs: FileSystem, path: string, bytes: number): Promise<string> {
  const handle = await fs.open(path, "read");
  try {
    const hash = createHash("sha256");
    const buf = Buffer.allocUnsafe(COPY_CHUNK_BYTES);
    let position = 0;
    // Bounded by `bytes`: every pass reads at least one byte or stops.
    while (position < bytes) {
      const got = await readFully(handle, buf.subarray(0, Math.min(buf.length, bytes - position)), position);
      if (got === 0) break;
      hash.update(buf.subarray(0, got));
      position += got;
    }
    if (position !== bytes) throw new CorruptionError({ file: path, offset: position }, `the file ends after ${position} bytes, ${bytes} were expected`);
    return hash.digest("hex");
  } finally {
    await handle.close();
  }
}
