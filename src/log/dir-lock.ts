/**
 * One process per data directory: `<data_dir>/LOCK` holds the owner's PID. A lock left by a process
 * that no longer runs (kill -9, power loss) is taken over; a live owner makes the second process
 * refuse to start with a message naming the PID.
 */

import * as fs from "node:fs";
import { join } from "node:path";
import { FailedPreconditionError, IoError } from "../errors.js";

export const LOCK_FILE_NAME = "LOCK";

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM"; // exists, owned by someone else
  }
}

export class DirLock {
  private constructor(private readonly path: string) {}

  static acquire(dataDir: string): DirLock {
    const path = join(dataDir, LOCK_FILE_NAME);
    // Bounded: one retry after removing a stale lock.
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const fd = fs.openSync(path, "wx", 0o644);
        fs.writeSync(fd, `${process.pid}\n`);
        fs.fsyncSync(fd);
        fs.closeSync(fd);
        return new DirLock(path);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw new IoError(path, "create lock file", e);
      }
      const owner = Number.parseInt(fs.readFileSync(path, "utf8").trim(), 10);
      if (Number.isSafeInteger(owner) && owner > 0 && owner !== process.pid && processAlive(owner)) {
        throw new FailedPreconditionError(
          `the data directory ${dataDir} is in use by process ${owner} (see ${path}); stop that process first, ` +
            "or give this node its own --data-dir",
        );
      }
      fs.rmSync(path, { force: true }); // stale: its owner is gone
    }
    throw new FailedPreconditionError(`could not lock the data directory ${dataDir}: another process keeps creating ${path}`);
  }

  release(): void {
    fs.rmSync(this.path, { force: true });
  }
}
