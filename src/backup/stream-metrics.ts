/**
 * The streamer's Prometheus metrics (prom-client), served as GET /metrics on `--metrics-address`:
 * segments and bytes uploaded, the last uploaded index, the lag behind the node's sealed tail, and
 * the recovery point (seal to upload) of each segment.
 */

import * as http from "node:http";
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import { ErrorCode, VerityError } from "../errors.js";
import type { StreamStats } from "./streamer.js";

export class StreamMetrics {
  readonly registry = new Registry();
  private readonly segments = new Counter({ name: "verity_backup_segments_uploaded_total", help: "Sealed segments uploaded by this process", registers: [this.registry] });
  private readonly bytes = new Counter({ name: "verity_backup_bytes_uploaded_total", help: "Bytes of segments uploaded by this process", registers: [this.registry] });
  private readonly failures = new Counter({ name: "verity_backup_failed_passes_total", help: "Passes that failed (the store or the node could not be reached) and were retried", registers: [this.registry] });
  private readonly recoveryPoint = new Histogram({
    name: "verity_backup_recovery_point_seconds",
    help: "Time from the node sealing a segment to the segment being in the backup's manifest",
    buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
    registers: [this.registry],
  });

  constructor(stats: StreamStats) {
    const gauge = (name: string, help: string, read: () => number): void => {
      new Gauge({ name, help, registers: [this.registry], collect() { this.set(read()); } });
    };
    gauge("verity_backup_last_uploaded_index", "The last log index the backup holds", () => stats.lastUploadedIndex);
    gauge("verity_backup_sealed_tail_index", "The last index of the node's newest sealed segment", () => stats.sealedTailIndex);
    gauge("verity_backup_lag_segments", "Sealed segments on the node not yet in the backup", () => stats.lagSegments);
    gauge("verity_backup_lag_entries", "Log entries between the backup's last index and the node's sealed tail", () => stats.lagEntries);
    gauge("verity_backup_segments_in_backup", "Segments the backup's manifest lists", () => stats.segmentsInBackup);
  }

  uploaded(bytes: number, recoveryPointMs: number | undefined): void {
    this.segments.inc();
    this.bytes.inc(bytes);
    if (recoveryPointMs !== undefined) this.recoveryPoint.observe(recoveryPointMs / 1000);
  }

  failedPass(): void {
    this.failures.inc();
  }
}

/** Serves the registry on host:port until closed. */
export async function serveMetrics(metrics: StreamMetrics, address: string): Promise<http.Server> {
  const m = /^(.*):(\d{1,5})$/.exec(address);
  if (m === null) throw new VerityError(ErrorCode.INVALID_ARGUMENT, `--metrics-address "${address}" is not host:port`);
  const server = http.createServer((req, res) => {
    if (req.url !== "/metrics") {
      res.writeHead(404).end();
      return;
    }
    metrics.registry.metrics().then(
      (text) => res.writeHead(200, { "content-type": metrics.registry.contentType }).end(text),
      (e: unknown) => res.writeHead(500).end(String(e)),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", (e) => reject(new VerityError(ErrorCode.UNAVAILABLE, `cannot listen on --metrics-address ${address}: ${e.message}`)));
    server.listen(Number(m[2]), m[1]!.replace(/^\[|\]$/g, ""), () => resolve());
  });
  return server;
}
