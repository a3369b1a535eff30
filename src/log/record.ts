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
 * In an encrypted segment (header algorithm 1) the frame is the same with the payload sealed:
 *
 *   26+t    12    nonce      random, fresh for every write (a rewritten index gets a new one)
 *   38+t    p     ciphertext of the payload (AES-256-GCM under the segment's data key)
 *   38+t+p  16    tag        authenticates the payload with cluster, segment, index, term, kind, tenant
 *
 * bodyLength counts the sealed payload (18 + t + 12 + p + 16), and the CRC covers the whole frame,
 * ciphertext included, so torn-tail detection and `log verify` need no keys; a read checks the CRC
 * first, then authenticates (src/crypto/record-cipher.ts). The tenant id stays in the clear.
 */

import { crc32c } from "@node-rs/crc32";
import { RECORD_SEAL_OVERHEAD_BYTES } from "../crypto/crypto-limits.js";
import type { SegmentRecordCipher } from "../crypto/record-cipher.js";
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

/** Bytes an encrypted record takes on disk: its frame plus the nonce and tag. */
export function sealedFrameBytes(tenantBytes: number, payloadBytes: number): number {
  return frameBytes(tenantBytes, payloadBytes) + RECORD_SEAL_OVERHEAD_BYTES;
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

/**
 * Like `encodeFrame`, with the payload sealed by the segment's cipher straight into `out` (no copy
 * of the plaintext is made). The caller reserved sealedFrameBytes(tenant, payload) bytes.
 */
export function encodeSealedFrame(
  out: Buffer,
  offset: number,
  entryTerm: number,
  entryIndex: number,
  kind: number,
  tenant: Uint8Array,
  payload: Uint8Array,
  cipher: SegmentRecordCipher,
): number {
  const bodyLength = BODY_FIXED_BYTES + tenant.length + payload.length + RECORD_SEAL_OVERHEAD_BYTES;
  out.writeUInt32LE(bodyLength, offset + 4);
  writeU64(out, entryTerm, offset + 8);
  writeU64(out, entryIndex, offset + 16);
  out[offset + 24] = kind;
  out[offset + 25] = tenant.length;
  out.set(tenant, offset + 26);
  const end = cipher.sealInto({ index: entryIndex, term: entryTerm, kind, tenant }, [payload], out, offset + 26 + tenant.length);
  invariant(end === offset + 8 + bodyLength, "sealed frame length");
  out.writeUInt32LE(crc32c(out.subarray(offset + 4, end)), offset);
  return end;
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
}

const decoder = new TextDecoder("utf-8", { fatal: true });

/** The fixed fields of a frame that passed its checksum, without copying the payload. */
export interface FrameInfo {
  term: Term;
  index: LogIndex;
  kind: RecordKindByte;
  tenantLength: number;
  frameBytes: number;
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
  if (bodyLength > BODY_FIXED_BYTES + TENANT_ID_BYTES_MAX + limits.payloadBytesMax) {
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
  return {
    status: "ok",
    term: entryTerm as Term,
    index: entryIndex as LogIndex,
    kind,
    tenantLength,
    frameBytes: total,
  };
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
  const payloadStart = offset + 26 + info.tenantLength;
  const entry: LogEntry = {
    term: info.term,
    index: info.index,
    kind: info.kind,
    tenant,
    payload: Buffer.from(buf.subarray(payloadStart, offset + info.frameBytes)),
  };
  return { status: "ok", entry, frameBytes: info.frameBytes };
}

/**
 * Like `decodeFrame` for a frame of an encrypted segment: structure and CRC first, then the payload
 * is opened by the segment's cipher. A record that does not authenticate (tampered, moved, wrong
 * key) throws the cipher's CorruptionError naming `file`, the frame's `fileOffset` and its index.
 */
export function decodeSealedFrame(
  buf: Uint8Array,
  offset: number,
  end: number,
  limits: DecodeLimits,
  cipher: SegmentRecordCipher,
  at: { file: string; fileOffset: number },
): DecodeResult {
  const info = inspectFrame(buf, offset, end, limits);
  if (info.status !== "ok") return info;
  const tenantBytes = buf.subarray(offset + 26, offset + 26 + info.tenantLength);
  let tenant: string;
  try {
    tenant = info.tenantLength === 0 ? "" : decoder.decode(tenantBytes);
  } catch {
    return { status: "invalid", reason: "tenant id is not UTF-8" };
  }
  const sealed = buf.subarray(offset + 26 + info.tenantLength, offset + info.frameBytes);
  const payload = cipher.open({ index: info.index, term: info.term, kind: info.kind, tenant: tenantBytes }, sealed, {
    file: at.file, offset: at.fileOffset,
  });
  return { status: "ok", entry: { term: info.term, index: info.index, kind: info.kind, tenant, payload }, frameBytes: info.frameBytes };
}

/** Reads only the index field of a frame (for resynchronising after damage). */
export function peekIndex(buf: Uint8Array, offset: number): number {
  return readU64(buf, offset + 16);
}

export function hex(n: number): string {
  return "0x" + n.toString(16).padStart(8, "0");
}

export { readU32, readU64, writeU64 };
