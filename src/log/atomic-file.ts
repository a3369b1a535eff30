/**
 * Replacing a small file atomically and durably: write a temporary file, fsync it, rename it over
 * the old one, fsync the directory. After a crash the file holds either the old or the new bytes.
 */

import { posix as pathPosix } from "node:path";
import type { FileSystem } from "./fs-port.js";
import { hasSyscallCode } from "./fs-port.js";

export async function writeFileAtomic(fs: FileSystem, path: string, bytes: Uint8Array): Promise<void> {
  const tmp = path + ".tmp";
  if ((await fs.stat(tmp)) !== undefined) await fs.unlink(tmp);
  const handle = await fs.open(tmp, "create-exclusive");
  try {
    await handle.write(bytes, 0, bytes.length, 0);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await fs.rename(tmp, path);
  await fs.syncDir(pathPosix.dirname(path));
}

/** Reads a file, or returns undefined if it does not exist. */
export async function readFileIfExists(fs: FileSystem, path: string): Promise<Uint8Array | undefined> {
  try {
    return await fs.readFile(path);
  } catch (e) {
    if (hasSyscallCode(e, "ENOENT")) return undefined;
    throw e;
  }
}
