/**
 * Offline inspection of a log directory: `verity-admin log verify`, `log dump` and `verify`.
 * Nothing here writes: a torn tail is reported (it is cut on the node's next start), not repaired.
 *
 * Checks (log verify): every segment header (magic, version, checksum, cluster id, sequence number
 * matching the file name), every record's checksum, dense indexes inside and across segments (no
 * gap, no overlap), terms that never decrease, sealed segments that end exactly at a record
 * boundary, sealed segments' index files (missing or stale ones are noted; they are rebuilt on open).
 * None of this needs keys: encrypted segments are checked the same way (the CRC covers the
 * ciphertext); only `log dump` needs the key provider to show an encrypted record's payload.
 */

import { posix as pathPosix } from "node:path";
import { assertNever } from "../errors.js";
import { readFileIfExists } from "./atomic-file.js";
import type { FileSystem } from "./fs-port.js";
import { uuidFromBytes } from "./meta-state.js";
import type { SegmentUnitCipher } from "../crypto/unit-cipher.js";
import { decodeFrame, decodeUnit } from "./record.js";
import { READ_LIMITS, SEALED_READ_LIMITS, readFully, scanSegment } from "./segment-scan.js";
import { CURRENT_SEGMENT_NAME, EncryptionAlgorithm, decodeSegmentHeader, parseSealedSegmentName, sparseIndexName, type SegmentHeader } from "./segment-header.js";
import { decodeIndexFile } from "./sparse-index.js";
import { SEGMENT_HEADER_BYTES, SEGMENT_READ_CHUNK_BYTES } from "../limits.js";
import type { LogEntry } from "./types.js";

export interface SegmentReport {
  file: string;
  sealed: boolean;
  sequence: number | undefined;
  baseIndex: number | undefined;
  records: number;
  /** Index range held, when records > 0. */
  firstIndex: number | undefined;
  lastIndex: number | undefined;
  bytes: number;
  status: "ok" | "torn-tail" | "damaged";
}

export interface Problem {
  /** "corruption" stops a node from opening; "torn-tail" is cut on the next start; "note" is informational. */
  severity: "corruption" | "torn-tail" | "note";
  file: string;
  offset: number | undefined;
  index: number | undefined;
  reason: string;
}

export interface VerifyReport {
  dir: string;
  ok: boolean;
  clusterId: string | undefined;
  segments: SegmentReport[];
  records: number;
  /** Bytes of all segment files. */
  bytes: number;
  /** Bytes of record frames (headers excluded). */
  recordBytes: number;
  firstIndex: number | undefined;
  lastIndex: number | undefined;
  problems: Problem[];
}

interface Listed {
  name: string;
  sequence: number | undefined;
  sealed: boolean;
}

async function listSegments(fs: FileSystem, dir: string): Promise<Listed[]> {
  const names = await fs.readdir(dir);
  const listed: Listed[] = [];
  for (const name of names) {
    const seq = parseSealedSegmentName(name);
    if (seq !== undefined) listed.push({ name, sequence: seq, sealed: true });
  }
  listed.sort((a, b) => a.sequence! - b.sequence!);
  if (names.includes(CURRENT_SEGMENT_NAME)) listed.push({ name: CURRENT_SEGMENT_NAME, sequence: undefined, sealed: false });
  return listed;
}

/** Checks every segment of the log in `dir` (the `log/` directory); never modifies anything. */
export async function verifyLog(fs: FileSystem, dir: string, displayPrefix = "log/"): Promise<VerifyReport> {
  const report: VerifyReport = {
    dir, ok: true, clusterId: undefined, segments: [], records: 0, bytes: 0, recordBytes: 0,
    firstIndex: undefined, lastIndex: undefined, problems: [],
  };
  const problem = (p: Problem): void => {
    report.problems.push(p);
    if (p.severity === "corruption") report.ok = false;
  };
  const listed = await listSegments(fs, dir);
  if ((await fs.stat(pathPosix.join(dir, "rewrap.intent"))) !== undefined) {
    problem({ severity: "note", file: displayPrefix + "rewrap.intent", offset: undefined, index: undefined,
      reason: "a segment header re-wrap (key rotation) was interrupted; the node finishes it on its next start" });
  }
  if ((await fs.stat(pathPosix.join(dir, "truncate.intent"))) !== undefined) {
    problem({ severity: "note", file: displayPrefix + "truncate.intent", offset: undefined, index: undefined,
      reason: "a suffix truncation was interrupted; the node completes it on its next start" });
  }
  let expectSeq: number | undefined;
  let expectIndex: number | undefined;
  let previousTerm = 0;
  for (const item of listed) {
    const file = displayPrefix + item.name;
    const handle = await fs.open(pathPosix.join(dir, item.name), "read");
    try {
      let recordBytes = 0;
      const scan = await scanSegment(handle, {
        displayName: file, mayHaveTornTail: !item.sealed, previousTerm,
        onRecord: (info) => {
          recordBytes += info.frameBytes;
        },
      });
      const seg: SegmentReport = {
        file, sealed: item.sealed, sequence: scan.header?.sequence, baseIndex: scan.header?.baseIndex,
        records: scan.records, firstIndex: scan.records > 0 ? scan.header!.baseIndex : undefined,
        lastIndex: scan.records > 0 ? scan.lastIndex : undefined, bytes: scan.fileBytes, status: "ok",
      };
      report.segments.push(seg);
      report.bytes += scan.fileBytes;
      report.recordBytes += recordBytes;
      report.records += scan.records;
      if (scan.header !== undefined) {
        const cid = uuidFromBytes(scan.header.clusterId);
        if (report.clusterId === undefined) report.clusterId = cid;
        else if (cid !== report.clusterId) {
          problem({ severity: "corruption", file, offset: 16, index: undefined, reason: `segment belongs to cluster ${cid}, the others to ${report.clusterId}` });
        }
        if (item.sequence !== undefined && scan.header.sequence !== item.sequence) {
          problem({ severity: "corruption", file, offset: 12, index: undefined, reason: `header says segment ${scan.header.sequence}, the file name says ${item.sequence}` });
        }
        if (expectSeq !== undefined && scan.header.sequence !== expectSeq) {
          problem({ severity: "corruption", file, offset: 12, index: undefined, reason: `segment ${expectSeq} is missing before this one` });
        }
        if (expectIndex !== undefined && scan.header.baseIndex !== expectIndex) {
          problem({
            severity: "corruption", file, offset: 32, index: scan.header.baseIndex,
            reason: `segment starts at index ${scan.header.baseIndex} but the previous one ends at ${expectIndex - 1}`,
          });
        }
        expectSeq = scan.header.sequence + 1;
        // Past damage the segment's true end is unknown: do not report the next segment as a gap.
        expectIndex = scan.damage === undefined ? scan.lastIndex + 1 : undefined;
        if (scan.records > 0) {
          report.firstIndex ??= scan.header.baseIndex;
          report.lastIndex = scan.lastIndex;
        }
      }
      previousTerm = scan.lastTerm;
      if (scan.damage !== undefined) {
        seg.status = scan.damage.kind === "torn-tail" ? "torn-tail" : "damaged";
        problem({
          severity: scan.damage.kind, file, offset: scan.damage.offset, index: scan.damage.index,
          reason: scan.damage.kind === "torn-tail"
            ? `torn tail of ${scan.fileBytes - scan.damage.offset} bytes (${scan.damage.reason}); an interrupted write, never acknowledged, cut on the next start`
            : scan.damage.reason,
        });
      }
      if (item.sealed && item.sequence !== undefined && scan.damage === undefined) {
        await checkIndexFile(fs, dir, displayPrefix, item.sequence, scan.fileBytes, scan.lastIndex, problem);
      }
    } finally {
      await handle.close();
    }
  }
  return report;
}

async function checkIndexFile(
  fs: FileSystem, dir: string, displayPrefix: string, sequence: number, segmentBytes: number, lastIndex: number,
  problem: (p: Problem) => void,
): Promise<void> {
  const name = sparseIndexName(sequence);
  const bytes = await readFileIfExists(fs, pathPosix.join(dir, name));
  const content = bytes === undefined ? undefined : decodeIndexFile(bytes);
  const why = bytes === undefined ? "missing" : content === undefined ? "damaged" :
    content.segmentBytes !== segmentBytes || content.lastIndex !== lastIndex ? "stale" : undefined;
  if (why !== undefined) {
    problem({ severity: "note", file: displayPrefix + name, offset: undefined, index: undefined, reason: `index file ${why}; rebuilt on the next start` });
  }
}

/** Gives the record cipher of an encrypted segment (undefined: its payloads are not shown). */
export type DumpCipherSource = (header: SegmentHeader, file: string) => Promise<SegmentUnitCipher | undefined>;

/**
 * Reads records in index order from `from`, at most `limit`, straight from the segment files, for
 * `log dump`. Stops at the first damaged record and reports it as the last item. In an encrypted
 * segment, payloads are opened with `cipherFor` when given (a record that does not authenticate is
 * reported as damage); without it, entries come with `sealed: true` and the sealed bytes as payload.
 */
export async function* dumpLog(
  fs: FileSystem, dir: string, from: number, limit: number, displayPrefix = "log/", cipherFor?: DumpCipherSource,
): AsyncGenerator<{ file: string; offset: number; entry: LogEntry; sealed: boolean } | { file: string; offset: number; damage: string }> {
  let emitted = 0;
  for (const item of await listSegments(fs, dir)) {
    if (emitted >= limit) return;
    const handle = await fs.open(pathPosix.join(dir, item.name), "read");
    try {
      const size = await handle.size();
      const head = Buffer.alloc(Math.min(size, SEGMENT_HEADER_BYTES));
      await readFully(handle, head, 0);
      const h = decodeSegmentHeader(head);
      if (!h.ok) {
        yield { file: displayPrefix + item.name, offset: 0, damage: h.reason };
        return;
      }
      const file = displayPrefix + item.name;
      const encrypted = h.header.encryption.algorithm !== EncryptionAlgorithm.NONE;
      let cipher: SegmentUnitCipher | undefined;
      try {
        cipher = encrypted && cipherFor !== undefined ? await cipherFor(h.header, file) : undefined;
      } catch (e) {
        yield { file, offset: 0, damage: e instanceof Error ? e.message : String(e) };
        return;
      }
      let position = SEGMENT_HEADER_BYTES;
      let buf = Buffer.allocUnsafe(SEGMENT_READ_CHUNK_BYTES);
      // Bounded by the file size: every pass consumes a frame, grows the buffer once, or returns.
      while (position < size && emitted < limit) {
        const got = await readFully(handle, buf.subarray(0, Math.min(buf.length, size - position)), position);
        let offset = 0;
        while (offset < got && emitted < limit) {
          // One frame (plaintext) or one whole unit (encrypted), as entries with their file offsets.
          let r: { status: "ok"; items: Array<{ entry: LogEntry; at: number }>; bytes: number } | { status: "incomplete"; needBytes: number } |
            { status: "invalid"; reason: string; at: number };
          try {
            r = decodeAt(buf, offset, got, encrypted, cipher, file, position + offset);
          } catch (e) {
            r = { status: "invalid", reason: e instanceof Error ? e.message : String(e), at: 0 };
          }
          if (r.status === "incomplete" && position + offset + r.needBytes <= size) {
            if (offset === 0) buf = Buffer.allocUnsafe(r.needBytes);
            break;
          }
          if (r.status !== "ok") {
            yield { file, offset: position + offset + (r.status === "invalid" ? r.at : 0), damage: r.status === "invalid" ? r.reason : "the file ends inside a record" };
            return;
          }
          for (const item of r.items) {
            if (item.entry.index >= from && emitted < limit) {
              yield { file, offset: position + offset + item.at, entry: item.entry, sealed: encrypted && cipher === undefined };
              emitted++;
            }
          }
          offset += r.bytes;
        }
        position += offset;
      }
    } finally {
      await handle.close();
    }
  }
}

/** Decodes the frame (plaintext segment) or unit (encrypted segment) at `buf[offset]` for `dumpLog`. */
function decodeAt(
  buf: Buffer, offset: number, end: number, encrypted: boolean, cipher: SegmentUnitCipher | undefined, file: string, fileOffset: number,
): { status: "ok"; items: Array<{ entry: LogEntry; at: number }>; bytes: number } | { status: "incomplete"; needBytes: number } |
  { status: "invalid"; reason: string; at: number } {
  if (!encrypted) {
    const r = decodeFrame(buf, offset, end, READ_LIMITS);
    if (r.status === "ok") return { status: "ok", items: [{ entry: r.entry, at: 0 }], bytes: r.frameBytes };
    return r.status === "incomplete" ? r : { status: "invalid", reason: r.reason, at: 0 };
  }
  const u = decodeUnit(buf, offset, end, SEALED_READ_LIMITS, cipher, { file, fileOffset });
  switch (u.status) {
    case "ok":
      return { status: "ok", items: u.entries.map((entry, i) => ({ entry: { ...entry, payload: Buffer.from(entry.payload) }, at: u.frameOffsets[i]! })), bytes: u.unitBytes };
    case "incomplete":
      return u;
    case "invalid":
      return { status: "invalid", reason: u.reason, at: u.frameOffset };
    case "inside-unit":
      return { status: "invalid", reason: "a record whose unit's first frame is missing", at: 0 };
    default:
      return assertNever(u);
  }
}
