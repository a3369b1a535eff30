/**
 * Wraps a MemoryFileSystem so that the process "dies" at an exact operation count: the
 * MemoryFileSystem crashes there (losing or tearing unsynced writes), and every later call from the
 * dead process fails. Tests then reopen the log on the MemoryFileSystem itself, like a restart.
 */
import { IoError } from "../../src/errors.js";
import type { FileHandle, FileStat, FileSystem, OpenMode } from "../../src/log/fs-port.js";
import type { CrashReport, MemoryFileSystem } from "../../src/log/memory-fs.js";

export class CrashingFileSystem implements FileSystem {
  private operations = 0;
  dead = false;
  report: CrashReport | undefined;

  constructor(
    private readonly inner: MemoryFileSystem,
    private readonly crashAt: number,
    private readonly random: () => number,
  ) {}

  /** Counts an operation; crashes when the count is reached; throws once dead. */
  tick(path: string): void {
    if (this.dead) throw new IoError(path, "use", Object.assign(new Error("EIO"), { code: "EIO" }));
    this.operations++;
    if (this.operations >= this.crashAt) {
      this.dead = true;
      this.report = this.inner.crash({ random: this.random });
      throw new IoError(path, "use", Object.assign(new Error("EIO"), { code: "EIO" }));
    }
  }

  async open(path: string, mode: OpenMode): Promise<FileHandle> {
    this.tick(path);
    return new CrashingHandle(this, await this.inner.open(path, mode));
  }
  async readFile(path: string): Promise<Uint8Array> {
    this.tick(path);
    return this.inner.readFile(path);
  }
  async readdir(path: string): Promise<string[]> {
    this.tick(path);
    return this.inner.readdir(path);
  }
  async mkdir(path: string): Promise<void> {
    this.tick(path);
    return this.inner.mkdir(path);
  }
  async rename(from: string, to: string): Promise<void> {
    this.tick(from);
    return this.inner.rename(from, to);
  }
  async unlink(path: string): Promise<void> {
    this.tick(path);
    return this.inner.unlink(path);
  }
  async syncDir(path: string): Promise<void> {
    this.tick(path);
    return this.inner.syncDir(path);
  }
  async stat(path: string): Promise<FileStat | undefined> {
    this.tick(path);
    return this.inner.stat(path);
  }
  async checkWritableDir(path: string): Promise<void> {
    this.tick(path);
    return this.inner.checkWritableDir(path);
  }
}

class CrashingHandle implements FileHandle {
  constructor(
    private readonly fs: CrashingFileSystem,
    private readonly inner: FileHandle,
  ) {}
  get path(): string {
    return this.inner.path;
  }
  async read(buffer: Uint8Array, offset: number, length: number, position: number): Promise<number> {
    this.fs.tick(this.path);
    return this.inner.read(buffer, offset, length, position);
  }
  async write(buffer: Uint8Array, offset: number, length: number, position: number): Promise<void> {
    this.fs.tick(this.path);
    return this.inner.write(buffer, offset, length, position);
  }
  async datasync(): Promise<void> {
    this.fs.tick(this.path);
    return this.inner.datasync();
  }
  async sync(): Promise<void> {
    this.fs.tick(this.path);
    return this.inner.sync();
  }
  async truncate(length: number): Promise<void> {
    this.fs.tick(this.path);
    return this.inner.truncate(length);
  }
  async size(): Promise<number> {
    this.fs.tick(this.path);
    return this.inner.size();
  }
  async close(): Promise<void> {
    if (this.fs.dead) return;
    return this.inner.close();
  }
}
