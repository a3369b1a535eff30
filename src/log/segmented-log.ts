/**
 * The replicated log's storage: one segmented file set per node (DESIGN.md section 2).
 *
 *   log/00000000.segment  sealed segments, immutable once sealed (renamed from current.segment)
 *   log/00000000.index    sparse index of a sealed segment; verified, rebuilt when missing or stale
 *   log/current.segment   the segment being appended to
 *   log/truncate.intent   present only while a suffix truncation is under way (redone on open)
 *   log/rewrap.intent     present only while a segment header is re-wrapped (finished on open)
 *
 * At-rest encryption (options.encryption, docs/encryption.md): every segment created while it is
 * on gets its own data key (header algorithm 1, format version 3) and each group commit's records
 * are sealed in units, one AEAD call per unit of up to UNIT_PAYLOAD_BYTES_MAX (src/log/record.ts);
 * reads authenticate whole units (a bounded cache keeps recently opened ones), and a truncation
 * inside a unit re-seals its kept prefix under a new nonce. Plaintext segments stay readable. The
 * next segment's key is made ahead of time (segment-keys.ts), so a roll does not wait on the KMS;
 * if the KMS cannot make it, the appends that need the new segment fail UNAVAILABLE and nothing
 * is written. Rotation re-wraps the keys in the headers (`rewrapHeaders`), crash-safely.
 *
 * Durability: appends are group-committed. Every append waiting when the writer is free goes into
 * one write and one fdatasync; `append` resolves only after the sync that covers it. In fsync mode
 * at most one write is ever unsynced, which is what lets recovery tell a torn tail from corruption
 * (src/log/segment-scan.ts). `sync_mode = "async"` resolves appends before their sync.
 *
 * Concurrency: one writer (the group-commit loop) owns appends, sealing and truncation. Reads run
 * concurrently with appends (they only see records up to `lastIndex`, which moves after the sync);
 * a truncation waits for reads in flight and holds new ones until it is done.
 */

import { posix as pathPosix } from "node:path";
import { crc32c } from "@node-rs/crc32";
import {
  CorruptionError,
  FailedPreconditionError,
  InvalidArgumentError,
  QuotaExceededError,
  VerityError,
  ErrorCode,
  invariant,
} from "../errors.js";
import {
  APPEND_QUEUE_BYTES_MAX,
  APPEND_QUEUE_CALLS_MAX,
  GROUP_COMMIT_BYTES_MAX,
  READ_BYTES_MAX,
  READ_ENTRIES_MAX,
  RECORD_BYTES_MAX,
  RECORD_BYTES_MAX_DEFAULT,
  SEGMENTS_MAX,
  SEGMENT_BYTES_DEFAULT,
  SEGMENT_BYTES_MAX,
  SEGMENT_BYTES_MIN,
  SEGMENT_HEADER_BYTES,
  SEGMENT_READ_CHUNK_BYTES,
  SEGMENT_READ_HANDLES_MAX,
  TENANT_ID_BYTES_MAX,
} from "../limits.js";
import type { AtRestEncryption } from "../crypto/at-rest.js";
import type { SegmentUnitCipher } from "../crypto/unit-cipher.js";
import { UNIT_FRAME_FIELDS_BYTES, UNIT_PAYLOAD_BYTES_MAX, UNIT_RECORDS_MAX, RECORD_SEAL_OVERHEAD_BYTES } from "../crypto/crypto-limits.js";
import { readFileIfExists, writeFileAtomic } from "./atomic-file.js";
import type { FileHandle, FileSystem } from "./fs-port.js";
import {
  decodeFrame, decodeUnit, encodeFrame, encodeSealedUnit, frameBytes, inspectFrame, readU64, sealedFrameBytes, sealedFrameBytesMax, writeU64,
  type FrameInfo, type UnitInput,
} from "./record.js";
import { scanSegment, readFully, readLimitsFor, READ_LIMITS, SEALED_READ_LIMITS, type ScanResult } from "./segment-scan.js";
import { DecryptedUnitCache } from "./unit-cache.js";
import {
  CURRENT_SEGMENT_NAME,
  EncryptionAlgorithm,
  encodeSegmentHeader,
  decodeSegmentHeader,
  parseSealedSegmentName,
  sealedSegmentName,
  sparseIndexName,
  type SegmentHeader,
} from "./segment-header.js";
import { SparseIndex, TermRuns, decodeIndexFile, encodeIndexFile, type TermRun } from "./sparse-index.js";
import type { LogEntry, LogIndex, Term } from "./types.js";
import { uuidFromBytes } from "./meta-state.js";
import { SegmentKeys, encryptedWithoutProvider, type SegmentKey } from "./segment-keys.js";
import { REWRAP_INTENT_NAME, finishRewrap, writeHeaderInPlace, writeRewrapIntent } from "./rewrap-intent.js";

/** The subset of a pino logger the log uses. */
export interface LogSink {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

const silentSink: LogSink = { info() {}, warn() {}, error() {} };

export type SyncMode = "fsync" | "async";

export interface SegmentedLogOptions {
  /** The `log/` directory; created if missing. */
  dir: string;
  fs: FileSystem;
  /** 16 bytes; every segment header must carry it. */
  clusterId: Uint8Array;
  /** `segment_size`: seal at this many bytes (SEGMENT_BYTES_MIN..SEGMENT_BYTES_MAX). */
  segmentBytes?: number;
  /** `max_record_size`: the largest payload `append` accepts (1..RECORD_BYTES_MAX). */
  recordBytesMax?: number;
  /** `sync_mode`. "async" acknowledges appends before they are synced, and says so at open. */
  syncMode?: SyncMode;
  /**
   * Check every record of every segment on open (the default). When false, sealed segments with
   * a valid index file are trusted at open and checked record by record as they are read.
   */
  verifyOnOpen?: boolean;
  /** The first index of a new, empty log (a restore from a snapshot starts past 1). */
  initialIndex?: number;
  /** Prefix for file names in messages (e.g. "log/"); defaults to the directory's base name + "/". */
  displayPrefix?: string;
  logger?: LogSink;
  /**
   * At-rest encryption (DataDir.encryption): new segments are encrypted, encrypted ones readable.
   * Its cluster id must be the one `clusterId` holds. Undefined: new segments are plaintext, and a
   * log holding encrypted segments refuses to open (FAILED_PRECONDITION).
   */
  encryption?: AtRestEncryption;
}

/** An entry to append: the caller (the Raft driver) assigns the index, which must be `nextIndex`. */
export interface AppendEntry {
  term: number;
  index: number;
  kind: number;
  tenant: string;
  payload: Uint8Array;
}

/** What recovery found and did on open. */
export interface RecoveryReport {
  segments: number;
  records: number;
  /** Bytes cut from a torn tail of current.segment (0 if none). */
  tornBytesCut: number;
  /** Where the torn tail started, if there was one. */
  tornAt: { file: string; offset: number; index: number; reason: string } | undefined;
  /** A suffix truncation interrupted by a crash was completed (from this index on). */
  truncationCompletedFrom: number | undefined;
  /** Sealed segments whose index file was missing or stale and was rebuilt. */
  indexesRebuilt: number;
}

/** What `segments()` reports about each segment (for status, backup and tools). */
export interface SegmentInfo {
  sequence: number;
  file: string;
  sealed: boolean;
  baseIndex: number;
  /** baseIndex - 1 when empty. */
  lastIndex: number;
  bytes: number;
  /** The KMS key that wrapped the segment's data key, and its version label; undefined in plaintext segments. */
  keyId?: string;
  keyVersion?: string;
}

/** What one step of `rewrapHeaders` reports. */
export interface RewrapProgress {
  /** Encrypted segments looked at so far, of `total`. */
  done: number;
  total: number;
  /** Headers rewritten so far (the others were already current). */
  rewrapped: number;
  file: string;
}

class Segment {
  /** Invariant: lastIndex >= baseIndex - 1; sizeBytes >= SEGMENT_HEADER_BYTES. */
  lastIndex: number;
  sizeBytes: number;
  handle: FileHandle | undefined;
  /** Reads currently using `handle` (it is not closed while > 0). */
  handleUsers = 0;
  lastUsed = 0;
  /**
   * The record cipher of an encrypted segment, while it is in use: always for the current segment,
   * for sealed ones while their read handle is open (the handle LRU bounds them).
   */
  cipher: SegmentUnitCipher | undefined;
  cipherLoading: Promise<SegmentUnitCipher | undefined> | undefined;

  constructor(
    /** Replaced only by a header re-wrap (the same data key, wrapped anew). */
    public header: SegmentHeader,
    public name: string,
    public sealed: boolean,
    public readonly sparse: SparseIndex,
    lastIndex: number,
    sizeBytes: number,
  ) {
    this.lastIndex = lastIndex;
    this.sizeBytes = sizeBytes;
  }

  get sequence(): number {
    return this.header.sequence;
  }

  get baseIndex(): number {
    return this.header.baseIndex;
  }

  get records(): number {
    return this.lastIndex - this.baseIndex + 1;
  }
}

interface PendingAppend {
  entries: AppendEntry[];
  tenants: Uint8Array[];
  bytes: number;
  resolve: () => void;
  reject: (e: unknown) => void;
}

/** One unit of an encrypted batch: records `first` .. `first + count - 1` of the batch (flattened), `bytes` on disk. */
interface PlannedUnit {
  first: number;
  count: number;
  bytes: number;
}

/** The units an encrypted batch writes to one segment, and their bytes. */
interface PlannedPart {
  units: PlannedUnit[];
  bytes: number;
}

const TRUNCATE_INTENT_NAME = "truncate.intent";
const INTENT_MAGIC = Buffer.from("VRTYTRN\0", "latin1");
const UNIT_INTENT_MAGIC = Buffer.from("VRTYTRU\0", "latin1");
const utf8 = new TextEncoder();

export class SegmentedLog {
  readonly recovery: RecoveryReport;
  private readonly fs: FileSystem;
  private readonly dir: string;
  private readonly clusterId: Uint8Array;
  private readonly segmentBytes: number;
  private readonly recordBytesMax: number;
  private readonly syncMode: SyncMode;
  private readonly displayPrefix: string;
  private readonly logger: LogSink;
  /** Invariant: sorted by sequence, contiguous indexes; the last one is current (not sealed). */
  private segmentList: Segment[];
  private readonly terms: TermRuns;

  private queue: PendingAppend[] = [];
  private queuedBytes = 0;
  /** Index the next appended entry must have. Invariant: nextIndexValue >= lastIndex + 1. */
  private nextIndexValue: number;
  private lastQueuedTerm: number;
  private writer: Promise<void> | undefined;
  /** Set after a failed write or sync: the log refuses all further work until reopened. */
  private failure: VerityError | undefined;
  private closed = false;
  /** True from the start of `truncateSuffix` until it ends; appends are a caller bug then. */
  private truncating = false;
  private readsInFlight = 0;
  private readsDrained: (() => void) | undefined;
  /** While set, a truncation is under way and new reads wait for it. */
  private exclusive: Promise<void> | undefined;
  private useClock = 0;
  private readonly keys: SegmentKeys;
  /**
   * Serialises what changes segment files' names or headers: a group commit (which may seal), a
   * truncation, one header re-wrap. At most one of each waits, so the chain stays short.
   */
  private structureTail: Promise<void> = Promise.resolve();
  private rewrapRunning = false;
  /** Units that authenticated, for nearby reads; cleared by every truncation. */
  private readonly units = new DecryptedUnitCache();

  private constructor(
    options: ResolvedOptions,
    segments: Segment[],
    termRuns: TermRuns,
    recovery: RecoveryReport,
    keys: SegmentKeys,
  ) {
    this.keys = keys;
    this.fs = options.fs;
    this.dir = options.dir;
    this.clusterId = options.clusterId;
    this.segmentBytes = options.segmentBytes;
    this.recordBytesMax = options.recordBytesMax;
    this.syncMode = options.syncMode;
    this.displayPrefix = options.displayPrefix;
    this.logger = options.logger;
    this.segmentList = segments;
    this.terms = termRuns;
    this.recovery = recovery;
    this.nextIndexValue = this.lastIndex + 1;
    this.lastQueuedTerm = this.lastTerm;
  }

  // ---------------------------------------------------------------- open and recovery

  /** Opens (or creates) the log, recovering from a crash. Throws `CorruptionError` on damage before the tail. */
  static async open(options: SegmentedLogOptions): Promise<SegmentedLog> {
    const segmentBytes = options.segmentBytes ?? SEGMENT_BYTES_DEFAULT;
    const recordBytesMax = options.recordBytesMax ?? RECORD_BYTES_MAX_DEFAULT;
    if (!Number.isSafeInteger(segmentBytes) || segmentBytes < SEGMENT_BYTES_MIN || segmentBytes > SEGMENT_BYTES_MAX) {
      throw new InvalidArgumentError(
        `segment_size ${segmentBytes} is out of range: it must be between ${SEGMENT_BYTES_MIN} (1MB) and ${SEGMENT_BYTES_MAX} (1GB) bytes`,
      );
    }
    if (!Number.isSafeInteger(recordBytesMax) || recordBytesMax < 1 || recordBytesMax > RECORD_BYTES_MAX) {
      throw new InvalidArgumentError(`max_record_size ${recordBytesMax} is out of range: it must be between 1 and ${RECORD_BYTES_MAX} bytes`);
    }
    if (options.clusterId.length !== 16) throw new InvalidArgumentError("cluster id must be 16 bytes");
    if (options.encryption !== undefined && options.encryption.clusterId !== uuidFromBytes(options.clusterId)) {
      throw new InvalidArgumentError(`the encryption's cluster id ${options.encryption.clusterId} is not the log's ${uuidFromBytes(options.clusterId)}`);
    }
    const resolved = {
      dir: options.dir,
      fs: options.fs,
      clusterId: options.clusterId,
      segmentBytes,
      recordBytesMax,
      syncMode: options.syncMode ?? "fsync",
      displayPrefix: options.displayPrefix ?? pathPosix.basename(options.dir) + "/",
      logger: options.logger ?? silentSink,
    };
    const keys = new SegmentKeys(options.encryption, options.clusterId, (obj, msg) => resolved.logger.warn(obj, msg));
    if (resolved.syncMode === "async") {
      resolved.logger.warn(
        { sync_mode: "async" },
        "sync_mode is \"async\": appends are acknowledged BEFORE they are on disk; a crash or power loss can lose acknowledged writes. Use sync_mode = \"fsync\" in production.",
      );
    }
    const fs = options.fs;
    await fs.mkdir(options.dir);
    await fs.checkWritableDir(options.dir);
    const recovery: RecoveryReport = {
      segments: 0, records: 0, tornBytesCut: 0, tornAt: undefined, truncationCompletedFrom: undefined, indexesRebuilt: 0,
    };
    const loader = new Loader(resolved, options.verifyOnOpen ?? true, options.initialIndex ?? 1, recovery, keys);
    const { segments, termRuns } = await loader.load();
    recovery.segments = segments.length;
    recovery.records = segments.reduce((n, s) => n + s.records, 0);
    const log = new SegmentedLog(resolved, segments, termRuns, recovery, keys);
    try {
      await log.matchCurrentToEncryption();
    } catch (e) {
      await log.close().catch(() => {});
      throw e;
    }
    if (recovery.tornBytesCut > 0) {
      resolved.logger.warn(
        { bytes_cut: recovery.tornBytesCut, ...recovery.tornAt },
        `recovery: truncated a torn tail of ${recovery.tornBytesCut} bytes (an interrupted write that was never acknowledged)`,
      );
    }
    return log;
  }

  // ---------------------------------------------------------------- state

  /** Index of the first entry the log holds (or would hold, when empty). */
  get firstIndex(): LogIndex {
    return this.segmentList[0]!.baseIndex as LogIndex;
  }

  /** Index of the last entry written (and synced, in fsync mode); firstIndex - 1 when empty. */
  get lastIndex(): LogIndex {
    return this.current.lastIndex as LogIndex;
  }

  /** Term of the last entry, or 0 when the log is empty. */
  get lastTerm(): Term {
    return (this.terms.termAt(this.lastIndex) ?? 0) as Term;
  }

  /** The index the next appended entry must carry (counts appends still queued). */
  get nextIndex(): LogIndex {
    return this.nextIndexValue as LogIndex;
  }

  /** The term of the entry at `index`, 0 for index 0, or undefined outside [firstIndex, lastIndex]. */
  termAt(index: number): Term | undefined {
    if (index === 0) return 0 as Term;
    if (index < this.firstIndex || index > this.lastIndex) return undefined;
    return this.terms.termAt(index);
  }

  /** The first index of each term present in the log, oldest first (what the Raft core's term index starts from). */
  termRuns(): TermRun[] {
    return this.terms.runsBetween(this.firstIndex, this.lastIndex);
  }

  /** The segments, oldest first. */
  segments(): SegmentInfo[] {
    return this.segmentList.map((s) => ({
      sequence: s.sequence,
      file: this.displayPrefix + s.name,
      sealed: s.sealed,
      baseIndex: s.baseIndex,
      lastIndex: s.lastIndex,
      bytes: s.sizeBytes,
      ...(s.header.encryption.algorithm === EncryptionAlgorithm.NONE ? {} : {
        keyId: new TextDecoder().decode(s.header.encryption.keyId),
        keyVersion: s.header.encryption.keyVersion ?? "",
      }),
    }));
  }

  /** The at-rest encryption this log writes new segments with, or undefined. */
  get encryption(): AtRestEncryption | undefined {
    return this.keys.atRest;
  }

  /** "fsync" or "async". */
  get mode(): SyncMode {
    return this.syncMode;
  }

  private get current(): Segment {
    return this.segmentList[this.segmentList.length - 1]!;
  }

  // ---------------------------------------------------------------- append (group commit)

  /**
   * Appends entries; resolves once they are durable (fsync mode) or written (async mode).
   * Entries must carry consecutive indexes starting at `nextIndex` and terms that never decrease:
   * the caller (the Raft driver) owns both, so a violation is a programmer error.
   * Bad input (empty or over-size payload, bad tenant, bad kind) is refused before anything is
   * queued, so a refused call writes nothing.
   */
  append(entries: readonly AppendEntry[]): Promise<void> {
    if (this.closed) return Promise.reject(new FailedPreconditionError("the log is closed"));
    if (this.failure !== undefined) return Promise.reject(this.failure);
    invariant(!this.truncating, "append while a truncation is under way");
    if (entries.length === 0) return Promise.resolve();
    let bytes = 0;
    const tenants: Uint8Array[] = [];
    let expectIndex = this.nextIndexValue;
    let lastTerm = this.lastQueuedTerm;
    for (const e of entries) {
      const tenant = this.checkEntry(e);
      invariant(e.index === expectIndex, `append of index ${e.index} where ${expectIndex} is next`);
      invariant(Number.isSafeInteger(e.term) && e.term >= lastTerm, `append of term ${e.term} after term ${lastTerm}`);
      tenants.push(tenant);
      bytes += this.recordBytes(tenant.length, e.payload.length);
      expectIndex++;
      lastTerm = e.term;
    }
    if (this.queue.length >= APPEND_QUEUE_CALLS_MAX || this.queuedBytes + bytes > APPEND_QUEUE_BYTES_MAX) {
      return Promise.reject(
        new QuotaExceededError(
          "append queue",
          APPEND_QUEUE_BYTES_MAX,
          `the log's append queue is full (${this.queue.length} calls, ${this.queuedBytes} bytes waiting; limits ` +
            `${APPEND_QUEUE_CALLS_MAX} calls, ${APPEND_QUEUE_BYTES_MAX} bytes): the disk is not keeping up; retry after a short wait`,
        ),
      );
    }
    this.nextIndexValue = expectIndex;
    this.lastQueuedTerm = lastTerm;
    this.queuedBytes += bytes;
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ entries: entries.slice(), tenants, bytes, resolve, reject });
      this.writer ??= this.runWriter();
    });
  }

  /**
   * Bytes a record takes in the segments this log writes now; when encryption is on, the most it
   * can take (a unit of its own): the queue and batch bounds count that, writes the real size.
   */
  private recordBytes(tenantBytes: number, payloadBytes: number): number {
    return this.keys.enabled ? sealedFrameBytesMax(tenantBytes, payloadBytes) : frameBytes(tenantBytes, payloadBytes);
  }

  /** Refuses bad input with a message naming the limit; returns the tenant id as UTF-8. */
  private checkEntry(e: AppendEntry): Uint8Array {
    if (!Number.isInteger(e.kind) || e.kind < 1 || e.kind > 255) {
      throw new InvalidArgumentError(`record kind ${e.kind} is invalid: it must be an integer from 1 to 255`);
    }
    const size = e.payload.length;
    if (size === 0) {
      throw new InvalidArgumentError("a record's payload is empty: records must hold at least 1 byte");
    }
    if (size > this.recordBytesMax) {
      throw new QuotaExceededError(
        "max_record_size",
        this.recordBytesMax,
        `a record of ${size} bytes is larger than max_record_size (${this.recordBytesMax} bytes): split it, or raise max_record_size in [limits]`,
      );
    }
    const tenant = e.tenant === "" ? new Uint8Array(0) : utf8.encode(e.tenant);
    if (tenant.length > TENANT_ID_BYTES_MAX) {
      throw new InvalidArgumentError(`tenant id is ${tenant.length} bytes; the limit is ${TENANT_ID_BYTES_MAX} bytes`);
    }
    return tenant;
  }

  private async runWriter(): Promise<void> {
    try {
      // Bounded by the queue: every pass takes at least one call off it.
      while (this.queue.length > 0) {
        // Let every caller whose append just resolved queue its next one before the batch is cut:
        // without this turn of the event loop the first caller back would get a batch to itself.
        await new Promise<void>((resolve) => setImmediate(resolve));
        const batch = this.takeBatch();
        if (this.failure !== undefined) {
          for (const p of batch) p.reject(this.failure);
          continue;
        }
        await this.withStructure(async () => {
          try {
            // Keys for every segment this batch starts, before a byte is written: without them
            // the batch (and what queued behind it) is refused whole, and the log stays usable.
            await this.keys.ensureReady(this.current.sequence + 1, this.rollsFor(batch));
          } catch (e) {
            this.refuseQueued(batch, e);
            return;
          }
          try {
            await this.writeBatch(batch);
            if (this.syncMode === "fsync") for (const p of batch) p.resolve();
          } catch (e) {
            this.fail(e);
            for (const p of batch) p.reject(this.failure);
          }
        });
      }
    } finally {
      this.writer = undefined;
    }
  }

  /** How many new segments writing `batch` starts (the same rule as writeBatch). */
  private rollsFor(batch: readonly PendingAppend[]): number {
    if (!this.keys.enabled) return 0;
    return this.planUnits(batch).length - 1;
  }

  /**
   * Cuts an encrypted batch into units and segments: one part per segment the batch writes to (the
   * first is the current segment), each a list of units. A record joins the open unit while the
   * unit's payloads stay within UNIT_PAYLOAD_BYTES_MAX and its records within UNIT_RECORDS_MAX;
   * a segment is sealed when the next record would push it (non-empty) past segment_size, as for
   * plaintext. Units never span segments. Bounded by the batch.
   */
  private planUnits(batch: readonly PendingAppend[]): PlannedPart[] {
    const parts: PlannedPart[] = [{ units: [], bytes: 0 }];
    let size = this.current.sizeBytes;
    let records = this.current.records;
    let open: PlannedUnit | undefined;
    let openPayload = 0;
    let flat = 0;
    for (const p of batch) {
      for (let i = 0; i < p.entries.length; i++, flat++) {
        const payloadBytes = p.entries[i]!.payload.length;
        const base = frameBytes(p.tenants[i]!.length, payloadBytes) + UNIT_FRAME_FIELDS_BYTES;
        const part = parts[parts.length - 1]!;
        if (open !== undefined && open.count < UNIT_RECORDS_MAX && openPayload + payloadBytes <= UNIT_PAYLOAD_BYTES_MAX &&
            size + base <= this.segmentBytes) {
          open.count++;
          open.bytes += base;
          openPayload += payloadBytes;
          part.bytes += base;
          size += base;
          records++;
          continue;
        }
        const bytes = base + RECORD_SEAL_OVERHEAD_BYTES;
        let target = part;
        if (size + bytes > this.segmentBytes && records > 0) {
          target = { units: [], bytes: 0 };
          parts.push(target);
          size = SEGMENT_HEADER_BYTES;
          records = 0;
        }
        open = { first: flat, count: 1, bytes };
        openPayload = payloadBytes;
        target.units.push(open);
        target.bytes += bytes;
        size += bytes;
        records++;
      }
    }
    return parts;
  }

  /**
   * Refuses `batch` and everything queued behind it (their indexes follow its own) without writing
   * anything; the next append starts again at lastIndex + 1. For a KMS that cannot make a new
   * segment's key: the log stays usable, unlike after a failed write.
   */
  private refuseQueued(batch: PendingAppend[], e: unknown): void {
    const refused = [...batch, ...this.queue.splice(0)];
    this.queuedBytes = 0;
    this.nextIndexValue = this.lastIndex + 1;
    this.lastQueuedTerm = this.lastTerm;
    this.logger.warn({ appends: refused.length, error: e instanceof Error ? e.message : String(e) }, "appends refused: no data key for a new segment");
    for (const p of refused) p.reject(e);
  }

  /** Runs `body` while nothing else renames, truncates or rewrites segment headers. */
  private async withStructure<T>(body: () => Promise<T>): Promise<T> {
    const previous = this.structureTail;
    let release!: () => void;
    this.structureTail = new Promise<void>((r) => (release = r));
    await previous;
    try {
      return await body();
    } finally {
      release();
    }
  }

  /** The calls for one group commit: everything waiting, up to GROUP_COMMIT_BYTES_MAX (at least one call). */
  private takeBatch(): PendingAppend[] {
    let bytes = 0;
    let n = 0;
    while (n < this.queue.length && (n === 0 || bytes + this.queue[n]!.bytes <= GROUP_COMMIT_BYTES_MAX)) {
      bytes += this.queue[n]!.bytes;
      n++;
    }
    const batch = this.queue.splice(0, n);
    this.queuedBytes -= bytes;
    return batch;
  }

  /**
   * Writes one batch: frames are encoded into one buffer; the buffer is split where the current
   * segment fills up (that part is written, synced and sealed first); the rest is written with one
   * write and synced with one fdatasync. In-memory state moves only after the bytes are down.
   */
  private async writeBatch(batch: PendingAppend[]): Promise<void> {
    if (this.keys.enabled) return this.writeSealedBatch(batch);
    const total = batch.reduce((n, p) => n + p.bytes, 0);
    const buf = Buffer.allocUnsafe(total);
    let offset = 0;
    let partStart = 0;
    const pendingNotes: Array<{ index: number; term: number; offset: number }> = [];
    for (const p of batch) {
      for (let i = 0; i < p.entries.length; i++) {
        const e = p.entries[i]!;
        const size = this.recordBytes(p.tenants[i]!.length, e.payload.length);
        const seg = this.current;
        const fileOffset = seg.sizeBytes + (offset - partStart);
        // Seal when this record would push a non-empty segment past segment_size.
        if (fileOffset + size > this.segmentBytes && !(seg.records === 0 && offset === partStart)) {
          await this.writePart(buf.subarray(partStart, offset), pendingNotes, true);
          await this.seal();
          partStart = offset;
          pendingNotes.length = 0;
        }
        pendingNotes.push({ index: e.index, term: e.term, offset: this.current.sizeBytes + (offset - partStart) });
        invariant(this.current.cipher === undefined, "the current segment is plaintext when encryption is off");
        offset = encodeFrame(buf, offset, e.term, e.index, e.kind, p.tenants[i]!, e.payload);
      }
    }
    invariant(offset === total, "encoded size matches the computed size");
    await this.writeLastPart(batch, buf.subarray(partStart, offset), pendingNotes);
  }

  /** Writes the batch's last part; in async mode the batch is acknowledged before its sync. */
  private async writeLastPart(batch: PendingAppend[], bytes: Uint8Array, notes: ReadonlyArray<{ index: number; term: number; offset: number }>): Promise<void> {
    if (this.syncMode === "async") {
      await this.writePart(bytes, notes, false);
      for (const p of batch) p.resolve(); // acknowledged before the sync: that is what async mode means
      await this.current.handle!.datasync();
    } else {
      await this.writePart(bytes, notes, true);
    }
  }

  /**
   * writeBatch for an encrypted log: the batch is cut into units (planUnits), each sealed with one
   * AEAD call straight into the write buffer; a part that fills the current segment is written,
   * synced and sealed before the next part is encoded under the next segment's key.
   */
  private async writeSealedBatch(batch: PendingAppend[]): Promise<void> {
    const plan = this.planUnits(batch);
    const flat: UnitInput[] = [];
    for (const p of batch) {
      for (let i = 0; i < p.entries.length; i++) {
        const e = p.entries[i]!;
        flat.push({ term: e.term, index: e.index, kind: e.kind, tenant: p.tenants[i]!, payload: e.payload });
      }
    }
    const buf = Buffer.allocUnsafe(plan.reduce((n, part) => n + part.bytes, 0));
    let offset = 0;
    // Bounded by the plan: one pass per segment the batch writes to.
    for (let partIndex = 0; partIndex < plan.length; partIndex++) {
      const part = plan[partIndex]!;
      if (partIndex > 0) await this.seal();
      const cipher = this.current.cipher;
      invariant(cipher !== undefined, "the current segment is encrypted when encryption is on");
      const partStart = offset;
      const notes: Array<{ index: number; term: number; offset: number }> = [];
      for (const unit of part.units) {
        const records = flat.slice(unit.first, unit.first + unit.count);
        let frameAt = this.current.sizeBytes + (offset - partStart);
        for (let k = 0; k < records.length; k++) {
          const r = records[k]!;
          notes.push({ index: r.index, term: r.term, offset: frameAt });
          frameAt += sealedFrameBytes(r.tenant.length, r.payload.length, k, records.length);
        }
        const end = encodeSealedUnit(buf, offset, records, cipher);
        invariant(end === offset + unit.bytes, "a sealed unit has its planned size");
        offset = end;
      }
      const bytes = buf.subarray(partStart, offset);
      if (partIndex < plan.length - 1) await this.writePart(bytes, notes, true);
      else await this.writeLastPart(batch, bytes, notes);
    }
    invariant(offset === buf.length, "encoded size matches the planned size");
  }

  private async writePart(
    bytes: Uint8Array,
    notes: ReadonlyArray<{ index: number; term: number; offset: number }>,
    sync: boolean,
  ): Promise<void> {
    if (bytes.length === 0) return;
    const seg = this.current;
    await seg.handle!.write(bytes, 0, bytes.length, seg.sizeBytes);
    // In fsync mode the current segment is open with O_DSYNC: the write itself was durable.
    if (sync && this.syncMode === "async") await seg.handle!.datasync();
    for (const n of notes) {
      seg.sparse.note(n.index, n.offset);
      this.terms.note(n.index as LogIndex, n.term as Term);
    }
    seg.sizeBytes += bytes.length;
    seg.lastIndex = notes[notes.length - 1]!.index;
    // Half full: make the next segment's data key now, so the roll does not wait on the KMS.
    if (this.keys.enabled && seg.sizeBytes * 2 >= this.segmentBytes) this.keys.prepare(seg.sequence + 1);
  }

  /**
   * Seals current.segment: writes its index file, renames it to its sequence number, and starts a
   * new current.segment (created as a temp file with its header synced, then renamed into place).
   * A crash at any step leaves a state that open() recovers (see `Loader`).
   */
  private async seal(): Promise<void> {
    const seg = this.current;
    if (this.segmentList.length >= SEGMENTS_MAX) {
      throw new QuotaExceededError("segments", SEGMENTS_MAX, `the log has ${SEGMENTS_MAX} segments, the most it may hold; compact it before writing more`);
    }
    // The key first (prepared ahead: see ensureReady), so no file changes if it cannot be had.
    const key = await this.keys.forNewSegment(seg.sequence + 1);
    const sealedName = sealedSegmentName(seg.sequence);
    await this.writeIndexFile(seg);
    await this.fs.rename(this.path(CURRENT_SEGMENT_NAME), this.path(sealedName));
    seg.name = sealedName;
    seg.sealed = true;
    const next = await createSegment(this.fs, this.dir, {
      sequence: seg.sequence + 1,
      clusterId: this.clusterId,
      baseIndex: (seg.lastIndex + 1) as LogIndex,
      encryption: key.encryption,
    }, this.syncMode, key);
    this.segmentList.push(next);
    this.releaseIdleHandles();
  }

  private async writeIndexFile(seg: Segment): Promise<void> {
    const content = encodeIndexFile({
      baseIndex: seg.baseIndex,
      lastIndex: seg.lastIndex,
      segmentBytes: seg.sizeBytes,
      headerCrc: headerCrc(seg.header),
      entries: seg.sparse.entries(),
      termRuns: this.terms.runsBetween(seg.baseIndex, seg.lastIndex),
    });
    // Not fsync'd on purpose: an index file is checked before it is trusted and rebuilt if bad.
    const tmp = this.path(sparseIndexName(seg.sequence) + ".tmp");
    if ((await this.fs.stat(tmp)) !== undefined) await this.fs.unlink(tmp);
    const h = await this.fs.open(tmp, "create-exclusive");
    try {
      await h.write(content, 0, content.length, 0);
    } finally {
      await h.close();
    }
    await this.fs.rename(tmp, this.path(sparseIndexName(seg.sequence)));
  }

  /** Resolves when every append queued so far has been written (or has failed). */
  async flush(): Promise<void> {
    // Bounded: each pass waits for one writer run, which drains the queue.
    while (this.writer !== undefined) await this.writer;
  }

  private fail(e: unknown): void {
    if (this.failure !== undefined) return;
    // After a failed write or fsync the page cache may not match the disk (fsyncgate): the only
    // safe way on is to reopen the log, which re-reads what is really on disk.
    this.failure =
      e instanceof VerityError
        ? new VerityError(e.code, `${e.message}. The log stopped accepting writes; restart the node to recover from what is on disk.`, { cause: e })
        : new VerityError(ErrorCode.IO_ERROR, `log write failed: ${String(e)}. Restart the node.`, { cause: e });
    this.logger.error({ err: this.failure.message }, "log write failed; refusing further writes");
  }

  // ---------------------------------------------------------------- reads

  /**
   * Entries with index in [from, to), in order, at most `maxBytes` of payload (but at least one
   * entry) and at most READ_ENTRIES_MAX entries. `to` is clamped to lastIndex + 1. Every record's
   * checksum is verified; damage throws `CorruptionError` and nothing from the damaged range is returned.
   */
  async read(from: number, to: number, maxBytes: number = READ_BYTES_MAX): Promise<LogEntry[]> {
    if (!Number.isSafeInteger(from) || !Number.isSafeInteger(to)) throw new InvalidArgumentError("read range must be integers");
    await this.enterRead();
    try {
      return await this.readRange(from, to, maxBytes);
    } finally {
      this.exitRead();
    }
  }

  /** `read` without entering the read gate (a truncation holding it reads the unit it cuts). */
  private async readRange(from: number, to: number, maxBytes: number): Promise<LogEntry[]> {
    if (from < this.firstIndex) {
      throw new InvalidArgumentError(`index ${from} is before the first index ${this.firstIndex} this log holds`);
    }
    const end = Math.min(to, this.lastIndex + 1, from + READ_ENTRIES_MAX);
    const out: LogEntry[] = [];
    let bytes = 0;
    const budget = Math.min(maxBytes, READ_BYTES_MAX);
    let segIdx = this.segmentIndexOf(from);
    let next = from;
    // Bounded by the segment count; each pass reads one segment's part of the range.
    while (next < end && segIdx < this.segmentList.length) {
      const seg = this.segmentList[segIdx]!;
      const done = await this.readFromSegment(seg, next, end, budget, out, bytes);
      bytes = done.bytes;
      next = done.next;
      if (done.full) break;
      segIdx++;
    }
    return out;
  }

  private async readFromSegment(
    seg: Segment,
    from: number,
    end: number,
    budget: number,
    out: LogEntry[],
    bytesSoFar: number,
  ): Promise<{ next: number; bytes: number; full: boolean }> {
    if (seg.header.encryption.algorithm !== EncryptionAlgorithm.NONE) return this.readFromSealedSegment(seg, from, end, budget, out, bytesSoFar);
    const stop = Math.min(end, seg.lastIndex + 1);
    let position = seg.sparse.floorOffset(from);
    let expect: number | undefined;
    let bytes = bytesSoFar;
    let next = from;
    const handle = await this.acquireHandle(seg);
    try {
      let buf = Buffer.allocUnsafe(SEGMENT_READ_CHUNK_BYTES);
      // Bounded: every pass consumes at least one frame, or grows the buffer to fit one, or throws.
      while (next < stop) {
        const want = Math.min(buf.length, seg.sizeBytes - position);
        const got = await readFully(handle, buf.subarray(0, want), position);
        let offset = 0;
        while (offset < got && next < stop) {
          const r = decodeFrame(buf, offset, got, READ_LIMITS);
          if (r.status === "incomplete") {
            if (position + offset + r.needBytes > seg.sizeBytes) {
              throw this.corruption(seg, position + offset, next, "the segment ends inside a record");
            }
            if (offset === 0) buf = Buffer.allocUnsafe(Math.max(r.needBytes, buf.length));
            break;
          }
          if (r.status === "invalid") throw this.corruption(seg, position + offset, expect ?? next, r.reason);
          const idx = r.entry.index;
          if (expect !== undefined && idx !== expect) {
            throw this.corruption(seg, position + offset, expect, `record holds index ${idx} where ${expect} was expected`);
          }
          expect = idx + 1;
          if (idx >= from) {
            if (out.length > 0 && bytes + r.entry.payload.length > budget) return { next, bytes, full: true };
            out.push(r.entry);
            bytes += r.entry.payload.length;
            next = idx + 1;
          }
          offset += r.frameBytes;
        }
        position += offset;
        if (got === 0) throw this.corruption(seg, position, next, "the segment ends before its last record");
      }
    } finally {
      this.releaseHandle(seg);
    }
    return { next, bytes, full: false };
  }

  /**
   * readFromSegment for an encrypted segment: whole units are read and opened (a record is returned
   * only once its whole unit authenticated), through the cache of decrypted units. Payloads are
   * copies. A read that starts inside a unit steps back to the unit's first frame once.
   */
  private async readFromSealedSegment(
    seg: Segment,
    from: number,
    end: number,
    budget: number,
    out: LogEntry[],
    bytesSoFar: number,
  ): Promise<{ next: number; bytes: number; full: boolean }> {
    const stop = Math.min(end, seg.lastIndex + 1);
    let bytes = bytesSoFar;
    let next = from;
    let position: number | undefined;
    let steppedBack = false;
    let handle: FileHandle | undefined;
    let buf = Buffer.allocUnsafe(0);
    let bufStart = 0;
    let bufEnd = 0;
    const file = this.displayPrefix + seg.name;
    try {
      // Bounded: every pass returns records of one unit, skips one unit, steps back once, grows the buffer, or throws.
      while (next < stop) {
        const cached = this.units.find(seg.sequence, next);
        let unit = cached;
        if (unit === undefined) {
          handle ??= await this.acquireHandle(seg);
          const cipher = await this.cipherOf(seg);
          position ??= seg.sparse.floorOffset(next);
          if (position < bufStart || position >= bufEnd) {
            const want = Math.min(Math.max(buf.length, SEGMENT_READ_CHUNK_BYTES), seg.sizeBytes - position);
            if (buf.length < want) buf = Buffer.allocUnsafe(want);
            bufEnd = position + (await readFully(handle, buf.subarray(0, want), position));
            bufStart = position;
          }
          const at = position - bufStart;
          const r = decodeUnit(buf, at, bufEnd - bufStart, SEALED_READ_LIMITS, undefined, { file, fileOffset: position });
          if (r.status === "inside-unit") {
            if (steppedBack || r.backBytes > position - SEGMENT_HEADER_BYTES) {
              throw this.corruption(seg, position, next, `a record ${r.backBytes} bytes past its unit's start, where a unit was expected to start`);
            }
            steppedBack = true;
            position -= r.backBytes;
            continue;
          }
          if (r.status === "incomplete") {
            if (position + r.needBytes > seg.sizeBytes) throw this.corruption(seg, position, next, "the segment ends inside a unit");
            if (r.needBytes > buf.length) buf = Buffer.allocUnsafe(r.needBytes);
            bufStart = bufEnd = 0;
            continue;
          }
          if (r.status === "invalid") throw this.corruption(seg, position + r.frameOffset, r.index ?? next, r.reason);
          const first = r.entries[0]!.index;
          if (first + r.entries.length <= next) {
            position += r.unitBytes; // a unit before the range: structure checked, not opened
            continue;
          }
          if (first > next) throw this.corruption(seg, position, next, `a unit starting at index ${first} where index ${next} was expected`);
          unit = this.openUnit(seg, cipher!, buf, at, position, r.unitBytes);
          position += r.unitBytes;
        } else {
          position = unit.end;
        }
        for (const e of unit.entries) {
          if (e.index < next) continue;
          if (e.index >= stop) break;
          if (out.length > 0 && bytes + e.payload.length > budget) return { next, bytes, full: true };
          out.push({ ...e, payload: Buffer.from(e.payload) });
          bytes += e.payload.length;
          next = e.index + 1;
        }
      }
    } finally {
      if (handle !== undefined) this.releaseHandle(seg);
    }
    return { next, bytes, full: false };
  }

  /** Opens (authenticates and decrypts) the unit at `buf[at]`, file offset `position`, and caches it. */
  private openUnit(seg: Segment, cipher: SegmentUnitCipher, buf: Buffer, at: number, position: number, unitBytes: number) {
    const r = decodeUnit(buf, at, at + unitBytes, SEALED_READ_LIMITS, cipher, { file: this.displayPrefix + seg.name, fileOffset: position });
    invariant(r.status === "ok", "a unit whose structure was checked decodes");
    const unit = {
      sequence: seg.sequence, start: position, end: position + unitBytes, entries: r.entries,
      bytes: r.entries.reduce((n, e) => n + e.payload.length, 0),
    };
    this.units.put(unit);
    return unit;
  }

  /**
   * The segment's record cipher (undefined for plaintext), unwrapping its data key on first use.
   * Called with the segment's handle acquired, so the LRU does not drop the cipher under the read.
   */
  private async cipherOf(seg: Segment): Promise<SegmentUnitCipher | undefined> {
    if (seg.header.encryption.algorithm === EncryptionAlgorithm.NONE) return undefined;
    if (seg.cipher !== undefined) return seg.cipher;
    seg.cipherLoading ??= this.keys.cipherFor(seg.header, this.displayPrefix + seg.name).finally(() => {
      seg.cipherLoading = undefined;
    });
    const cipher = await seg.cipherLoading;
    seg.cipher ??= cipher;
    return seg.cipher;
  }

  private corruption(seg: Segment, offset: number, index: number, detail: string): CorruptionError {
    return new CorruptionError({ file: this.displayPrefix + seg.name, offset, index }, detail);
  }

  /** Position in `segmentList` of the segment holding `index` (the last one if past the end). */
  private segmentIndexOf(index: number): number {
    let lo = 0;
    let hi = this.segmentList.length - 1;
    let found = 0;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (this.segmentList[mid]!.baseIndex <= index) {
        found = mid;
        lo = mid + 1;
      } else {
        hi = mid - 1;
      }
    }
    return found;
  }

  private async enterRead(): Promise<void> {
    if (this.closed) throw new FailedPreconditionError("the log is closed");
    // Bounded: a truncation holds `exclusive` for one operation; then reads go on.
    while (this.exclusive !== undefined) await this.exclusive;
    this.readsInFlight++;
  }

  private exitRead(): void {
    this.readsInFlight--;
    if (this.readsInFlight === 0) this.readsDrained?.();
  }

  private async acquireHandle(seg: Segment): Promise<FileHandle> {
    seg.handleUsers++;
    seg.lastUsed = ++this.useClock;
    try {
      seg.handle ??= await this.fs.open(this.path(seg.name), "read");
    } catch (e) {
      seg.handleUsers--;
      throw e;
    }
    return seg.handle;
  }

  private releaseHandle(seg: Segment): void {
    seg.handleUsers--;
    this.releaseIdleHandles();
  }

  /** Keeps at most SEGMENT_READ_HANDLES_MAX sealed segments open, closing the least recently used idle ones. */
  private releaseIdleHandles(): void {
    const open = this.segmentList.filter((s) => s.sealed && s.handle !== undefined);
    if (open.length <= SEGMENT_READ_HANDLES_MAX) return;
    open.sort((a, b) => a.lastUsed - b.lastUsed);
    let excess = open.length - SEGMENT_READ_HANDLES_MAX;
    for (const s of open) {
      if (excess === 0) break;
      if (s.handleUsers > 0) continue;
      const h = s.handle!;
      s.handle = undefined;
      s.cipher = undefined; // unwrapped again (through the provider's bounded cache) when read next
      excess--;
      void h.close().catch(() => {});
    }
  }

  // ---------------------------------------------------------------- truncation

  /**
   * Removes every entry from `fromIndex` on: what a Raft follower does when its uncommitted tail
   * conflicts with the leader's log. Refuses to cut at or below `committedIndex`. Crash-safe: an
   * intent file records the cut first, and open() finishes a cut that a crash interrupted.
   */
  async truncateSuffix(fromIndex: number, committedIndex: number): Promise<void> {
    if (!Number.isSafeInteger(fromIndex) || fromIndex <= committedIndex) {
      throw new FailedPreconditionError(
        `refusing to truncate the log from index ${fromIndex}: entries up to ${committedIndex} are committed and can never be removed`,
      );
    }
    if (fromIndex < this.firstIndex) {
      throw new FailedPreconditionError(`cannot truncate from index ${fromIndex}, before the first index ${this.firstIndex}`);
    }
    invariant(!this.truncating, "one truncation at a time");
    this.truncating = true;
    try {
      await this.flush();
      if (this.failure !== undefined) throw this.failure;
      if (fromIndex > this.lastIndex) return;
      await this.withStructure(async () => {
        await this.truncateExclusive(fromIndex);
        try {
          // A cut back into a plaintext segment must not make new records plaintext.
          await this.matchCurrentToEncryption();
        } catch (e) {
          this.fail(e);
          throw this.failure;
        }
      });
    } finally {
      this.truncating = false;
    }
  }

  private async truncateExclusive(fromIndex: number): Promise<void> {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    // Bounded: at most one truncation runs; others wait for it.
    while (this.exclusive !== undefined) await this.exclusive;
    this.exclusive = gate;
    try {
      if (this.readsInFlight > 0) await new Promise<void>((r) => (this.readsDrained = r));
      this.readsDrained = undefined;
      const target = this.segmentList[this.segmentIndexOf(fromIndex)]!;
      const at = await this.frameAt(target, fromIndex);
      const rewrite = await this.resealedPrefix(target, fromIndex, at);
      await writeTruncateIntent(this.fs, this.path(TRUNCATE_INTENT_NAME), fromIndex, rewrite);
      await this.truncateLoaded(fromIndex, at.offset, rewrite);
      await this.fs.unlink(this.path(TRUNCATE_INTENT_NAME));
      await this.fs.syncDir(this.dir);
    } catch (e) {
      this.fail(e);
      throw this.failure;
    } finally {
      this.exclusive = undefined;
      release();
    }
  }

  /**
   * Cuts the log at `fromIndex` (at byte `offset` of its segment). With `rewrite` (a cut inside a
   * unit) the file is cut at the unit's start and the re-sealed kept prefix written there instead.
   */
  private async truncateLoaded(fromIndex: number, frameOffset: number, rewrite: UnitRewrite | undefined): Promise<void> {
    this.units.clear();
    const targetPos = this.segmentIndexOf(fromIndex);
    const target = this.segmentList[targetPos]!;
    invariant(rewrite === undefined || rewrite.sequence === target.sequence, "a unit rewrite is in the target segment");
    const offset = rewrite === undefined ? frameOffset : rewrite.cutOffset + rewrite.bytes.length;
    // Later segments first, newest first, so a crash never leaves a gap in front of surviving data.
    for (const seg of this.segmentList.slice(targetPos + 1).reverse()) {
      await this.closeHandle(seg);
      await this.fs.unlink(this.path(seg.name));
      if (seg.sealed) await unlinkIfExists(this.fs, this.path(sparseIndexName(seg.sequence)));
    }
    this.segmentList = this.segmentList.slice(0, targetPos + 1);
    await this.closeHandle(target);
    const handle = await this.fs.open(this.path(target.name), appendMode(this.syncMode));
    await applyCut(handle, offset, rewrite);
    if (target.sealed) {
      await unlinkIfExists(this.fs, this.path(sparseIndexName(target.sequence)));
      await this.fs.rename(this.path(target.name), this.path(CURRENT_SEGMENT_NAME));
      target.name = CURRENT_SEGMENT_NAME;
      target.sealed = false;
    }
    await this.fs.syncDir(this.dir);
    target.handle = handle;
    target.sizeBytes = offset;
    target.lastIndex = fromIndex - 1;
    target.sparse.truncateFrom(fromIndex);
    this.terms.truncateFrom(fromIndex);
    this.nextIndexValue = fromIndex;
    this.lastQueuedTerm = this.terms.termAt(fromIndex - 1) ?? 0;
  }

  // ---------------------------------------------------------------- encryption

  /**
   * Makes the current segment match the configuration (at open, and after a truncation made an
   * older segment current). Encrypted: it gets its cipher (unwrapping its key). Plaintext with
   * encryption on: an empty one is started again encrypted; one holding records is sealed as it is
   * (it stays readable) and new records go to a new, encrypted segment.
   */
  private async matchCurrentToEncryption(): Promise<void> {
    const seg = this.current;
    if (seg.header.encryption.algorithm !== EncryptionAlgorithm.NONE) {
      seg.cipher ??= await this.keys.cipherFor(seg.header, this.displayPrefix + seg.name);
    } else if (this.keys.enabled && seg.records > 0) {
      await this.keys.ensureReady(seg.sequence + 1, 1);
      await this.seal();
    } else if (this.keys.enabled) {
      const key = await this.keys.forNewSegment(seg.sequence);
      await this.closeHandle(seg);
      const fresh = await createSegment(this.fs, this.dir, { ...seg.header, encryption: key.encryption }, this.syncMode, key);
      this.segmentList[this.segmentList.length - 1] = fresh;
    }
    if (this.keys.enabled && this.current.sizeBytes * 2 >= this.segmentBytes) this.keys.prepare(this.current.sequence + 1);
  }

  /**
   * Key rotation: re-wraps every encrypted segment's data key under the KMS key's current version
   * and rewrites only the header (crash-safely, through log/rewrap.intent); records are untouched.
   * Segments whose key the provider returns unchanged are skipped. Appends go on meanwhile: each
   * header is written between two group commits. One re-wrap at a time (FAILED_PRECONDITION).
   */
  async rewrapHeaders(onProgress?: (progress: RewrapProgress) => void): Promise<{ total: number; rewrapped: number }> {
    if (this.closed) throw new FailedPreconditionError("the log is closed");
    if (this.rewrapRunning) throw new FailedPreconditionError("a re-wrap of the log's segment headers is already running; wait for it to finish");
    this.rewrapRunning = true;
    try {
      const targets = this.segmentList.filter((seg) => seg.header.encryption.algorithm !== EncryptionAlgorithm.NONE).map((seg) => seg.sequence);
      let done = 0;
      let rewrapped = 0;
      // Bounded by the segment count taken at the start.
      for (const sequence of targets) {
        const seg = this.segmentList.find((x) => x.sequence === sequence);
        const before = seg?.header;
        // The KMS call runs outside the lock, so appends do not wait on it.
        const next = seg === undefined || before === undefined ? undefined : await this.keys.rewrap(before, this.displayPrefix + seg.name);
        if (next !== undefined && await this.withStructure(() => this.rewriteHeader(sequence, before!, next))) rewrapped++;
        done++;
        onProgress?.({ done, total: targets.length, rewrapped, file: this.displayPrefix + (seg?.name ?? sealedSegmentName(sequence)) });
      }
      return { total: targets.length, rewrapped };
    } finally {
      this.rewrapRunning = false;
    }
  }

  /** Writes segment `sequence`'s new header if it still has `before` (a truncation may have replaced it). */
  private async rewriteHeader(sequence: number, before: SegmentHeader, encryption: SegmentHeader["encryption"]): Promise<boolean> {
    if (this.failure !== undefined) throw this.failure;
    if (this.closed) throw new FailedPreconditionError("the log is closed");
    const seg = this.segmentList.find((x) => x.sequence === sequence);
    if (seg === undefined || seg.header !== before) return false;
    const header: SegmentHeader = { ...seg.header, encryption };
    const newBytes = encodeSegmentHeader(header);
    try {
      await writeRewrapIntent(this.fs, this.dir, { name: seg.name, sequence, oldHeader: encodeSegmentHeader(before), newHeader: newBytes });
      await writeHeaderInPlace(this.fs, this.path(seg.name), newBytes);
      seg.header = header;
      // The index file names the header's CRC; without this it would be rebuilt at the next open.
      if (seg.sealed) await this.writeIndexFile(seg);
      await this.fs.unlink(this.path(REWRAP_INTENT_NAME));
      await this.fs.syncDir(this.dir);
    } catch (e) {
      this.fail(e);
      throw this.failure;
    }
    return true;
  }

  /**
   * Byte offset of the record holding `index` in `seg` and its frame's fields (the segment's end
   * and no fields, for lastIndex + 1).
   */
  private async frameAt(seg: Segment, index: number): Promise<{ offset: number; info: FrameInfo | undefined }> {
    if (index > seg.lastIndex) return { offset: seg.sizeBytes, info: undefined };
    const limits = readLimitsFor(seg.header);
    let position = seg.sparse.floorOffset(index);
    const handle = await this.acquireHandle(seg);
    try {
      const head = Buffer.allocUnsafe(8);
      // Bounded by the records between the sparse index entry and `index`.
      for (;;) {
        const got = await readFully(handle, head, position);
        if (got < 8) throw this.corruption(seg, position, index, "the segment ends before the record");
        const fb = 8 + head.readUInt32LE(4);
        const frame = Buffer.allocUnsafe(Math.min(fb, seg.sizeBytes - position));
        await readFully(handle, frame, position);
        const r = inspectFrame(frame, 0, frame.length, limits);
        if (r.status !== "ok") throw this.corruption(seg, position, index, r.status === "invalid" ? r.reason : "truncated record");
        if (r.index === index) return { offset: position, info: r };
        position += fb;
      }
    } finally {
      this.releaseHandle(seg);
    }
  }

  /**
   * For a cut at `fromIndex` inside a unit of an encrypted segment: the unit's first frame offset
   * and its kept records (before `fromIndex`) sealed again as a new unit, with a new nonce. The old
   * unit is opened first (it must authenticate: damaged data is never re-sealed as good). Undefined
   * when the cut is at a unit boundary (or the segment is plaintext).
   */
  private async resealedPrefix(seg: Segment, fromIndex: number, at: { offset: number; info: FrameInfo | undefined }): Promise<UnitRewrite | undefined> {
    const unitFields = at.info?.unit;
    if (unitFields === undefined || unitFields.position === 0) return undefined;
    const unitStart = at.offset - unitFields.backBytes;
    const kept = await this.readRange(fromIndex - unitFields.position, fromIndex, READ_BYTES_MAX).catch((e: unknown) => {
      throw e instanceof CorruptionError ? e : this.corruption(seg, unitStart, fromIndex - unitFields.position, String(e));
    });
    invariant(kept.length === unitFields.position, "the kept records of a unit are read whole");
    const cipher = await this.cipherOf(seg);
    invariant(cipher !== undefined, "an encrypted segment has a cipher");
    const inputs: UnitInput[] = kept.map((e) => ({ term: e.term, index: e.index, kind: e.kind, tenant: utf8.encode(e.tenant), payload: e.payload }));
    const size = inputs.reduce((n, r, k) => n + sealedFrameBytes(r.tenant.length, r.payload.length, k, inputs.length), 0);
    const bytes = Buffer.allocUnsafe(size);
    invariant(encodeSealedUnit(bytes, 0, inputs, cipher) === size, "a re-sealed unit has its computed size");
    for (const r of inputs) r.payload.fill(0);
    return { sequence: seg.sequence, cutOffset: unitStart, bytes };
  }

  private async closeHandle(seg: Segment): Promise<void> {
    const h = seg.handle;
    seg.handle = undefined;
    if (h !== undefined) await h.close();
  }

  // ---------------------------------------------------------------- close

  /** Waits for queued appends, then closes every file. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.flush();
    this.closed = true;
    this.keys.close();
    this.units.clear();
    for (const seg of this.segmentList) {
      seg.cipher = undefined;
      await this.closeHandle(seg).catch(() => {});
    }
  }

  private path(name: string): string {
    return pathPosix.join(this.dir, name);
  }
}

// ==================================================================== loading (open + recovery)

function headerCrc(header: SegmentHeader): number {
  return crc32c(encodeSegmentHeader(header));
}

async function unlinkIfExists(fs: FileSystem, path: string): Promise<void> {
  if ((await fs.stat(path)) !== undefined) await fs.unlink(path);
}

/** How the segment being appended to is opened: with O_DSYNC in fsync mode (one syscall a group commit). */
function appendMode(syncMode: SyncMode): "readwrite-dsync" | "readwrite" {
  return syncMode === "fsync" ? "readwrite-dsync" : "readwrite";
}

/** A new current.segment holding only its header, made whole and durable before it is used. */
async function createSegment(fs: FileSystem, dir: string, header: SegmentHeader, syncMode: SyncMode, key: SegmentKey): Promise<Segment> {
  const path = pathPosix.join(dir, CURRENT_SEGMENT_NAME);
  await writeFileAtomic(fs, path, encodeSegmentHeader(header));
  const seg = new Segment(header, CURRENT_SEGMENT_NAME, false, new SparseIndex(), header.baseIndex - 1, SEGMENT_HEADER_BYTES);
  seg.cipher = key.cipher;
  seg.handle = await fs.open(path, appendMode(syncMode));
  return seg;
}

/**
 * A cut inside a unit of an encrypted segment: the file is cut at the unit's first frame
 * (`cutOffset`) and `bytes`, the kept records re-sealed as a new unit (new nonce), written there.
 */
interface UnitRewrite {
  sequence: number;
  cutOffset: number;
  bytes: Buffer;
}

/** The largest re-sealed unit prefix: a full multi-record unit less its last record, framed with the largest tenant ids. */
const UNIT_REWRITE_BYTES_MAX = UNIT_PAYLOAD_BYTES_MAX + UNIT_RECORDS_MAX * (frameBytes(TENANT_ID_BYTES_MAX, 0) + UNIT_FRAME_FIELDS_BYTES) + RECORD_SEAL_OVERHEAD_BYTES;

/**
 * truncate.intent: "VRTYTRN\0" | from (u64) | crc32c, 20 bytes; or, for a cut inside a unit,
 * "VRTYTRU\0" | from (u64) | segment sequence (u32) | cut offset (u64) | length (u32) | the
 * re-sealed prefix | crc32c of everything before it. Written durably before anything is cut, so a
 * crash at any later step is redone on open from the intent alone (no keys needed).
 */
async function writeTruncateIntent(fs: FileSystem, path: string, fromIndex: number, rewrite: UnitRewrite | undefined): Promise<void> {
  if (rewrite === undefined) {
    const buf = Buffer.alloc(20);
    INTENT_MAGIC.copy(buf, 0);
    writeU64(buf, fromIndex, 8);
    buf.writeUInt32LE(crc32c(buf.subarray(0, 16)), 16);
    await writeFileAtomic(fs, path, buf);
    return;
  }
  invariant(rewrite.bytes.length <= UNIT_REWRITE_BYTES_MAX, "a re-sealed unit prefix within its bound");
  const buf = Buffer.alloc(32 + rewrite.bytes.length + 4);
  UNIT_INTENT_MAGIC.copy(buf, 0);
  writeU64(buf, fromIndex, 8);
  buf.writeUInt32LE(rewrite.sequence, 16);
  writeU64(buf, rewrite.cutOffset, 20);
  buf.writeUInt32LE(rewrite.bytes.length, 28);
  rewrite.bytes.copy(buf, 32);
  buf.writeUInt32LE(crc32c(buf.subarray(0, buf.length - 4)), buf.length - 4);
  await writeFileAtomic(fs, path, buf);
}

function decodeTruncateIntent(buf: Uint8Array): { from: number; rewrite: UnitRewrite | undefined } | undefined {
  const b = Buffer.from(buf);
  if (b.length === 20 && b.subarray(0, 8).equals(INTENT_MAGIC) && crc32c(b.subarray(0, 16)) === b.readUInt32LE(16)) {
    return { from: readU64(b, 8), rewrite: undefined };
  }
  if (b.length < 36 || b.length > 36 + UNIT_REWRITE_BYTES_MAX || !b.subarray(0, 8).equals(UNIT_INTENT_MAGIC)) return undefined;
  if (crc32c(b.subarray(0, b.length - 4)) !== b.readUInt32LE(b.length - 4) || b.readUInt32LE(28) !== b.length - 36) return undefined;
  return { from: readU64(b, 8), rewrite: { sequence: b.readUInt32LE(16), cutOffset: readU64(b, 20), bytes: Buffer.from(b.subarray(32, b.length - 4)) } };
}

/** Cuts the file at `offset`, or (inside a unit) at the unit's start followed by the re-sealed prefix; then syncs. */
async function applyCut(handle: FileHandle, offset: number, rewrite: UnitRewrite | undefined): Promise<void> {
  if (rewrite === undefined) {
    await handle.truncate(offset);
  } else {
    await handle.truncate(rewrite.cutOffset);
    await handle.write(rewrite.bytes, 0, rewrite.bytes.length, rewrite.cutOffset);
  }
  await handle.datasync();
}

type ResolvedOptions = Required<Omit<SegmentedLogOptions, "initialIndex" | "verifyOnOpen" | "logger" | "encryption">> & { logger: LogSink };

interface FoundFile {
  name: string;
  sequence: number;
  sealed: boolean;
  header: SegmentHeader;
}

/** Open-time recovery: lists the segment files, finishes an interrupted truncation, scans, repairs a torn tail. */
class Loader {
  private readonly fs: FileSystem;
  constructor(
    private readonly options: ResolvedOptions,
    private readonly verifyAll: boolean,
    private readonly initialIndex: number,
    private readonly recovery: RecoveryReport,
    private readonly keys: SegmentKeys,
  ) {
    this.fs = options.fs;
  }

  private path(name: string): string {
    return pathPosix.join(this.options.dir, name);
  }

  private display(name: string): string {
    return this.options.displayPrefix + name;
  }

  async load(): Promise<{ segments: Segment[]; termRuns: TermRuns }> {
    const names = await this.fs.readdir(this.options.dir);
    for (const n of names) if (n.endsWith(".tmp")) await this.fs.unlink(this.path(n)); // unfinished creations
    // A header re-wrap interrupted by a crash is finished first: the header may be torn until then.
    const rewrapBytes = await readFileIfExists(this.fs, this.path(REWRAP_INTENT_NAME));
    if (rewrapBytes !== undefined) {
      const finished = await finishRewrap(this.fs, this.options.dir, rewrapBytes, this.options.displayPrefix);
      if (finished !== undefined) this.options.logger.warn({ file: finished }, "recovery: finished an interrupted segment header re-wrap");
    }
    let files = await this.readHeaders(names);
    const intentBytes = await readFileIfExists(this.fs, this.path(TRUNCATE_INTENT_NAME));
    if (intentBytes !== undefined) {
      const intent = decodeTruncateIntent(intentBytes);
      if (intent === undefined) {
        throw new CorruptionError({ file: this.display(TRUNCATE_INTENT_NAME), offset: 0 }, "the truncation intent file is damaged");
      }
      const from = intent.from;
      files = await this.finishTruncation(files, from, intent.rewrite);
      await this.fs.unlink(this.path(TRUNCATE_INTENT_NAME));
      await this.fs.syncDir(this.options.dir);
      this.recovery.truncationCompletedFrom = from;
    }
    return this.loadSegments(files);
  }

  /** Reads every segment's header; checks names, sequence numbers and cluster ids. */
  private async readHeaders(names: string[]): Promise<FoundFile[]> {
    const found: FoundFile[] = [];
    for (const name of names) {
      const sealedSeq = parseSealedSegmentName(name);
      if (sealedSeq === undefined && name !== CURRENT_SEGMENT_NAME) continue;
      const handle = await this.fs.open(this.path(name), "read");
      const buf = Buffer.alloc(SEGMENT_HEADER_BYTES);
      let got: number;
      try {
        got = await readFully(handle, buf, 0);
      } finally {
        await handle.close();
      }
      const decoded = decodeSegmentHeader(buf.subarray(0, got));
      if (!decoded.ok) throw new CorruptionError({ file: this.display(name), offset: 0 }, `segment header: ${decoded.reason}`);
      const header = decoded.header;
      if (!Buffer.from(header.clusterId).equals(Buffer.from(this.options.clusterId))) {
        throw new FailedPreconditionError(
          `${this.display(name)} belongs to cluster ${uuidFromBytes(header.clusterId)}, but this node is in cluster ` +
            `${uuidFromBytes(this.options.clusterId)}: the data directory holds another cluster's log. Point --data-dir at this node's own directory.`,
        );
      }
      if (header.encryption.algorithm !== EncryptionAlgorithm.NONE && !this.keys.enabled) throw encryptedWithoutProvider(this.display(name));
      if (sealedSeq !== undefined && header.sequence !== sealedSeq) {
        throw new CorruptionError({ file: this.display(name), offset: 12 }, `header says segment ${header.sequence} but the file is named for segment ${sealedSeq}`);
      }
      found.push({ name, sequence: header.sequence, sealed: sealedSeq !== undefined, header });
    }
    found.sort((a, b) => a.sequence - b.sequence);
    for (let i = 1; i < found.length; i++) {
      const prev = found[i - 1]!;
      const cur = found[i]!;
      if (cur.sequence !== prev.sequence + 1) {
        throw new CorruptionError(
          { file: this.display(cur.name), offset: 0, index: cur.header.baseIndex },
          `segment ${prev.sequence + 1} is missing (found ${prev.name} then ${cur.name}); a segment file was deleted or lost`,
        );
      }
    }
    const current = found.findIndex((f) => !f.sealed);
    if (current !== -1 && current !== found.length - 1) {
      throw new CorruptionError({ file: this.display(CURRENT_SEGMENT_NAME), offset: 0 }, "current.segment is older than a sealed segment");
    }
    return found;
  }

  /** Completes a suffix truncation from `from` that a crash interrupted. */
  private async finishTruncation(files: FoundFile[], from: number, rewrite: UnitRewrite | undefined): Promise<FoundFile[]> {
    // The target is the last segment whose base index is at or before `from`.
    let targetPos = -1;
    for (let i = 0; i < files.length; i++) if (files[i]!.header.baseIndex <= from) targetPos = i;
    if (targetPos === -1) return files; // nothing at or after `from` is left
    for (const f of files.slice(targetPos + 1).reverse()) {
      await this.fs.unlink(this.path(f.name));
      if (f.sealed) await unlinkIfExists(this.fs, this.path(sparseIndexName(f.sequence)));
    }
    const target = files[targetPos]!;
    if (rewrite !== undefined && rewrite.sequence !== target.sequence) {
      throw new CorruptionError({ file: this.display(TRUNCATE_INTENT_NAME), offset: 16 },
        `the truncation intent rewrites a unit of segment ${rewrite.sequence}, but index ${from} is in segment ${target.sequence}`);
    }
    const handle = await this.fs.open(this.path(target.name), "readwrite");
    try {
      let cutAt: number | undefined;
      const scan = await scanSegment(handle, {
        displayName: this.display(target.name),
        mayHaveTornTail: !target.sealed,
        previousTerm: 0,
        onRecord: (info, offset) => {
          if (info.index === from) cutAt = offset;
        },
      });
      // A torn or damaged record past the cut goes with the cut; damage before it is corruption. With a
      // unit rewrite, the unit at the cut may be whole, cut, or already replaced (in part): all go.
      if (scan.damage !== undefined && (rewrite === undefined ? scan.damage.index < from : scan.damage.offset < rewrite.cutOffset)) {
        throw this.damageError(target.name, scan);
      }
      if (rewrite !== undefined && rewrite.cutOffset > scan.validEnd) {
        throw new CorruptionError({ file: this.display(target.name), offset: scan.validEnd },
          `the truncation intent rewrites a unit at byte offset ${rewrite.cutOffset}, past the segment's valid end`);
      }
      await applyCut(handle, cutAt ?? Math.min(scan.validEnd, scan.fileBytes), rewrite);
    } finally {
      await handle.close();
    }
    if (target.sealed) {
      await unlinkIfExists(this.fs, this.path(sparseIndexName(target.sequence)));
      await this.fs.rename(this.path(target.name), this.path(CURRENT_SEGMENT_NAME));
    }
    await this.fs.syncDir(this.options.dir);
    return [...files.slice(0, targetPos), { ...target, name: CURRENT_SEGMENT_NAME, sealed: false }];
  }

  private damageError(name: string, scan: ScanResult): CorruptionError {
    const d = scan.damage!;
    return new CorruptionError({ file: this.display(name), offset: d.offset, index: d.index }, d.reason);
  }

  private async loadSegments(files: FoundFile[]): Promise<{ segments: Segment[]; termRuns: TermRuns }> {
    const segments: Segment[] = [];
    const termRuns = new TermRuns();
    let expectBase: number | undefined;
    let previousTerm = 0;
    for (const f of files) {
      if (expectBase !== undefined && f.header.baseIndex !== expectBase) {
        throw new CorruptionError(
          { file: this.display(f.name), offset: 32, index: f.header.baseIndex },
          `segment starts at index ${f.header.baseIndex} but the previous segment ends at index ${expectBase - 1}`,
        );
      }
      const seg = f.sealed ? await this.loadSealed(f, previousTerm, termRuns) : await this.loadCurrent(f, previousTerm, termRuns);
      segments.push(seg);
      expectBase = seg.lastIndex + 1;
      previousTerm = termRuns.termAt(seg.lastIndex) ?? previousTerm;
    }
    const last = segments[segments.length - 1];
    if (last === undefined || last.sealed) {
      // First start, or a crash between sealing and creating the next current.segment.
      const base = last === undefined ? this.initialIndex : last.lastIndex + 1;
      const sequence = last === undefined ? 0 : last.sequence + 1;
      const key = await this.keys.forNewSegment(sequence);
      segments.push(
        await createSegment(this.fs, this.options.dir, {
          sequence,
          clusterId: this.options.clusterId,
          baseIndex: base as LogIndex,
          encryption: key.encryption,
        }, this.options.syncMode, key),
      );
    }
    return { segments, termRuns };
  }

  private async loadSealed(f: FoundFile, previousTerm: number, termRuns: TermRuns): Promise<Segment> {
    const handle = await this.fs.open(this.path(f.name), "read");
    try {
      const size = await handle.size();
      if (!this.verifyAll) {
        const trusted = await this.trustedIndex(f, size);
        if (trusted !== undefined) {
          for (const run of trusted.termRuns) termRuns.note(run.firstIndex, run.term);
          const sparse = new SparseIndex();
          for (const [i, o] of trusted.entries) sparse.note(i, o);
          return new Segment(f.header, f.name, true, sparse, trusted.lastIndex, size);
        }
      }
      const scan = await scanSegment(handle, { displayName: this.display(f.name), mayHaveTornTail: false, previousTerm });
      if (scan.damage !== undefined) throw this.damageError(f.name, scan);
      for (const run of scan.termRuns) termRuns.note(run.firstIndex, run.term);
      const seg = new Segment(f.header, f.name, true, scan.sparse, scan.lastIndex, size);
      await this.ensureIndexFile(seg, scan.termRuns);
      return seg;
    } finally {
      await handle.close();
    }
  }

  /** The index file's content if it matches the segment exactly, else undefined (it will be rebuilt). */
  private async trustedIndex(f: FoundFile, size: number): Promise<ReturnType<typeof decodeIndexFile>> {
    const bytes = await readFileIfExists(this.fs, this.path(sparseIndexName(f.sequence)));
    const content = bytes === undefined ? undefined : decodeIndexFile(bytes);
    if (content === undefined) return undefined;
    if (content.segmentBytes !== size || content.baseIndex !== f.header.baseIndex || content.headerCrc !== headerCrc(f.header)) {
      return undefined;
    }
    return content;
  }

  private async ensureIndexFile(seg: Segment, runs: TermRun[]): Promise<void> {
    const existing = await this.trustedIndex({ name: seg.name, sequence: seg.sequence, sealed: true, header: seg.header }, seg.sizeBytes);
    if (existing !== undefined && existing.lastIndex === seg.lastIndex) return;
    const content = encodeIndexFile({
      baseIndex: seg.baseIndex, lastIndex: seg.lastIndex, segmentBytes: seg.sizeBytes, headerCrc: headerCrc(seg.header),
      entries: seg.sparse.entries(), termRuns: runs,
    });
    await writeFileAtomic(this.fs, this.path(sparseIndexName(seg.sequence)), content);
    this.recovery.indexesRebuilt++;
  }

  private async loadCurrent(f: FoundFile, previousTerm: number, termRuns: TermRuns): Promise<Segment> {
    const handle = await this.fs.open(this.path(f.name), appendMode(this.options.syncMode));
    try {
      const scan = await scanSegment(handle, {
        displayName: this.display(f.name),
        mayHaveTornTail: true,
        previousTerm,
      });
      let size = scan.fileBytes;
      if (scan.damage !== undefined) {
        if (scan.damage.kind === "corruption" && this.options.syncMode === "fsync") throw this.damageError(f.name, scan);
        // A torn tail (or, in async mode, anything after the first bad record: unsynced writes
        // may reach the disk in any order there) was never acknowledged durable. Cut it.
        this.recovery.tornBytesCut = scan.fileBytes - scan.validEnd;
        this.recovery.tornAt = {
          file: this.display(f.name), offset: scan.damage.offset, index: scan.damage.index, reason: scan.damage.reason,
        };
        await handle.truncate(scan.validEnd);
        await handle.datasync();
        size = scan.validEnd;
      }
      for (const run of scan.termRuns) termRuns.note(run.firstIndex, run.term);
      const seg = new Segment(f.header, f.name, false, scan.sparse, scan.lastIndex, size);
      seg.handle = handle;
      return seg;
    } catch (e) {
      await handle.close();
      throw e;
    }
  }
}
