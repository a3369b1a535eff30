/**
 * The file-system port (STYLE.md section 2). Every byte the log reads or writes goes through
 * these two interfaces, so tests and the simulator can plug in `MemoryFileSystem`, which loses
 * unsynced writes and tears the last write on a simulated crash, in place of the real disk.
 *
 * Errors: implementations throw `IoError` (src/errors.ts) carrying the path, the operation and the
 * operating system's code (`syscallCode`, e.g. "ENOENT", "EACCES", "ENOSPC", "EIO").
 */

/** How to open a file. */
export type OpenMode =
  /** Read only; the file must exist. */
  | "read"
  /** Read and write; the file must exist. */
  | "readwrite"
  /** Read and write; the file must NOT exist (created empty). */
  | "create-exclusive"
  /**
   * Read and write with O_DSYNC; the file must exist. Every `write` is durable when it resolves
   * (data and size, as if followed by fdatasync), in one system call instead of two.
   */
  | "readwrite-dsync";

export interface FileHandle {
  /** The path this handle was opened with. */
  readonly path: string;
  /** Reads up to `length` bytes at `position` into `buffer[offset..]`; returns the count read (0 at end of file). */
  read(buffer: Uint8Array, offset: number, length: number, position: number): Promise<number>;
  /** Writes all of `buffer[offset..offset+length)` at `position` (short writes are retried inside). */
  write(buffer: Uint8Array, offset: number, length: number, position: number): Promise<void>;
  /** fdatasync: the file's data (and the size, if it changed) are durable when this resolves. */
  datasync(): Promise<void>;
  /** fsync: data and all metadata are durable when this resolves. */
  sync(): Promise<void>;
  /** Cuts (or extends with zeros) the file to `length` bytes. Not durable until a sync. */
  truncate(length: number): Promise<void>;
  /** The file's current size in bytes. */
  size(): Promise<number>;
  close(): Promise<void>;
}

export interface FileStat {
  readonly size: number;
  readonly isDirectory: boolean;
  /** Permission bits (mode & 0o777). */
  readonly mode: number;
}

export interface FileSystem {
  open(path: string, mode: OpenMode): Promise<FileHandle>;
  /** Reads a whole (small) file; throws IoError with syscallCode "ENOENT" if it does not exist. */
  readFile(path: string): Promise<Uint8Array>;
  /** Names (not paths) of the entries in a directory, sorted. */
  readdir(path: string): Promise<string[]>;
  /** Creates a directory and its parents; no error if it exists. */
  mkdir(path: string): Promise<void>;
  /** Atomically replaces `to` with `from`. Not durable until the directory is synced. */
  rename(from: string, to: string): Promise<void>;
  /** Removes a file. Not durable until the directory is synced. */
  unlink(path: string): Promise<void>;
  /** Makes the directory's entries (creates, renames, unlinks) durable. */
  syncDir(path: string): Promise<void>;
  /** The file's size and kind, or undefined if it does not exist. */
  stat(path: string): Promise<FileStat | undefined>;
  /** Throws IoError unless the current user may create and write files in this directory. */
  checkWritableDir(path: string): Promise<void>;
}

/** True when `e` is an error with the given operating-system code (e.g. "ENOENT"). */
export function hasSyscallCode(e: unknown, code: string): boolean {
  return (
    typeof e === "object" &&
    e !== null &&
    ((e as { syscallCode?: unknown }).syscallCode === code || (e as { code?: unknown }).code === code)
  );
}
