/**
 * Reads a segment file from front to back, checking every record, and says where the valid data
 * ends and why. Used by recovery on open (src/log/segmented-log.ts) and by `verity-admin log verify`.
 *
 * Torn tail or corruption? Only `current.segment` can have a torn tail: a sealed segment was fully
 * synced before it was renamed. In `current.segment`, when the record at offset X is bad:
 *
 * - If a valid record for a later index starts anywhere after X, the damage is *before the tail*:
 *   the later record was written by a later write, which the log only issues after the earlier one
 *   was synced (fsync mode keeps at most one write unsynced). That is corruption.
 * - Otherwise, the damage is a torn tail if it looks like an interrupted write, as etcd's WAL
 *   decides (`isTornEntry`): the file ends inside the record, or the record's bytes hold a
 *   512-byte sector that is all zeros (a sector the disk never wrote). Bit rot flips bits; it does
 *   not end files early or zero whole sectors. Anything else is corruption.
 *
 * A torn tail is truncated by recovery and reported (bytes cut, offset, index). Corruption stops
 * the open with a `CorruptionError` naming the file, the byte offset and the index.
 *
 * Encrypted segments hold units (src/log/record.ts): a record counts only once its unit's last
 * frame was read, so `validEnd` is always at a unit boundary. A unit cut short (the file ends, or
 * a torn frame, inside it) was part of the one unsynced write, never acknowledged: in
 * current.segment it is a torn tail cut back to the unit's first frame. Units are not
 * authenticated here (no keys): CRC and structure only; every read authenticates.
 */

import { RECORD_BYTES_MAX, SEGMENT_HEADER_BYTES, SEGMENT_READ_CHUNK_BYTES } from "../limits.js";
import type { FileHandle } from "./fs-port.js";
import { inspectFrame, peekIndex, type DecodeLimits, type FrameInfo } from "./record.js";
import { EncryptionAlgorithm, decodeSegmentHeader, type SegmentHeader } from "./segment-header.js";
import { SparseIndex, type TermRun } from "./sparse-index.js";
import type { LogIndex, Term } from "./types.js";

const SECTOR_BYTES = 512;

/** The hard bound: records written under any configuration stay readable. */
export const READ_LIMITS: DecodeLimits = { payloadBytesMax: RECORD_BYTES_MAX };
/** The same for the frames of an encrypted segment (unit fields, nonce and tag around the payload). */
export const SEALED_READ_LIMITS: DecodeLimits = { payloadBytesMax: RECORD_BYTES_MAX, sealed: true };

/** The read limits of a segment with this header. */
export function readLimitsFor(header: SegmentHeader): DecodeLimits {
  return header.encryption.algorithm === EncryptionAlgorithm.NONE ? READ_LIMITS : SEALED_READ_LIMITS;
}

export type DamageKind = "torn-tail" | "corruption";

export interface Damage {
  kind: DamageKind;
  /** Byte offset of the first bad byte range (a record or the header). */
  offset: number;
  /** The index the record at `offset` should have held. */
  index: number;
  reason: string;
}

export interface ScanResult {
  /** Undefined only when the header itself is damaged (then `damage` says so). */
  header: SegmentHeader | undefined;
  fileBytes: number;
  /** Offset just past the last valid record (the header's end when there are none). */
  validEnd: number;
  records: number;
  /** Index of the last valid record, or baseIndex - 1 when there are none. */
  lastIndex: number;
  /** Term of the last valid record, or the `previousTerm` passed in when there are none. */
  lastTerm: number;
  sparse: SparseIndex;
  termRuns: TermRun[];
  damage: Damage | undefined;
}

export interface ScanOptions {
  /** Name used in messages (relative to the data dir, e.g. "log/00000003.segment"). */
  displayName: string;
  /** True for current.segment: a damaged last record may be a torn tail. */
  mayHaveTornTail: boolean;
  /** Term of the record before this segment (terms never decrease); 0 for the first segment. */
  previousTerm: number;
  /** Called for every valid record, in order (the verify tool counts bytes this way). */
  onRecord?: (info: FrameInfo, offset: number) => void;
}

/** Scans a whole segment file. Never throws for bad bytes (only for I/O errors). */
export async function scanSegment(handle: FileHandle, options: ScanOptions): Promise<ScanResult> {
  const fileBytes = await handle.size();
  const headerBuf = Buffer.alloc(Math.min(SEGMENT_HEADER_BYTES, fileBytes));
  await readFully(handle, headerBuf, 0);
  const decoded = decodeSegmentHeader(headerBuf);
  const sparse = new SparseIndex();
  if (!decoded.ok) {
    return {
      header: undefined, fileBytes, validEnd: 0, records: 0, lastIndex: 0, lastTerm: options.previousTerm,
      sparse, termRuns: [],
      damage: { kind: "corruption", offset: 0, index: 0, reason: `segment header: ${decoded.reason}` },
    };
  }
  const header = decoded.header;
  const state = {
    records: 0,
    lastIndex: header.baseIndex - 1,
    lastTerm: options.previousTerm,
    termRuns: [] as TermRun[],
  };
  const limits = readLimitsFor(header);
  let position = SEGMENT_HEADER_BYTES;
  let buf = Buffer.allocUnsafe(SEGMENT_READ_CHUNK_BYTES);
  let damage: Damage | undefined;
  /** The unit being read (encrypted segments): its records count once its last frame is read. Bounded by UNIT_RECORDS_MAX. */
  let unit: { start: number; count: number; frames: Array<{ info: FrameInfo; offset: number }> } | undefined;
  let seenIndex = state.lastIndex;
  let seenTerm = state.lastTerm;
  const commit = (info: FrameInfo, offset: number): void => {
    sparse.note(info.index, offset);
    const lastRun = state.termRuns[state.termRuns.length - 1];
    if (lastRun === undefined || lastRun.term !== info.term) state.termRuns.push({ firstIndex: info.index, term: info.term });
    options.onRecord?.(info, offset);
    state.records++;
    state.lastIndex = info.index;
    state.lastTerm = info.term;
  };
  // Bounded: every pass either consumes at least one frame or ends the scan.
  outer: while (position < fileBytes) {
    const want = Math.min(buf.length, fileBytes - position);
    const got = await readFully(handle, buf.subarray(0, want), position);
    let offset = 0;
    while (offset < got) {
      const info = inspectFrame(buf, offset, got, limits);
      if (info.status === "incomplete") {
        if (position + offset + info.needBytes <= fileBytes) {
          if (offset === 0) buf = Buffer.allocUnsafe(Math.max(info.needBytes, buf.length)); // frame larger than a chunk
          break; // read on from this frame
        }
        damage = await classify(handle, position + offset, fileBytes, seenIndex, "the file ends inside this record", true, options, limits);
        break outer;
      }
      if (info.status === "invalid") {
        damage = await classify(handle, position + offset, fileBytes, seenIndex, info.reason, false, options, limits);
        break outer;
      }
      const problem = checkSequence(info, seenIndex, seenTerm) ?? checkUnit(info, position + offset, unit);
      if (problem !== undefined) {
        damage = { kind: "corruption", offset: position + offset, index: seenIndex + 1, reason: problem };
        break outer;
      }
      seenIndex = info.index;
      seenTerm = info.term;
      if (info.unit === undefined) {
        commit(info, position + offset);
      } else {
        if (info.unit.position === 0) unit = { start: position + offset, count: info.unit.count, frames: [] };
        unit!.frames.push({ info, offset: position + offset });
        if (info.unit.position === info.unit.count - 1) {
          for (const f of unit!.frames) commit(f.info, f.offset);
          unit = undefined;
        }
      }
      offset += info.frameBytes;
    }
    position += offset;
  }
  let validEnd = damage?.offset ?? position;
  if (unit !== undefined) {
    // The records read of an unfinished unit do not count: cut back to its first frame.
    const first = unit.frames[0]!.info.index;
    const detail = `the unit of ${unit.count} records that starts here (index ${first}) is incomplete: ${unit.frames.length} of its frames are whole`;
    if (damage === undefined) {
      damage = options.mayHaveTornTail
        ? { kind: "torn-tail", offset: unit.start, index: first, reason: `the file ends inside a unit: ${detail}` }
        : { kind: "corruption", offset: unit.start, index: first, reason: `the segment ends inside a unit: ${detail} (in a sealed segment, which was fully synced)` };
    } else if (damage.kind === "torn-tail") {
      damage = { ...damage, offset: unit.start, index: first, reason: `${damage.reason}; ${detail}` };
    }
    validEnd = unit.start;
  }
  return {
    header, fileBytes, validEnd, records: state.records, lastIndex: state.lastIndex,
    lastTerm: state.lastTerm, sparse, termRuns: state.termRuns, damage,
  };
}

/** In an encrypted segment: does the frame continue the unit being read (or start one)? */
function checkUnit(info: FrameInfo, offset: number, unit: { start: number; count: number; frames: unknown[] } | undefined): string | undefined {
  if (info.unit === undefined) return undefined;
  if (unit === undefined) {
    return info.unit.position === 0 ? undefined : `record ${info.index} is at position ${info.unit.position} of a unit whose first frame is missing`;
  }
  if (info.unit.position !== unit.frames.length || info.unit.count !== unit.count || info.unit.backBytes !== offset - unit.start) {
    return `record ${info.index} (unit position ${info.unit.position} of ${info.unit.count}, ${info.unit.backBytes} bytes back) does not continue ` +
      `the unit of ${unit.count} records that starts at byte offset ${unit.start}`;
  }
  return undefined;
}

function checkSequence(info: FrameInfo, lastIndex: number, lastTerm: number): string | undefined {
  if (info.index !== lastIndex + 1) return `record holds index ${info.index} where index ${lastIndex + 1} was expected`;
  if (info.term < lastTerm) return `term goes backwards from ${lastTerm} to ${info.term}`;
  return undefined;
}

async function classify(
  handle: FileHandle,
  offset: number,
  fileBytes: number,
  lastIndex: number,
  reason: string,
  endsInside: boolean,
  options: ScanOptions,
  limits: DecodeLimits,
): Promise<Damage> {
  const index = lastIndex + 1;
  if (!options.mayHaveTornTail) {
    return { kind: "corruption", offset, index, reason: `${reason} (in a sealed segment, which was fully synced)` };
  }
  // Everything from the damage to the end of the file: at most one segment, read once on this rare path.
  const rest = Buffer.alloc(fileBytes - offset);
  await readFully(handle, rest, offset);
  const later = findLaterRecord(rest, lastIndex, limits);
  if (later !== undefined) {
    return {
      kind: "corruption", offset, index,
      reason: `${reason}; a valid record for index ${later.index} follows at byte offset ${offset + later.offset}, so this is not a torn write`,
    };
  }
  if (endsInside || hasZeroSector(rest, offset, frameSpan(rest))) {
    return { kind: "torn-tail", offset, index, reason };
  }
  return { kind: "corruption", offset, index, reason: `${reason} (the record is whole and not zero-filled, so this is not a torn write)` };
}

/** Bytes the damaged frame claims to span (bounded by what is there). */
function frameSpan(rest: Buffer): number {
  if (rest.length < 8) return rest.length;
  return Math.min(rest.length, 8 + rest.readUInt32LE(4));
}

/** True if some 512-byte file sector overlapping [start, start+length) of `rest` is all zeros (or the frame starts zeroed). */
function hasZeroSector(rest: Buffer, fileOffset: number, length: number): boolean {
  if (rest.length >= 8 && rest.readUInt32LE(0) === 0 && rest.readUInt32LE(4) === 0) return true;
  const firstSector = Math.ceil(fileOffset / SECTOR_BYTES) * SECTOR_BYTES;
  for (let s = firstSector; s + SECTOR_BYTES <= fileOffset + length; s += SECTOR_BYTES) {
    const from = s - fileOffset;
    let zero = true;
    for (let i = from; i < from + SECTOR_BYTES; i++) {
      if (rest[i] !== 0) {
        zero = false;
        break;
      }
    }
    if (zero) return true;
  }
  return false;
}

/** Looks for any valid frame after the first byte of `rest` that holds an index beyond `lastIndex`. */
function findLaterRecord(rest: Buffer, lastIndex: number, limits: DecodeLimits): { offset: number; index: number } | undefined {
  const maxIndex = lastIndex + Math.ceil(rest.length / 27) + 1;
  for (let off = 1; off + 26 < rest.length; off++) {
    const idx = peekIndex(rest, off);
    if (idx <= lastIndex || idx > maxIndex) continue; // cheap filter before the checksum
    const info = inspectFrame(rest, off, rest.length, limits);
    if (info.status === "ok") return { offset: off, index: info.index };
  }
  return undefined;
}

/** Reads until `buf` is full or the file ends; returns the bytes read. */
export async function readFully(handle: FileHandle, buf: Uint8Array, position: number): Promise<number> {
  let got = 0;
  // Bounded: each pass reads at least one byte or stops.
  while (got < buf.length) {
    const n = await handle.read(buf, got, buf.length - got, position + got);
    if (n === 0) break;
    got += n;
  }
  return got;
}

export type { LogIndex, Term };
