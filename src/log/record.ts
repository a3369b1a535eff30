/**
 * Record framing. Every record in a segment is one frame, little-endian:
 *
 *   offset  size  field
 *   0       4     crc32c     CRC32C of bytes [4, 8 + bodyLength): the length field and the body
 *   4       4     bodyLength bytes after this field: 18 + tenantLength + payloadLength
 *   8       8     term       u64
 *   16      8     index      u64
 *   24      1     kind       1..255 (0 is never valid, so zero-filled space never parses)
 *   25      1     tenantLength
 *   26      t     tenant     UTF-8, at most TENANT_ID_BYTES_MAX bytes
 *   26+t    p     payload    1..max_record_size bytes
 *
 * The checksum covers the length, so a damaged length cannot make a reader skip or invent records.
 *
 * In an encrypted segment (header algorithm 1, format version 3) records are sealed in *units*:
 * the records of one group-commit write, per segment, up to UNIT_PAYLOAD_BYTES_MAX of payload and
 * UNIT_RECORDS_MAX records, sealed with ONE AES-256-GCM call (src/crypto/unit-cipher.ts). Each
 * record keeps its own frame; after the tenant id come:
 *
 *   26+t    2     position   the record's place in its unit, 0-based
 *   28+t    2     count      records in the unit (1..UNIT_RECORDS_MAX)
 *   30+t    4     back       bytes from the unit's first frame to this frame (0 exactly at position 0)
 *   34+t    12    nonce      only in the unit's first frame: random, fresh for every unit written
 *   ..      p     this record's slice of the unit's ciphertext (as long as its payload)
 *   ..      16    tag        only in the unit's last frame: authenticates the whole unit
 *
 * bodyLength counts all of it, and the CRC covers the whole frame, so torn-tail detection and
 * `log verify` need no keys. A reader finds a record's unit from any frame (`back`), reads its
 * `count` frames, checks their structure, and opens the unit as a whole: a record is returned only
 * once its whole unit authenticated. The tenant id stays in the clear (authenticated).
 */

import { crc32c } from "@node-rs/crc32";
import {
  GCM_NONCE_BYTES,
  GCM_TAG_BYTES,
  RECORD_SEAL_OVERHEAD_BYTES,
  UNIT_FRAME_FIELDS_BYTES,
  UNIT_PAYLOAD_BYTES_MAX,
  UNIT_RECORDS_MAX,
} from "../crypto/crypto-limits.js";
import type { SegmentUnitCipher, UnitRecord } from "../crypto/unit-cipher.js";
import { invariant } from "../errors.js";
import { RECORD_FRAME_HEADER_BYTES, TENANT_ID_BYTES_MAX } from "../limits.js";
import type { LogEntry, LogIndex, RecordKindByte, Term } from "./types.js";

/** What every record frame costs on disk beyond its tenant id and payload. */
export const FRAME_OVERHEAD_BYTES = RECORD_FRAME_HEADER_BYTES;
const BODY_FIXED_BYTES = RECORD_FRAME_HEADER_BYTES - 8;

const TWO_POW_32 = 2 ** 32;

/** Bytes a record takes on disk. */
export function frameBytes(tenantBytes: number, payloadBytes: number): number {
  return RECORD_FRAME_HEADER_BYTES + tenantBytes + payloadBytes;
}

/**
 * Bytes a record takes in an encrypted segment at `position` of a unit of `count` records: its
 * frame, the unit fields, the nonce in the first frame, the tag in the last.
 */
export function sealedFrameBytes(tenantBytes: number, payloadBytes: number, position: number, count: number): number {
  return frameBytes(tenantBytes, payloadBytes) + UNIT_FRAME_FIELDS_BYTES +
    (position === 0 ? GCM_NONCE_BYTES : 0) + (position === count - 1 ? GCM_TAG_BYTES : 0);
}

/** The most bytes a record can take in an encrypted segment (a unit of its own). */
export function sealedFrameBytesMax(tenantBytes: number, payloadBytes: number): number {
  return frameBytes(tenantBytes, payloadBytes) + UNIT_FRAME_FIELDS_BYTES + RECORD_SEAL_OVERHEAD_BYTES;
}

function writeU64(buf: Buffer, value: number, offset: number): void {
  buf.writeUInt32LE(value % TWO_POW_32, offset);
  buf.writeUInt32LE(Math.floor(value / TWO_POW_32), offset + 4);
}

function readU64(buf: Uint8Array, offset: number): number {
  const lo = buf[offset]! | (buf[offset + 1]! << 8) | (buf[offset + 2]! << 16) | (buf[offset + 3]! << 24);
  const hi = buf[offset + 4]! | (buf[offset + 5]! << 8) | (buf[offset + 6]! << 16) | (buf[offset + 7]! << 24);
  // hi must stay below 2^21 for the value to be a safe integer.
  return (hi >>> 0) * TWO_POW_32 + (lo >>> 0);
}

function readU32(buf: Uint8Array, offset: number): number {
  return (buf[offset]! | (buf[offset + 1]! << 8) | (buf[offset + 2]! << 16) | (buf[offset + 3]! << 24)) >>> 0;
}

/**
 * Writes one frame into `out` at `offset` and returns the offset just past it.
 * The caller has checked the sizes (see `SegmentedLog.append`); `tenant` is already UTF-8.
 */
export function encodeFrame(
  out: Buffer,
  offset: number,
  entryTerm: number,
  entryIndex: number,
  kind: number,
  tenant: Uint8Array,
  payload: Uint8Array,
): number {
  const bodyLength = BODY_FIXED_BYTES + tenant.length + payload.length;
  out.writeUInt32LE(bodyLength, offset + 4);
  writeU64(out, entryTerm, offset + 8);
  writeU64(out, entryIndex, offset + 16);
  out[offset + 24] = kind;
  out[offset + 25] = tenant.length;
  out.set(tenant, offset + 26);
  out.set(payload, offset + 26 + tenant.length);
  const end = offset + 8 + bodyLength;
  out.writeUInt32LE(crc32c(out.subarray(offset + 4, end)), offset);
  return end;
}

/** A record to seal: its cleartext frame fields (tenant as UTF-8) and its payload. */
export interface UnitInput {
  term: number;
  index: number;
  kind: number;
  tenant: Uint8Array;
  payload: Uint8Array;
}

/**
 * Plaintext of a multi-record unit, gathered here before its one AEAD call (those units hold at
 * most UNIT_PAYLOAD_BYTES_MAX bytes; a larger record is a unit of its own and is sealed in place).
 */
const unitPlaintextScratch = Buffer.alloc(UNIT_PAYLOAD_BYTES_MAX);

/**
 * Writes the frames of one unit (consecutive indexes, 1..UNIT_RECORDS_MAX records, payloads totalling at
 * most UNIT_PAYLOAD_BYTES_MAX unless it is one record) into `out` at `offset`, sealed with one
 * call of the segment's cipher; returns the offset just past the unit.
 */
export function encodeSealedUnit(out: Buffer, offset: number, records: readonly UnitInput[], cipher: SegmentUnitCipher): number {
  const count = records.length;
  invariant(count >= 1 && count <= UNIT_RECORDS_MAX, "unit record count");
  let plaintext: Uint8Array;
  if (count === 1) {
    plaintext = records[0]!.payload;
  } else {
    let at = 0;
    for (const r of records) {
      invariant(at + r.payload.length <= UNIT_PAYLOAD_BYTES_MAX, "a multi-record unit holds at most UNIT_PAYLOAD_BYTES_MAX");
      unitPlaintextScratch.set(r.payload, at);
      at += r.payload.length;
    }
    plaintext = unitPlaintextScratch.subarray(0, at);
  }
  const unitRecords: UnitRecord[] = records.map((r) => ({ term: r.term, kind: r.kind, tenant: r.tenant, payloadBytes: r.payload.length }));
  const sealed = cipher.seal(records[0]!.index, unitRecords, plaintext);
  const unitStart = offset;
  let cipherAt = 0;
  for (let position = 0; position < count; position++) {
    const r = records[position]!;
    invariant(r.index === records[0]!.index + position, "a unit holds consecutive indexes");
    const t = r.tenant.length;
    const p = r.payload.length;
    const bodyLength = sealedFrameBytes(t, p, position, count) - 8;
    out.writeUInt32LE(bodyLength, offset + 4);
    writeU64(out, r.term, offset + 8);
    writeU64(out, r.index, offset + 16);
    out[offset + 24] = r.kind;
    out[offset + 25] = t;
    out.set(r.tenant, offset + 26);
    let at = offset + 26 + t;
    out.writeUInt16LE(position, at);
    out.writeUInt16LE(count, at + 2);
    out.writeUInt32LE(offset - unitStart, at + 4);
    at += UNIT_FRAME_FIELDS_BYTES;
    if (position === 0) {
      sealed.nonce.copy(out, at);
      at += GCM_NONCE_BYTES;
    }
    sealed.ciphertext.copy(out, at, cipherAt, cipherAt + p);
    cipherAt += p;
    at += p;
    if (position === count - 1) {
      sealed.tag.copy(out, at);
      at += GCM_TAG_BYTES;
    }
    const end = offset + 8 + bodyLength;
    invariant(at === end, "sealed frame length");
    out.writeUInt32LE(crc32c(out.subarray(offset + 4, end)), offset);
    offset = end;
  }
  return offset;
}

/** The outcome of decoding the bytes at one offset. */
export type DecodeResult =
  | { status: "ok"; entry: LogEntry; frameBytes: number }
  /** Fewer bytes remain than the frame needs: the file ends inside it. */
  | { status: "incomplete"; needBytes: number }
  /** The bytes are not a valid frame; `reason` says why, for the error message. */
  | { status: "invalid"; reason: string };

/** Decode limits: what the reader will believe. */
export interface DecodeLimits {
  /** The largest payload the reader accepts (the hard bound, not the configured one: old records stay readable). */
  payloadBytesMax: number;
  /** Frames of an encrypted segment (unit fields, nonce and tag around the payload). */
  sealed?: boolean;
}

const decoder = new TextDecoder("utf-8", { fatal: true });

/** The fixed fields of a frame that passed its checksum, without copying the payload. */
export interface FrameInfo {
  term: Term;
  index: LogIndex;
  kind: RecordKindByte;
  tenantLength: number;
  frameBytes: number;
  /** Where the payload (or, sealed, this record's ciphertext slice) starts in the frame, and its length. */
  payloadStart: number;
  payloadBytes: number;
  /** In an encrypted segment: the record's position in its unit, the unit's record count, bytes back to its first frame. */
  unit: { position: number; count: number; backBytes: number } | undefined;
}

export type InspectResult =
  | ({ status: "ok" } & FrameInfo)
  /** Fewer bytes remain than the frame needs: the file ends inside it. */
  | { status: "incomplete"; needBytes: number }
  /** The bytes are not a valid frame; `reason` says why, for the error message. */
  | { status: "invalid"; reason: string };

/**
 * Checks the frame starting at `buf[offset]`, with `end` the end of valid bytes in `buf`.
 * Never throws on any input: random bytes give "invalid" or "incomplete", never a record that was
 * not written (up to the strength of CRC32C).
 */
export function inspectFrame(buf: Uint8Array, offset: number, end: number, limits: DecodeLimits): InspectResult {
  const available = end - offset;
  if (available < 8) return { status: "incomplete", needBytes: 8 };
  const storedCrc = readU32(buf, offset);
  const bodyLength = readU32(buf, offset + 4);
  if (bodyLength < BODY_FIXED_BYTES + 1) {
    return { status: "invalid", reason: `frame length ${bodyLength} is too small to hold a record` };
  }
  const sealedExtra = limits.sealed === true ? UNIT_FRAME_FIELDS_BYTES + RECORD_SEAL_OVERHEAD_BYTES : 0;
  if (bodyLength > BODY_FIXED_BYTES + TENANT_ID_BYTES_MAX + limits.payloadBytesMax + sealedExtra) {
    return { status: "invalid", reason: `frame length ${bodyLength} is larger than any record can be` };
  }
  const total = 8 + bodyLength;
  if (available < total) return { status: "incomplete", needBytes: total };
  const actualCrc = crc32c(Buffer.from(buf.buffer, buf.byteOffset + offset + 4, bodyLength + 4));
  if (actualCrc !== storedCrc) {
    return { status: "invalid", reason: `checksum mismatch (stored ${hex(storedCrc)}, computed ${hex(actualCrc)})` };
  }
  // The checksum matched: the fields below were written by us, but check them anyway.
  const entryTerm = readU64(buf, offset + 8);
  const entryIndex = readU64(buf, offset + 16);
  const kind = buf[offset + 24]!;
  const tenantLength = buf[offset + 25]!;
  if (!Number.isSafeInteger(entryTerm) || !Number.isSafeInteger(entryIndex) || entryIndex === 0) {
    return { status: "invalid", reason: `term ${entryTerm} or index ${entryIndex} out of range` };
  }
  if (kind === 0) return { status: "invalid", reason: "record kind 0" };
  if (tenantLength > TENANT_ID_BYTES_MAX || BODY_FIXED_BYTES + tenantLength >= bodyLength) {
    return { status: "invalid", reason: `tenant length ${tenantLength} does not fit the frame` };
  }
  const fields = { term: entryTerm as Term, index: entryIndex as LogIndex, kind, tenantLength, frameBytes: total };
  if (limits.sealed !== true) {
    return { status: "ok", ...fields, payloadStart: 26 + tenantLength, payloadBytes: total - 26 - tenantLength, unit: undefined };
  }
  return inspectUnitFields(buf, offset, fields);
}

/** The unit fields of a sealed frame that passed its checksum. */
function inspectUnitFields(
  buf: Uint8Array, offset: number, fields: Omit<FrameInfo, "payloadStart" | "payloadBytes" | "unit">,
): InspectResult {
  const at = offset + 26 + fields.tenantLength;
  if (26 + fields.tenantLength + UNIT_FRAME_FIELDS_BYTES > fields.frameBytes) {
    return { status: "invalid", reason: "the frame is too short for its unit fields" };
  }
  const position = buf[at]! | (buf[at + 1]! << 8);
  const count = buf[at + 2]! | (buf[at + 3]! << 8);
  const backBytes = readU32(buf, at + 4);
  if (count < 1 || count > UNIT_RECORDS_MAX || position >= count || (position === 0) !== (backBytes === 0)) {
    return { status: "invalid", reason: `unit fields out of range (position ${position}, count ${count}, ${backBytes} bytes back)` };
  }
  const payloadStart = 26 + fields.tenantLength + UNIT_FRAME_FIELDS_BYTES + (position === 0 ? GCM_NONCE_BYTES : 0);
  const payloadBytes = fields.frameBytes - payloadStart - (position === count - 1 ? GCM_TAG_BYTES : 0);
  if (payloadBytes < 1) return { status: "invalid", reason: "the frame is too short for its nonce, payload and tag" };
  return { status: "ok", ...fields, payloadStart, payloadBytes, unit: { position, count, backBytes } };
}

/** Like `inspectFrame`, and on success also copies out the tenant and payload as a `LogEntry`. */
export function decodeFrame(buf: Uint8Array, offset: number, end: number, limits: DecodeLimits): DecodeResult {
  const info = inspectFrame(buf, offset, end, limits);
  if (info.status !== "ok") return info;
  let tenant: string;
  try {
    tenant = info.tenantLength === 0 ? "" : decoder.decode(buf.subarray(offset + 26, offset + 26 + info.tenantLength));
  } catch {
    return { status: "invalid", reason: "tenant id is not UTF-8" };
  }
  const payloadStart = offset + info.payloadStart;
  const entry: LogEntry = {
    term: info.term,
    index: info.index,
    kind: info.kind,
    tenant,
    payload: Buffer.from(buf.subarray(payloadStart, payloadStart + info.payloadBytes)),
  };
  return { status: "ok", entry, frameBytes: info.frameBytes };
}

/** The outcome of decoding the unit whose first frame is at one offset. */
export type UnitDecodeResult =
  /** `frameOffsets` are relative to the unit's start; `unitBytes` is the unit's length. */
  | { status: "ok"; entries: LogEntry[]; frameOffsets: number[]; unitBytes: number }
  /** The unit does not fit in the bytes given: at least `needBytes` from its start are needed. */
  | { status: "incomplete"; needBytes: number }
  /** The frame at `frameOffset` (relative) is bad or does not belong to the unit; `index` is the one it should hold. */
  | { status: "invalid"; reason: string; frameOffset: number; index: number | undefined }
  /** The frame at the offset is not its unit's first: the unit starts `backBytes` earlier. */
  | { status: "inside-unit"; backBytes: number };

/**
 * Decodes the whole unit whose first frame starts at `buf[offset]` (`end`: the end of valid bytes):
 * structure and CRC of every frame, then the unit is opened by the segment's cipher. A unit that does
 * not authenticate (tampered, moved, wrong key) throws the cipher's CorruptionError naming `file`, the
 * unit's `fileOffset` and its first index. Without a cipher (`log dump` without keys) the entries carry
 * their ciphertext slices as payloads and nothing is authenticated.
 */
export function decodeUnit(
  buf: Uint8Array,
  offset: number,
  end: number,
  limits: DecodeLimits,
  cipher: SegmentUnitCipher | undefined,
  at: { file: string; fileOffset: number },
): UnitDecodeResult {
  const infos: FrameInfo[] = [];
  const frameOffsets: number[] = [];
  let position = offset;
  let count = 1;
  // Bounded: at most `count` <= UNIT_RECORDS_MAX frames.
  while (infos.length < count) {
    const info = inspectFrame(buf, position, end, limits);
    if (info.status === "incomplete") return { status: "incomplete", needBytes: position - offset + info.needBytes };
    const first = infos[0];
    const expectIndex = first === undefined ? undefined : first.index + infos.length;
    if (info.status === "invalid") return { status: "invalid", reason: info.reason, frameOffset: position - offset, index: expectIndex };
    const unit = info.unit!;
    if (first === undefined) {
      if (unit.position !== 0) return { status: "inside-unit", backBytes: unit.backBytes };
      count = unit.count;
    } else if (unit.position !== infos.length || unit.count !== count || unit.backBytes !== position - offset || info.index !== expectIndex) {
      return {
        status: "invalid", frameOffset: position - offset, index: expectIndex,
        reason: `record ${info.index} (unit position ${unit.position} of ${unit.count}, ${unit.backBytes} bytes back) does not continue ` +
          `the unit that starts at index ${first.index} with ${count} records`,
      };
    } else if (info.term < infos[infos.length - 1]!.term) {
      return { status: "invalid", frameOffset: position - offset, index: expectIndex, reason: "term goes backwards inside a unit" };
    }
    infos.push(info);
    frameOffsets.push(position - offset);
    position += info.frameBytes;
  }
  const tenants: Uint8Array[] = [];
  const names: string[] = [];
  for (let i = 0; i < count; i++) {
    const tenantStart = offset + frameOffsets[i]! + 26;
    const tenantBytes = buf.subarray(tenantStart, tenantStart + infos[i]!.tenantLength);
    try {
      names.push(tenantBytes.length === 0 ? "" : decoder.decode(tenantBytes));
    } catch {
      return { status: "invalid", reason: "tenant id is not UTF-8", frameOffset: frameOffsets[i]!, index: infos[i]!.index };
    }
    tenants.push(tenantBytes);
  }
  let payloadBytes = 0;
  for (const info of infos) payloadBytes += info.payloadBytes;
  const ciphertext = Buffer.allocUnsafe(payloadBytes);
  let cipherAt = 0;
  for (let i = 0; i < count; i++) {
    const start = offset + frameOffsets[i]! + infos[i]!.payloadStart;
    ciphertext.set(buf.subarray(start, start + infos[i]!.payloadBytes), cipherAt);
    cipherAt += infos[i]!.payloadBytes;
  }
  let plaintext: Buffer = ciphertext;
  if (cipher !== undefined) {
    const nonceStart = offset + 26 + infos[0]!.tenantLength + UNIT_FRAME_FIELDS_BYTES;
    const lastEnd = offset + frameOffsets[count - 1]! + infos[count - 1]!.frameBytes;
    plaintext = cipher.open(infos[0]!.index, infos.map((info, i) => ({ term: info.term, kind: info.kind, tenant: tenants[i]!, payloadBytes: info.payloadBytes })), {
      nonce: Buffer.from(buf.buffer, buf.byteOffset + nonceStart, GCM_NONCE_BYTES),
      ciphertext,
      tag: Buffer.from(buf.buffer, buf.byteOffset + lastEnd - GCM_TAG_BYTES, GCM_TAG_BYTES),
    }, { file: at.file, offset: at.fileOffset });
  }
  const entries: LogEntry[] = [];
  let plainAt = 0;
  for (let i = 0; i < count; i++) {
    const info = infos[i]!;
    entries.push({ term: info.term, index: info.index, kind: info.kind, tenant: names[i]!, payload: plaintext.subarray(plainAt, plainAt + info.payloadBytes) });
    plainAt += info.payloadBytes;
  }
  return { status: "ok", entries, frameOffsets, unitBytes: position - offset };
}

/** Reads only the index field of a frame (for resynchronising after damage). */
export function peekIndex(buf: Uint8Array, offset: number): number {
  return readU64(buf, offset + 16);
}

export function hex(n: number): string {
  return "0x" + n.toString(16).padStart(8, "0");
}

export { readU32, readU64, writeU64 };
