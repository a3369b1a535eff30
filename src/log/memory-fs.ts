/**
 * An in-memory `FileSystem` with the failure behaviour of a real disk behind a page cache, for
 * tests and the deterministic simulator (TESTING.md section 2):
 *
 * - File data written but not yet `datasync`ed/`sync`ed lives only in the "page cache". A simulated
 *   `crash()` keeps a random subset of those pending writes (the kernel may have written back later
 *   pages before earlier ones), and may tear one of them (only a prefix reaches the disk).
 * - Directory changes (create, rename, unlink) are durable only after `syncDir` of their directory;
 *   a crash keeps a random prefix of the pending ones, in order (a journaling file system commits
 *   metadata in order).
 * - Faults can be injected: the next call of an operation fails with a chosen code (EIO, ENOSPC).
 *
 * Everything is synchronous underneath and deterministic given the `random` function passed to
 * `crash`, so a simulator seed reproduces the same crash.
 */

import { posix as pathPosix } from "node:path";
import { IoError } from "../errors.js";
import type { FileHandle, FileStat, FileSystem, OpenMode } from "./fs-port.js";

type PendingDataOp = { kind: "write"; position: number; bytes: Uint8Array } | { kind: "truncate"; length: number };

class Inode {
  /** What a reader sees now (the page cache). */
  current: Uint8Array = new Uint8Array(0);
  /** What survives a crash. */
  durable: Uint8Array = new Uint8Array(0);
  /** Data operations since the last sync, oldest first. */
  pending: PendingDataOp[] = [];
  mode = 0o644;

  write(position: number, bytes: Uint8Array): void {
    this.current = applyWrite(this.current, position, bytes);
    this.pending.push({ kind: "write", position, bytes: bytes.slice() });
  }

  truncate(length: number): void {
    this.current = applyTruncate(this.current, length);
    this.pending.push({ kind: "truncate", length });
  }

  sync(): void {
    this.durable = this.current.slice();
    this.pending = [];
  }
}

function applyWrite(data: Uint8Array, position: number, bytes: Uint8Array): Uint8Array {
  const end = position + bytes.length;
  let out = data;
  if (end > data.length) {
    out = new Uint8Array(end);
    out.set(data);
  }
  out.set(bytes, position);
  return out;
}

function applyTruncate(data: Uint8Array, length: number): Uint8Array {
  if (length <= data.length) return data.slice(0, length);
  const out = new Uint8Array(length);
  out.set(data);
  return out;
}

/** A rename is one atomic operation, as rename(2) is: a crash never leaves the file under neither name. */
type PendingDirOp =
  | { kind: "link"; path: string; inode: Inode }
  | { kind: "unlink"; path: string }
  | { kind: "rename"; path: string; from: string; inode: Inode };

/** An operation whose next call can be made to fail. */
export type FaultableOperation = "write" | "datasync" | "sync" | "read" | "open" | "rename" | "syncDir" | "truncate";

/** What a simulated crash did, for the simulator's statistics and traces. */
export interface CrashReport {
  /** Pending data writes that were lost. */
  lostWrites: number;
  /** Pending data writes that reached the disk (possibly out of order). */
  keptWrites: number;
  /** 1 if one kept write was torn (only a prefix of it reached the disk). */
  tornWrites: number;
  /** Pending directory operations that were lost. */
  lostDirOps: number;
}

export interface CrashOptions {
  /** Uniform [0, 1) random numbers; the simulator passes its seeded PRNG. */
  random: () => number;
  /** Probability that each pending write survives (default 0.5). */
  keepProbability?: number;
  /** Probability that one surviving write is torn (default 0.5). */
  tearProbability?: number;
}

export class MemoryFileSystem implements FileSystem {
  /** The namespace as processes see it now. */
  private files = new Map<string, Inode>();
  /** The namespace as it is on disk. */
  private durableFiles = new Map<string, Inode>();
  private pendingDirOps: PendingDirOp[] = [];
  private dirs = new Set<string>(["/"]);
  private faults = new Map<FaultableOperation, { code: string; pathIncludes: string }>();
  private handles = new Set<MemoryFileHandle>();
  /** Counts every operation, for tests that assert on syncs. */
  readonly counters = { writes: 0, datasyncs: 0, syncs: 0, dirSyncs: 0 };

  /**
   * The next call of `operation` (on a path containing `pathIncludes`, if given) fails with the
   * given operating-system code (e.g. "EIO").
   */
  failNext(operation: FaultableOperation, code: string, pathIncludes = ""): void {
    this.faults.set(operation, { code, pathIncludes });
  }

  /** @internal */
  checkFault(operation: FaultableOperation, path: string): void {
    const fault = this.faults.get(operation);
    if (fault === undefined || !path.includes(fault.pathIncludes)) return;
    const code = fault.code;
    this.faults.delete(operation);
    const err = Object.assign(new Error(`${code}: simulated fault`), { code });
    throw new IoError(path, operation, err);
  }

  /**
   * Simulates power loss: unsynced data and directory changes are lost (or partly kept, torn),
   * and every open handle becomes invalid. The file system stays usable, like a rebooted disk.
   */
  crash(options: CrashOptions): CrashReport {
    const random = options.random;
    const keepProbability = options.keepProbability ?? 0.5;
    const tearProbability = options.tearProbability ?? 0.5;
    const report: CrashReport = { lostWrites: 0, keptWrites: 0, tornWrites: 0, lostDirOps: 0 };
    const inodes = new Set<Inode>([...this.files.values(), ...this.durableFiles.values()]);
    for (const inode of inodes) {
      crashInode(inode, random, keepProbability, tearProbability, report);
    }
    // Directory operations: a prefix survives, in order.
    const keep = Math.floor(random() * (this.pendingDirOps.length + 1));
    for (const op of this.pendingDirOps.slice(0, keep)) applyDirOp(this.durableFiles, op);
    report.lostDirOps = this.pendingDirOps.length - keep;
    this.pendingDirOps = [];
    this.files = new Map(this.durableFiles);
    for (const handle of this.handles) handle.invalidate();
    this.handles.clear();
    return report;
  }

  /** The bytes a reader sees now (tests use it to flip bits or inspect files). */
  peek(path: string): Uint8Array | undefined {
    return this.files.get(normalize(path))?.current;
  }

  /** Replaces a file's bytes durably (tests use it to inject corruption on a "stopped" node). */
  poke(path: string, bytes: Uint8Array): void {
    const inode = this.files.get(normalize(path));
    if (inode === undefined) throw new Error(`no such file: ${path}`);
    inode.current = bytes.slice();
    inode.durable = bytes.slice();
    inode.pending = [];
  }

  async open(path: string, mode: OpenMode): Promise<FileHandle> {
    const p = normalize(path);
    this.checkFault("open", p);
    let inode = this.files.get(p);
    if (mode === "create-exclusive") {
      if (inode !== undefined) throw ioError(p, "create", "EEXIST");
      this.requireDir(pathPosix.dirname(p), p);
      inode = new Inode();
      this.link(p, inode);
    } else if (inode === undefined) {
      throw ioError(p, "open", this.dirs.has(p) ? "EISDIR" : "ENOENT");
    }
    const handle = new MemoryFileHandle(this, p, inode, mode !== "read", mode === "readwrite-dsync");
    this.handles.add(handle);
    return handle;
  }

  async readFile(path: string): Promise<Uint8Array> {
    const p = normalize(path);
    this.checkFault("read", p);
    const inode = this.files.get(p);
    if (inode === undefined) throw ioError(p, "read", "ENOENT");
    return inode.current.slice();
  }

  async readdir(path: string): Promise<string[]> {
    const p = normalize(path);
    if (!this.dirs.has(p)) throw ioError(p, "list directory", "ENOENT");
    const names = new Set<string>();
    const prefix = p === "/" ? "/" : p + "/";
    for (const key of [...this.files.keys(), ...this.dirs]) {
      if (key.startsWith(prefix) && key !== p) {
        const rest = key.slice(prefix.length);
        if (rest.length > 0 && !rest.includes("/")) names.add(rest);
      }
    }
    return [...names].sort();
  }

  async mkdir(path: string): Promise<void> {
    const p = normalize(path);
    if (this.files.has(p)) throw ioError(p, "create directory", "EEXIST");
    const parts = p.split("/").filter((s) => s.length > 0);
    let cur = "";
    for (const part of parts) {
      cur += "/" + part;
      if (this.files.has(cur)) throw ioError(p, "create directory", "ENOTDIR");
      this.dirs.add(cur);
    }
  }

  async rename(from: string, to: string): Promise<void> {
    const f = normalize(from);
    const t = normalize(to);
    this.checkFault("rename", f);
    const inode = this.files.get(f);
    if (inode === undefined) throw ioError(f, "rename", "ENOENT");
    this.requireDir(pathPosix.dirname(t), t);
    this.files.delete(f);
    this.files.set(t, inode);
    this.pendingDirOps.push({ kind: "rename", path: t, from: f, inode });
  }

  async unlink(path: string): Promise<void> {
    const p = normalize(path);
    if (!this.files.has(p)) throw ioError(p, "remove", "ENOENT");
    this.files.delete(p);
    this.pendingDirOps.push({ kind: "unlink", path: p });
  }

  async syncDir(path: string): Promise<void> {
    const dir = normalize(path);
    this.checkFault("syncDir", dir);
    this.counters.dirSyncs++;
    const rest: PendingDirOp[] = [];
    for (const op of this.pendingDirOps) {
      const touches = pathPosix.dirname(op.path) === dir || (op.kind === "rename" && pathPosix.dirname(op.from) === dir);
      if (touches) applyDirOp(this.durableFiles, op);
      else rest.push(op);
    }
    this.pendingDirOps = rest;
  }

  async stat(path: string): Promise<FileStat | undefined> {
    const p = normalize(path);
    if (this.dirs.has(p)) return { size: 0, isDirectory: true, mode: 0o755 };
    const inode = this.files.get(p);
    return inode === undefined ? undefined : { size: inode.current.length, isDirectory: false, mode: inode.mode };
  }

  async checkWritableDir(path: string): Promise<void> {
    const p = normalize(path);
    if (!this.dirs.has(p)) throw ioError(p, "write to directory", this.files.has(p) ? "ENOTDIR" : "ENOENT");
  }

  private link(path: string, inode: Inode): void {
    this.files.set(path, inode);
    this.pendingDirOps.push({ kind: "link", path, inode });
  }

  private requireDir(dir: string, forPath: string): void {
    if (!this.dirs.has(dir)) throw ioError(forPath, "create", "ENOENT");
  }
}

function crashInode(
  inode: Inode,
  random: () => number,
  keepProbability: number,
  tearProbability: number,
  report: CrashReport,
): void {
  const kept: PendingDataOp[] = [];
  for (const op of inode.pending) {
    if (random() < keepProbability) kept.push(op);
    else if (op.kind === "write") report.lostWrites++;
  }
  const writeIndexes = kept.flatMap((op, i) => (op.kind === "write" ? [i] : []));
  const tornAt = writeIndexes.length > 0 && random() < tearProbability
    ? writeIndexes[Math.floor(random() * writeIndexes.length)]
    : undefined;
  let data = inode.durable;
  kept.forEach((op, i) => {
    if (op.kind === "truncate") {
      data = applyTruncate(data, op.length);
      return;
    }
    report.keptWrites++;
    if (i === tornAt) {
      report.tornWrites++;
      data = applyWrite(data, op.position, op.bytes.subarray(0, Math.floor(random() * op.bytes.length)));
    } else {
      data = applyWrite(data, op.position, op.bytes);
    }
  });
  inode.durable = data;
  inode.current = data.slice();
  inode.pending = [];
}

function applyDirOp(namespace: Map<string, Inode>, op: PendingDirOp): void {
  switch (op.kind) {
    case "link":
      namespace.set(op.path, op.inode);
      return;
    case "unlink":
      namespace.delete(op.path);
      return;
    case "rename":
      namespace.delete(op.from);
      namespace.set(op.path, op.inode);
      return;
  }
}

function normalize(path: string): string {
  const p = pathPosix.normalize(path.startsWith("/") ? path : "/" + path);
  return p.length > 1 && p.endsWith("/") ? p.slice(0, -1) : p;
}

function ioError(path: string, operation: string, code: string): IoError {
  return new IoError(path, operation, Object.assign(new Error(code), { code }));
}

class MemoryFileHandle implements FileHandle {
  private valid = true;
  constructor(
    private readonly fs: MemoryFileSystem,
    readonly path: string,
    private readonly inode: Inode,
    private readonly writable: boolean,
    /** O_DSYNC: each write is durable when it returns. */
    private readonly dsync: boolean,
  ) {}

  invalidate(): void {
    this.valid = false;
  }

  private check(operation: FaultableOperation | "size" | "close"): void {
    if (!this.valid) throw ioError(this.path, operation, "EBADF");
    if (operation !== "size" && operation !== "close") this.fs.checkFault(operation, this.path);
  }

  async read(buffer: Uint8Array, offset: number, length: number, position: number): Promise<number> {
    this.check("read");
    const data = this.inode.current;
    if (position >= data.length) return 0;
    const n = Math.min(length, data.length - position);
    buffer.set(data.subarray(position, position + n), offset);
    return n;
  }

  async write(buffer: Uint8Array, offset: number, length: number, position: number): Promise<void> {
    this.check("write");
    if (!this.writable) throw ioError(this.path, "write", "EBADF");
    this.fs.counters.writes++;
    this.inode.write(position, buffer.subarray(offset, offset + length));
    if (this.dsync) {
      // The data reached the page cache; a "datasync" fault fails the durable half, as EIO from an
      // O_DSYNC write does, leaving the bytes cached but not on disk.
      this.fs.checkFault("datasync", this.path);
      this.fs.counters.datasyncs++;
      this.inode.sync();
    }
  }

  async datasync(): Promise<void> {
    this.check("datasync");
    this.fs.counters.datasyncs++;
    this.inode.sync();
  }

  async sync(): Promise<void> {
    this.check("sync");
    this.fs.counters.syncs++;
    this.inode.sync();
  }

  async truncate(length: number): Promise<void> {
    this.check("truncate");
    if (!this.writable) throw ioError(this.path, "truncate", "EBADF");
    this.inode.truncate(length);
  }

  async size(): Promise<number> {
    this.check("size");
    return this.inode.current.length;
  }

  async close(): Promise<void> {
    this.valid = false;
  }
}
