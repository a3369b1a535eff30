/**
 * A file system whose durability operations complete at virtual times the simulator chooses
 * (TESTING.md section 2). It wraps one node's MemoryFileSystem (that node's disk):
 *
 * - Page-cache operations (write, truncate, rename, unlink, reads, stat, open) take effect at
 *   once, as in a real kernel, and resolve in a microtask.
 * - Durability operations (datasync, sync, syncDir, and the sync half of an O_DSYNC write)
 *   complete when the simulator delivers their completion event. A crash before that loses what
 *   was not synced: MemoryFileSystem.crash() keeps a random subset of the pending writes and
 *   may tear one.
 * - After the node's process dies (`kill`), nothing issued by it ever completes: its promises stay
 *   pending forever and the dead process's code never runs again.
 *
 * Every call counts as activity, which tells the simulator's drain loop that the node did work
 * this round (simulator.ts explains the drain).
 */

import type { FileHandle, FileStat, FileSystem, OpenMode } from "../log/fs-port.js";
import type { MemoryFileSystem } from "../log/memory-fs.js";

/** What the wrapper needs from the simulator. */
export interface DiskClock {
  /** Runs `complete` when a durability operation of `node` finishes, at a virtual time of the simulator's choosing. */
  scheduleDurability(node: number, complete: () => void): void;
  /** Counts one operation: the drain loop runs until a round passes without any. */
  noteActivity(): void;
}

const never = <T>(): Promise<T> => new Promise<T>(() => {});

export class SimFileSystem implements FileSystem {
  /** False once the process that used this wrapper crashed. */
  private alive = true;
  /** False while the node recovers on start: every operation completes at once. */
  timed = false;

  constructor(
    private readonly inner: MemoryFileSystem,
    private readonly clock: DiskClock,
    private readonly node: number,
  ) {}

  /** The process died: nothing it issued completes, and nothing it issues later does either. */
  kill(): void {
    this.alive = false;
  }

  get isAlive(): boolean {
    return this.alive;
  }

  /** A page-cache operation: effect now. */
  run<T>(operation: () => Promise<T>): Promise<T> {
    this.clock.noteActivity();
    if (!this.alive) return never();
    return operation();
  }

  /** A durability operation: effect when the simulator says the disk finished it. */
  durable(operation: () => Promise<void>): Promise<void> {
    this.clock.noteActivity();
    if (!this.alive) return never();
    if (!this.timed) return operation();
    return new Promise<void>((resolve, reject) => {
      this.clock.scheduleDurability(this.node, () => {
        if (!this.alive) return;
        this.clock.noteActivity();
        operation().then(resolve, reject);
      });
    });
  }

  async open(path: string, mode: OpenMode): Promise<FileHandle> {
    // O_DSYNC is simulated here: the write lands in the page cache, then a timed datasync follows.
    const dsync = (mode as string) === "readwrite-dsync";
    const innerMode: OpenMode = dsync ? "readwrite" : mode;
    const handle = await this.run(() => this.inner.open(path, innerMode));
    return new SimFileHandle(this, handle, dsync);
  }
  readFile(path: string): Promise<Uint8Array> {
    return this.run(() => this.inner.readFile(path));
  }
  readdir(path: string): Promise<string[]> {
    return this.run(() => this.inner.readdir(path));
  }
  mkdir(path: string): Promise<void> {
    return this.run(() => this.inner.mkdir(path));
  }
  rename(from: string, to: string): Promise<void> {
    return this.run(() => this.inner.rename(from, to));
  }
  unlink(path: string): Promise<void> {
    return this.run(() => this.inner.unlink(path));
  }
  syncDir(path: string): Promise<void> {
    return this.durable(() => this.inner.syncDir(path));
  }
  stat(path: string): Promise<FileStat | undefined> {
    return this.run(() => this.inner.stat(path));
  }
  checkWritableDir(path: string): Promise<void> {
    return this.run(() => this.inner.checkWritableDir(path));
  }
}

class SimFileHandle implements FileHandle {
  constructor(
    private readonly fs: SimFileSystem,
    private readonly inner: FileHandle,
    private readonly dsync: boolean,
  ) {}
  get path(): string {
    return this.inner.path;
  }
  read(buffer: Uint8Array, offset: number, length: number, position: number): Promise<number> {
    return this.fs.run(() => this.inner.read(buffer, offset, length, position));
  }
  async write(buffer: Uint8Array, offset: number, length: number, position: number): Promise<void> {
    await this.fs.run(() => this.inner.write(buffer, offset, length, position));
    if (this.dsync) await this.fs.durable(() => this.inner.datasync());
  }
  datasync(): Promise<void> {
    return this.fs.durable(() => this.inner.datasync());
  }
  sync(): Promise<void> {
    return this.fs.durable(() => this.inner.sync());
  }
  truncate(length: number): Promise<void> {
    return this.fs.run(() => this.inner.truncate(length));
  }
  size(): Promise<number> {
    return this.fs.run(() => this.inner.size());
  }
  close(): Promise<void> {
    return this.fs.run(() => this.inner.close());
  }
}
