/**
 * The node data directory a backup reads, while the node runs: its `log/` (sealed segments are
 * immutable once renamed from current.segment) and `meta/state.json` (identity and term). Nothing
 * here writes to it.
 */

import { statSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { FailedPreconditionError } from "../errors.js";
import type { FileSystem } from "../log/fs-port.js";
import { readMetaState, type MetaState } from "../log/meta-state.js";
import { parseSealedSegmentName, sparseIndexName } from "../log/segment-header.js";

export interface SourceDir {
  /** The node's data directory (holds log/, meta/, state/). */
  readonly dataDir: string;
  readonly logDir: string;
}

/** Accepts the guide's `--source /var/lib/verity/log` as well as the data directory itself. */
export function resolveSource(source: string): SourceDir {
  const isDir = (p: string): boolean => {
    try {
      return statSync(p).isDirectory();
    } catch {
      return false;
    }
  };
  if (!isDir(source)) throw new FailedPreconditionError(`${source} is not a directory: give --source the node's log directory (<data_dir>/log) or its data directory`);
  if (isDir(join(source, "log"))) return { dataDir: source, logDir: join(source, "log") };
  if (basename(source) === "log" || isDir(join(dirname(source), "meta"))) return { dataDir: dirname(source), logDir: source };
  throw new FailedPreconditionError(`${source} holds no VerityDB log: give --source the node's log directory (<data_dir>/log) or its data directory`);
}

/** The node's meta/state.json; refuses a directory without one (not a node's data directory, or never started). */
export async function readSourceMeta(fs: FileSystem, dataDir: string): Promise<MetaState> {
  const meta = await readMetaState(fs, join(dataDir, "meta", "state.json"), join(dataDir, "meta", "state.json"));
  if (meta === undefined) {
    throw new FailedPreconditionError(`${join(dataDir, "meta", "state.json")} does not exist: ${dataDir} is not the data directory of a node that has started`);
  }
  return meta;
}

/** A sealed segment file on the node. */
export interface SealedFile {
  readonly sequence: number;
  readonly name: string;
  readonly path: string;
  readonly bytes: number;
  /** When the node sealed it: its index file is written just before the rename (ms since the epoch). */
  readonly sealedAtMs: number | undefined;
}

/** The sealed segments in `logDir`, by sequence number. A file that vanishes while listed is skipped. */
export async function listSealed(fs: FileSystem, logDir: string): Promise<SealedFile[]> {
  const out: SealedFile[] = [];
  for (const name of await fs.readdir(logDir)) {
    const sequence = parseSealedSegmentName(name);
    if (sequence === undefined) continue;
    const path = join(logDir, name);
    let bytes: number;
    let sealedAtMs: number | undefined;
    try {
      bytes = statSync(path).size;
      sealedAtMs = statSync(join(logDir, sparseIndexName(sequence)), { throwIfNoEntry: false })?.mtimeMs;
    } catch {
      continue; // truncated away between readdir and stat: it held uncommitted records
    }
    out.push({ sequence, name, path, bytes, sealedAtMs });
  }
  return out.sort((a, b) => a.sequence - b.sequence);
}
