/**
 * The real file-system adapter: `FileSystem` on node:fs/promises. Errors become `IoError`s that
 * name the path, the operation and the operating system's code.
 */

import { constants as fsConstants } from "node:fs";
import * as fsp from "node:fs/promises";
import { IoError } from "../errors.js";
import type { FileHandle, FileStat, FileSystem, OpenMode } from "./fs-port.js";
import { syncJournal } from "./test-sync-journal.js"; // TEST ONLY (jepsen lose-unsynced); undefined in production

const OPEN_FLAGS: Record<OpenMode, number> = {
  read: fsConstants.O_RDONLY,
  readwrite: fsConstants.O_RDWR,
  "create-exclusive": fsConstants.O_RDWR | fsConstants.O_CREAT | fsConstants.O_EXCL,
  "readwrite-dsync": fsConstants.O_RDWR | fsConstants.O_DSYNC,
};

/** Short writes are rare but legal; bound the retries so a broken disk cannot spin us forever. */
const SHORT_WRITE_RETRIES_MAX = 1024;

class NodeFileHandle implements FileHandle {
  constructor(
    readonly path: string,
    private readonly handle: fsp.FileHandle,
    /** Opened with O_DSYNC: every write is durable when it returns (read by the TEST ONLY journal). */
    private readonly dsync = false,
  ) {}

  async read(buffer: Uint8Array, offset: number, length: number, position: number): Promise<number> {
    try {
      const { bytesRead } = await this.handle.read(buffer, offset, length, position);
      return bytesRead;
    } catch (e) {
      throw new IoError(this.path, "read", e);
    }
  }

  async write(buffer: Uint8Array, offset: number, length: number, position: number): Promise<void> {
    let written = 0;
    for (let attempt = 0; written < length; attempt++) {
      if (attempt >= SHORT_WRITE_RETRIES_MAX) {
        throw new IoError(this.path, "write", new Error("too many short writes"));
      }
      try {
        const { bytesWritten } = await this.handle.write(buffer, offset + written, length - written, position + written);
        written += bytesWritten;
      } catch (e) {
        throw new IoError(this.path, "write", e);
      }
    }
    if (this.dsync) syncJournal?.durable(this.path, position + length); // TEST ONLY (jepsen lose-unsynced)
  }

  async datasync(): Promise<void> {
    try {
      await this.handle.datasync();
    } catch (e) {
      throw new IoError(this.path, "fdatasync", e);
    }
    if (syncJournal !== undefined) syncJournal.durable(this.path, await this.size()); // TEST ONLY (jepsen lose-unsynced)
  }

  async sync(): Promise<void> {
    try {
      await this.handle.sync();
    } catch (e) {
      throw new IoError(this.path, "fsync", e);
    }
    if (syncJournal !== undefined) syncJournal.durable(this.path, await this.size()); // TEST ONLY (jepsen lose-unsynced)
  }

  async truncate(length: number): Promise<void> {
    try {
      await this.handle.truncate(length);
    } catch (e) {
      throw new IoError(this.path, "truncate", e);
    }
  }

  async size(): Promise<number> {
    try {
      return (await this.handle.stat()).size;
    } catch (e) {
      throw new IoError(this.path, "stat", e);
    }
  }

  async close(): Promise<void> {
    try {
      await this.handle.close();
    } catch (e) {
      throw new IoError(this.path, "close", e);
    }
  }
}

/** `FileSystem` on the real disk. */
export class NodeFileSystem implements FileSystem {
  async open(path: string, mode: OpenMode): Promise<FileHandle> {
    try {
      return new NodeFileHandle(path, await fsp.open(path, OPEN_FLAGS[mode], 0o644), mode === "readwrite-dsync");
    } catch (e) {
      throw new IoError(path, mode === "read" ? "open for reading" : "open for writing", e);
    }
  }

  async readFile(path: string): Promise<Uint8Array> {
    try {
      return await fsp.readFile(path);
    } catch (e) {
      throw new IoError(path, "read", e);
    }
  }

  async readdir(path: string): Promise<string[]> {
    try {
      return (await fsp.readdir(path)).sort();
    } catch (e) {
      throw new IoError(path, "list directory", e);
    }
  }

  async mkdir(path: string): Promise<void> {
    try {
      await fsp.mkdir(path, { recursive: true, mode: 0o755 });
    } catch (e) {
      throw new IoError(path, "create directory", e);
    }
  }

  async rename(from: string, to: string): Promise<void> {
    try {
      await fsp.rename(from, to);
    } catch (e) {
      throw new IoError(from, `rename to ${to}:`, e);
    }
    syncJournal?.renamed(from, to); // TEST ONLY (jepsen lose-unsynced)
  }

  async unlink(path: string): Promise<void> {
    try {
      await fsp.unlink(path);
    } catch (e) {
      throw new IoError(path, "remove", e);
    }
    syncJournal?.removed(path); // TEST ONLY (jepsen lose-unsynced)
  }

  async syncDir(path: string): Promise<void> {
    let handle: fsp.FileHandle | undefined;
    try {
      handle = await fsp.open(path, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY);
      await handle.sync();
    } catch (e) {
      throw new IoError(path, "fsync directory", e);
    } finally {
      await handle?.close();
    }
  }

  async stat(path: string): Promise<FileStat | undefined> {
    try {
      const s = await fsp.stat(path);
      return { size: s.size, isDirectory: s.isDirectory(), mode: s.mode & 0o777 };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw new IoError(path, "stat", e);
    }
  }

  async checkWritableDir(path: string): Promise<void> {
    try {
      await fsp.access(path, fsConstants.W_OK | fsConstants.X_OK);
    } catch (e) {
      throw new IoError(path, "write to directory", e);
    }
  }
}
