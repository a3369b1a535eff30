/**
 * The data directory (DESIGN.md section 2):
 *
 *   <data_dir>/log/          the replicated log (SegmentedLog)
 *   <data_dir>/projections/  per-tenant SQLite projections
 *   <data_dir>/meta/state.json  node id, cluster id, term, vote
 *   <data_dir>/wal/          projection write-ahead state and checkpoints
 *   <data_dir>/LOCK          the PID of the process that has it open
 *
 * Opening checks, in order, each with a message that says what to do: the path is a writable
 * directory; no other live process has it; meta/state.json is intact; its cluster id (if the caller
 * expects one) and node id match; then the log opens and recovers.
 */

import { randomUUID } from "node:crypto";
import { posix as pathPosix } from "node:path";
import type { AtRestEncryption } from "../crypto/at-rest.js";
import type { KeyProvider } from "../crypto/kms.js";
import { FailedPreconditionError, QuotaExceededError } from "../errors.js";
import { DirLock } from "./dir-lock.js";
import type { FileSystem } from "./fs-port.js";
import { readMetaState, uuidBytes, writeMetaState, type MetaState } from "./meta-state.js";
import { NodeFileSystem } from "./node-fs.js";
import { SegmentedLog, type LogSink, type SyncMode } from "./segmented-log.js";

export interface DataDirOptions {
  path: string;
  /** Defaults to the real disk. */
  fs?: FileSystem;
  /** This node's id; a data dir created for another node id is refused. Defaults to the stored one, or 1. */
  nodeId?: number;
  /** The cluster this node must belong to; a data dir of another cluster is refused. */
  clusterId?: string;
  /** Take the LOCK file (real disk only). Default true. */
  lock?: boolean;
  segmentBytes?: number;
  recordBytesMax?: number;
  syncMode?: SyncMode;
  verifyOnOpen?: boolean;
  logger?: LogSink;
  /**
   * At-rest encryption (`[encryption] enabled = true`): the provider from openKeyProvider, already
   * checked. DataDir.open binds it to meta/state.json's cluster id (`dir.encryption`). The caller
   * keeps ownership: DataDir.close does not close it. Undefined: nothing new is encrypted (existing
   * encrypted segments then cannot be read, and opening says so).
   */
  keyProvider?: KeyProvider;
}

export const DATA_DIR_SUBDIRS = ["log", "projections", "meta", "wal"] as const;

/** One file a re-wrap hook looked at: whether its wrapped key changed (false: it was already current). */
export interface RewrapStep {
  /** The file, relative to the data directory (e.g. "projections/tenant_acme/projections.key"). */
  readonly file: string;
  readonly rewrapped: boolean;
}

/**
 * A re-wrap pass over files other than log segments, run by `verity-admin encryption rotate` after
 * the log's headers: for each wrapped data key it owns (e.g. a projection key sidecar), call
 * `encryption.provider.rewrap(wrapped, contextFor(encryption, identity), { keyId, location })`,
 * write the result crash-safely (temporary file, fsync, rename, fsync the directory) when it
 * differs, and yield one step per file. A thrown error fails the rotation (reported by
 * `encryption status`); the files already done stay done, and a later rotate starts over safely.
 */
export type RewrapHook = (encryption: AtRestEncryption) => AsyncIterable<RewrapStep>;

/** Re-wrap hooks a data directory accepts at most. */
export const REWRAP_HOOKS_MAX = 8;

export class DataDir {
  private constructor(
    readonly path: string,
    private readonly fs: FileSystem,
    private metaState: MetaState,
    readonly log: SegmentedLog,
    private readonly lock: DirLock | undefined,
    /**
     * The key provider bound to this directory's cluster id, or undefined when encryption is off.
     * Everything that writes files under the data directory (log, event index, projections, query
     * workers) takes its keys from here, with contextFor(dir.encryption, fileIdentity).
     */
    readonly encryption: AtRestEncryption | undefined,
  ) {}

  private readonly hooks = new Map<string, RewrapHook>();

  /**
   * Registers a re-wrap pass (see RewrapHook) under `name` (e.g. "projections"), run by every
   * later rotation after the log; replaces an earlier one of that name. Returns the unregister
   * function. At most REWRAP_HOOKS_MAX.
   */
  registerRewrap(name: string, hook: RewrapHook): () => void {
    if (!this.hooks.has(name) && this.hooks.size >= REWRAP_HOOKS_MAX) {
      throw new QuotaExceededError("rewrap hooks", REWRAP_HOOKS_MAX, `a data directory takes at most ${REWRAP_HOOKS_MAX} re-wrap hooks`);
    }
    this.hooks.set(name, hook);
    return () => {
      if (this.hooks.get(name) === hook) this.hooks.delete(name);
    };
  }

  /** The registered re-wrap passes, in registration order. */
  rewrapHooks(): ReadonlyArray<{ readonly name: string; readonly hook: RewrapHook }> {
    return [...this.hooks].map(([name, hook]) => ({ name, hook }));
  }

  get meta(): Readonly<MetaState> {
    return this.metaState;
  }

  get metaPath(): string {
    return pathPosix.join(this.path, "meta", "state.json");
  }

  static async open(options: DataDirOptions): Promise<DataDir> {
    const fs = options.fs ?? new NodeFileSystem();
    const root = options.path;
    const existing = await fs.stat(root);
    if (existing !== undefined && !existing.isDirectory) {
      throw new FailedPreconditionError(`the data directory ${root} is a file, not a directory; choose another --data-dir`);
    }
    await fs.mkdir(root);
    await fs.checkWritableDir(root);
    const lock = options.lock === false || !(fs instanceof NodeFileSystem) ? undefined : DirLock.acquire(root);
    try {
      for (const sub of DATA_DIR_SUBDIRS) await fs.mkdir(pathPosix.join(root, sub));
      const metaPath = pathPosix.join(root, "meta", "state.json");
      let meta = await readMetaState(fs, metaPath, "meta/state.json");
      if (meta === undefined) {
        meta = { nodeId: options.nodeId ?? 1, clusterId: options.clusterId ?? randomUUID(), term: 0, vote: 0 };
        await writeMetaState(fs, metaPath, meta);
      }
      if (options.clusterId !== undefined && meta.clusterId !== options.clusterId) {
        throw new FailedPreconditionError(
          `the data directory ${root} belongs to cluster ${meta.clusterId}, not to cluster ${options.clusterId}: ` +
            "refusing to open it. Point --data-dir at this node's own directory, or use an empty one to join fresh.",
        );
      }
      if (options.nodeId !== undefined && meta.nodeId !== options.nodeId) {
        throw new FailedPreconditionError(
          `the data directory ${root} belongs to node ${meta.nodeId}, not to node ${options.nodeId}: ` +
            "start this node with --node-id " + meta.nodeId + ", or give node " + options.nodeId + " its own --data-dir",
        );
      }
      const encryption: AtRestEncryption | undefined =
        options.keyProvider === undefined ? undefined : { provider: options.keyProvider, clusterId: meta.clusterId };
      const log = await SegmentedLog.open({
        dir: pathPosix.join(root, "log"),
        fs,
        clusterId: uuidBytes(meta.clusterId),
        segmentBytes: options.segmentBytes,
        recordBytesMax: options.recordBytesMax,
        syncMode: options.syncMode,
        verifyOnOpen: options.verifyOnOpen,
        displayPrefix: "log/",
        logger: options.logger,
        encryption,
      });
      return new DataDir(root, fs, meta, log, lock, encryption);
    } catch (e) {
      lock?.release();
      throw e;
    }
  }

  /** Durably records a new term and vote (Raft's hard state); the term never goes backwards. */
  async saveTermAndVote(term: number, vote: number): Promise<void> {
    if (term < this.metaState.term) {
      throw new FailedPreconditionError(`refusing to move the term backwards from ${this.metaState.term} to ${term}`);
    }
    const next = { ...this.metaState, term, vote };
    await writeMetaState(this.fs, this.metaPath, next);
    this.metaState = next;
  }

  /** Durably records the newest committed cluster configuration (never an older one). */
  async saveCommittedMembership(index: number, voters: readonly number[], learners: readonly number[]): Promise<void> {
    // Index 0 is the bootstrap configuration, saved once when a new cluster forms.
    if (this.metaState.membership !== undefined && index <= this.metaState.membership.index) return;
    const next = { ...this.metaState, membership: { index, voters: [...voters], learners: [...learners] } };
    await writeMetaState(this.fs, this.metaPath, next);
    this.metaState = next;
  }

  /** Records that this node rejoins with an empty log and must not vote before it holds `index`. */
  async saveRecoverUntil(index: number): Promise<void> {
    const next = { ...this.metaState, recoverUntil: index };
    await writeMetaState(this.fs, this.metaPath, next);
    this.metaState = next;
  }

  async close(): Promise<void> {
    try {
      await this.log.close();
    } finally {
      this.lock?.release();
    }
  }
}
