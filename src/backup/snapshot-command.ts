/** `verity-backup snapshot --data-dir D [--position N] --output F.tar.gz`: the command around snapshot.ts. */

import { ExitCode, formatBytes } from "../cli/common.js";
import { NodeFileSystem } from "../log/node-fs.js";
import { AdminCommitSource, EventIndexCommitSource, type CommitSource } from "./commit-source.js";
import { BackupUsageError, formatMs, formatRate, tlsFiles } from "./cli-shared.js";
import { ByteProgress } from "./progress.js";
import { takeSnapshot } from "./snapshot.js";
import { readSourceMeta, resolveSource } from "./source-dir.js";
import { atRestForDataDir, openConfiguredKeyProvider } from "../cli/at-rest-config.js";

export interface SnapshotArgs {
  "data-dir": string;
  position?: number;
  output: string;
  "node-endpoint"?: string;
  "tls-ca"?: string;
  "tls-cert"?: string;
  "tls-key"?: string;
  /** The node's config file: with encryption on, its key provider reads the encrypted databases and encrypts the archive. */
  config?: string;
  json: boolean;
}

export async function snapshotCommand(a: SnapshotArgs): Promise<number> {
  if (a.position !== undefined && (!Number.isSafeInteger(a.position) || a.position < 1)) {
    throw new BackupUsageError(`--position ${a.position} is not a log index (a positive integer)`);
  }
  if (!/\.(tar\.gz|tgz)$/.test(a.output)) throw new BackupUsageError(`--output ${a.output}: name the archive .tar.gz`);
  const fs = new NodeFileSystem();
  const source = resolveSource(a["data-dir"]);
  const tls = tlsFiles(a);
  const provider = await openConfiguredKeyProvider(a.config);
  let r;
  try {
    const encryption = await atRestForDataDir(fs, source.dataDir, provider);
    const commit: CommitSource = a["node-endpoint"] === undefined
      ? new EventIndexCommitSource(source.dataDir, encryption)
      : new AdminCommitSource(a["node-endpoint"], tls, (await readSourceMeta(fs, source.dataDir)).nodeId);
    const progress = new ByteProgress("verity-backup snapshot", 0, process.stderr.isTTY === true, a.json);
    r = await takeSnapshot({ fs, dataDir: source.dataDir, position: a.position, output: a.output, commit, progress, encryption });
  } finally {
    await provider?.close();
  }
  const m = r.manifest;
  if (a.json) {
    process.stdout.write(JSON.stringify({
      output: a.output, position: m.position, cluster_id: m.clusterId, node_id: m.nodeId, segments: m.segments.length,
      bytes: r.bytes, archive_bytes: r.archiveBytes, duration_ms: r.durationMs,
      databases: m.databases.map((d) => ({ path: d.path, applied_position: d.appliedPosition, bytes: d.bytes, sha256: d.sha256 })),
      omitted: r.omitted, encrypted: provider !== undefined,
    }) + "\n");
  } else {
    const out = (line: string): void => void process.stdout.write(line + "\n");
    out(`snapshot ${a.output}: log indexes 1..${m.position} of cluster ${m.clusterId} (node ${m.nodeId}), ${m.segments.length} segments`);
    for (const d of m.databases) out(`  ${d.path} at position ${d.appliedPosition} (${formatBytes(d.bytes)})`);
    for (const p of r.omitted) out(`  ${p} left out: the node had applied it past ${m.position}; verity-restore rebuilds it from the log`);
    if (provider !== undefined) out("  the archive is encrypted: verity-restore needs --config with the same [encryption] key");
    out(`OK: ${formatBytes(r.bytes)} archived as ${formatBytes(r.archiveBytes)} in ${formatMs(r.durationMs)} (${formatRate(r.bytes, r.durationMs)})`);
  }
  return ExitCode.OK;
}
