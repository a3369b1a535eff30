/**
 * `verity-backup stream --source D/log --destination s3://bucket/prefix/ [--once]`: the streamer
 * with its progress lines (one per segment), its summary on exit and its metrics.
 */

import type { Server } from "node:http";
import { ExitCode, formatBytes } from "../cli/common.js";
import { NodeFileSystem } from "../log/node-fs.js";
import { AdminCommitSource, EventIndexCommitSource, type CommitSource } from "./commit-source.js";
import { storeFor, formatMs, formatRate, tlsFiles, type S3Args } from "./cli-shared.js";
import { StreamMetrics, serveMetrics } from "./stream-metrics.js";
import { runStream } from "./stream-runner.js";
import { Streamer, percentile, type UploadReport } from "./streamer.js";
import { readSourceMeta, resolveSource } from "./source-dir.js";
import { openConfiguredKeyProvider } from "../cli/at-rest-config.js";

export interface StreamArgs extends S3Args {
  source: string;
  destination: string;
  once: boolean;
  "node-endpoint"?: string;
  "tls-ca"?: string;
  "tls-cert"?: string;
  "tls-key"?: string;
  "metrics-address"?: string;
  /** The node's config file: its key provider reads an encrypted event index (the commit position). */
  config?: string;
  json: boolean;
}

const out = (line: string): void => void process.stdout.write(line + "\n");

function uploadLine(r: UploadReport, json: boolean, location: string): string {
  const s = r.segment;
  if (json) {
    return JSON.stringify({
      event: "uploaded", sequence: s.sequence, key: s.key, first_index: s.firstIndex, last_index: s.lastIndex, bytes: s.bytes,
      sha256: s.sha256, duration_ms: r.durationMs, recovery_point_ms: r.recoveryPointMs ?? null,
    });
  }
  const rp = r.recoveryPointMs === undefined ? "" : `, ${formatMs(r.recoveryPointMs)} after sealing`;
  return `uploaded segment ${s.sequence} (indexes ${s.firstIndex}..${s.lastIndex}, ${formatBytes(s.bytes)}) in ${formatMs(r.durationMs)}${rp} -> ${location}${s.key}`;
}

function summary(streamer: Streamer, location: string, commit: CommitSource, json: boolean, elapsedMs: number): string {
  const s = streamer.stats;
  const p50 = percentile(s.recoveryPointsMs, 50);
  const max = s.recoveryPointsMs.length === 0 ? undefined : Math.max(...s.recoveryPointsMs);
  if (json) {
    return JSON.stringify({
      event: "summary", destination: location, commit_source: commit.description, segments_uploaded: s.segmentsUploaded, bytes_uploaded: s.bytesUploaded,
      upload_ms: s.uploadMs, elapsed_ms: elapsedMs, last_uploaded_index: s.lastUploadedIndex, segments_in_backup: s.segmentsInBackup,
      sealed_tail_index: s.sealedTailIndex, lag_segments: s.lagSegments, lag_entries: s.lagEntries,
      recovery_point_ms: { p50: p50 ?? null, max: max ?? null, samples: s.recoveryPointsMs.length }, failed_passes: s.failedPasses,
    });
  }
  const lines = [
    `verity-backup stream: ${s.segmentsUploaded} segments (${formatBytes(s.bytesUploaded)}) uploaded in ${formatMs(elapsedMs)}` +
      (s.segmentsUploaded === 0 ? "" : `; ${formatRate(s.bytesUploaded, s.uploadMs)} while uploading`),
    `  backup ${location}: ${s.segmentsInBackup} segments, ` + (s.lastUploadedIndex === 0 ? "empty" : `indexes 1..${s.lastUploadedIndex}`),
    `  lag: ${s.lagSegments} sealed segments (${s.lagEntries} entries) behind the node's sealed tail (index ${s.sealedTailIndex}); commit index from the ${commit.description}`,
  ];
  if (p50 !== undefined) lines.push(`  recovery point (sealed -> in the bucket): p50 ${formatMs(p50)}, max ${formatMs(max!)} over ${s.recoveryPointsMs.length} segments`);
  if (s.failedPasses > 0) lines.push(`  ${s.failedPasses} failed passes were retried`);
  return lines.join("\n");
}

export async function streamCommand(a: StreamArgs): Promise<number> {
  const fs = new NodeFileSystem();
  const source = resolveSource(a.source);
  const store = storeFor(a.destination, a);
  const tls = tlsFiles(a);
  const meta = await readSourceMeta(fs, source.dataDir);
  // Segments are uploaded as they are on disk (encrypted ones stay encrypted); the key provider is
  // needed only to read an encrypted event index's commit position.
  const provider = a["node-endpoint"] === undefined ? await openConfiguredKeyProvider(a.config) : undefined;
  const commit: CommitSource = a["node-endpoint"] === undefined
    ? new EventIndexCommitSource(source.dataDir, provider === undefined ? undefined : { provider, clusterId: meta.clusterId })
    : new AdminCommitSource(a["node-endpoint"], tls, meta.nodeId);
  const streamer = new Streamer({ fs, source, store, commit, onUpload: (r) => onUpload(r) });
  const metrics = new StreamMetrics(streamer.stats);
  const onUpload = (r: UploadReport): void => {
    metrics.uploaded(r.segment.bytes, r.recoveryPointMs);
    out(uploadLine(r, a.json, store.location));
  };
  let server: Server | undefined;
  if (a["metrics-address"] !== undefined) server = await serveMetrics(metrics, a["metrics-address"]);
  const stop = new AbortController();
  const onSignal = (): void => stop.abort();
  process.once("SIGTERM", onSignal);
  process.once("SIGINT", onSignal);
  const started = Date.now();
  if (!a.json && !a.once) out(`verity-backup stream: ${source.logDir} -> ${store.location} (commit index from the ${commit.description}); SIGTERM or Ctrl-C stops`);
  try {
    await runStream(streamer, {
      once: a.once, signal: stop.signal, logDir: source.logDir,
      onRetry: (e, n, delay) => {
        metrics.failedPass();
        process.stderr.write(`verity-backup: ${e.message}; retrying in ${formatMs(delay)} (${n} failed in a row)\n`);
      },
    });
  } finally {
    process.removeListener("SIGTERM", onSignal);
    process.removeListener("SIGINT", onSignal);
    server?.close();
    server?.closeAllConnections(); // a scraper's keep-alive connection must not hold the exit
    await provider?.close();
    out(summary(streamer, store.location, commit, a.json, Date.now() - started));
  }
  return ExitCode.OK;
}
