/** `verity-restore --source F.tar.gz|s3://bucket/prefix/ --data-dir D`: the command around restore.ts. */

import { ExitCode, formatBytes } from "../cli/common.js";
import { NodeFileSystem } from "../log/node-fs.js";
import { BackupUsageError, formatMs, formatRate, storeFor, tlsFiles, type S3Args } from "./cli-shared.js";
import { ByteProgress } from "./progress.js";
import { restore, type RestoreResult, type RestoreSource, type RestoreStart } from "./restore.js";
import { openConfiguredKeyProvider } from "../cli/at-rest-config.js";

export interface RestoreArgs extends S3Args {
  source: string;
  "data-dir": string;
  position?: number;
  force: boolean;
  "new-cluster": boolean;
  "node-id"?: number;
  peers?: string;
  "tls-ca"?: string;
  "tls-cert"?: string;
  "tls-key"?: string;
  /** A verity-server config file: its [encryption] key provider reads encrypted backups and encrypts the restored databases. */
  config?: string;
  json: boolean;
}

function startOf(a: RestoreArgs): RestoreStart {
  if (a["new-cluster"]) {
    if (a.peers !== undefined) throw new BackupUsageError("--peers is for a member that rejoins its cluster; --new-cluster starts a cluster of its own: give one of them");
    if (a["node-id"] !== undefined && (!Number.isSafeInteger(a["node-id"]) || a["node-id"] < 1)) throw new BackupUsageError(`--node-id ${a["node-id"]} is not a positive integer`);
    return { kind: "new-cluster", nodeId: a["node-id"] };
  }
  if (a["node-id"] !== undefined) throw new BackupUsageError("--node-id goes with --new-cluster; a member keeps the node id it was backed up from");
  const peers = (a.peers ?? "").split(",").map((p) => p.trim()).filter((p) => p !== "");
  return { kind: "member", peers, tls: tlsFiles(a) };
}

function printResult(r: RestoreResult, a: RestoreArgs): void {
  const out = (line: string): void => void process.stdout.write(line + "\n");
  out(`restored ${a["data-dir"]} from ${a.source}: log indexes 1..${r.position} of cluster ${r.identity.clusterId}, ${r.segments} segments`);
  out(`  fetched ${formatBytes(r.bytes)} in ${formatMs(r.fetchMs)} (${formatRate(r.bytes, r.fetchMs)}); replayed in ${formatMs(r.replayMs)}; ${formatMs(r.durationMs)} in all`);
  for (const d of r.databasesRestored) out(`  ${d} restored from the snapshot`);
  out(`  event index rebuilt to position ${r.replay.eventIndexPosition}` + (r.replay.eventIndexPosition < r.position ? ` (the batch at ${r.replay.eventIndexPosition + 1}..${r.position} is cut by the position: the node voids it)` : ""));
  for (const t of r.replay.tenants) out(`  tenant ${t.tenant}: projections at position ${t.appliedPosition}`);
  if (r.removed.length > 0) out(`  --force: replaced ${r.removed.map((n) => n + "/").join(", ")}`);
  const v = r.verify;
  for (const p of v.problems) {
    const label = p.severity === "corruption" ? "DAMAGE" : p.severity === "torn-tail" ? "TORN TAIL" : "note";
    out(`  verify ${label}: ${p.file}${p.offset === undefined ? "" : ` at byte offset ${p.offset}`}: ${p.reason}`);
  }
  for (const t of r.projections?.tenants ?? []) if (t.status !== "ok") out(`  verify projections of ${t.tenant}: ${t.status} ${t.detail}`);
  out(r.ok
    ? `OK: verify passed: ${v.segments.length} segments, ${v.records} records, indexes ${v.firstIndex ?? 0}..${v.lastIndex ?? 0}; ${r.projections?.tenants.length ?? 0} tenants' projections checked`
    : "FAILED: the restored data directory does not pass verity-admin verify (above); do not start a node on it");
  if (!r.ok) return;
  const m = r.meta;
  if (a["new-cluster"]) {
    out(`Start it as a new single-node cluster: verity-server --data-dir ${a["data-dir"]} --node-id ${m.nodeId} (node ${m.nodeId} is its only voter)`);
  } else {
    out(`Start it as node ${m.nodeId} of its cluster: verity-server --data-dir ${a["data-dir"]} --node-id ${m.nodeId} --cluster-peers <the other members' cluster addresses>`);
    out(`  it syncs from the leader and votes again once it holds index ${m.recoverUntil}` + (a.peers === undefined ? " (give --peers to use the cluster's commit index instead)" : ""));
  }
}

export async function restoreCommand(a: RestoreArgs): Promise<number> {
  if (a.position !== undefined && (!Number.isSafeInteger(a.position) || a.position < 1)) throw new BackupUsageError(`--position ${a.position} is not a log index (a positive integer)`);
  const start = startOf(a);
  const source: RestoreSource = a.source.startsWith("s3://") ? { kind: "s3", store: storeFor(a.source, a) } : { kind: "archive", path: a.source };
  if (source.kind === "archive" && (a.endpoint !== undefined || a["force-path-style"])) throw new BackupUsageError("--endpoint and --force-path-style go with an s3:// --source");
  const progress = new ByteProgress("verity-restore", 0, process.stderr.isTTY === true, a.json);
  const keyProvider = await openConfiguredKeyProvider(a.config);
  let r: RestoreResult;
  try {
    r = await restore({ fs: new NodeFileSystem(), dataDir: a["data-dir"], source, position: a.position, force: a.force, start, progress, keyProvider });
  } finally {
    await keyProvider?.close();
  }
  if (a.json) {
    process.stdout.write(JSON.stringify({
      ok: r.ok, data_dir: a["data-dir"], source: a.source, position: r.position, cluster_id: r.identity.clusterId, node_id: r.meta.nodeId,
      start: start.kind, recover_until: r.meta.recoverUntil ?? null, segments: r.segments, bytes: r.bytes, fetch_ms: r.fetchMs, replay_ms: r.replayMs,
      duration_ms: r.durationMs, event_index_position: r.replay.eventIndexPosition, tenants: r.replay.tenants, databases_restored: r.databasesRestored,
      removed: r.removed, verify: { ...r.verify, projections: r.projections },
    }) + "\n");
  } else {
    printResult(r, a);
  }
  return r.ok ? ExitCode.OK : ExitCode.FAILED;
}
