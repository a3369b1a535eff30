/**
 * `npm run bench -- log [--data-dir D] [--seconds S]`: appends 256-byte and 4 KiB records with 1,
 * 16 and 256 concurrent appenders, fsync on, and in the same run measures this disk's raw limit: a
 * plain loop writing the same bytes sequentially in 8 MiB chunks, each followed by fdatasync.
 * Prints a table and writes bench/results/log.json. MB/s counts bytes written to the log (frames:
 * payload plus 26 bytes of header and tenant), the same unit as the raw loop.
 *
 * With --data-dir D the log is kept in D (as D/log), so `verity-admin log verify --data-dir D`
 * can check it afterwards.
 *
 * `npm run bench -- log --encryption local` (issue 9): the same cases on a plaintext log and on an
 * encrypted one (a local master key file in a temporary directory), case by case in the same run
 * (plain, encrypted, encrypted, plain, half the time each, so drift on a shared machine and what
 * one run leaves behind hit both alike), and reports encrypted / plain
 * throughput per case; the target is >= 0.8. Writes bench/results/log-encryption.json.
 */

import { mkdirSync, mkdtempSync, openSync, closeSync, writeSync, fdatasyncSync, rmSync, writeFileSync, unlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { randomFillSync, randomUUID } from "node:crypto";
import { DataDir } from "../src/log/data-dir.js";
import { initLocalKeyFile } from "../src/crypto/local-kms.js";
import { openKeyProvider } from "../src/crypto/open-key-provider.js";
import { UNIT_FRAME_FIELDS_BYTES } from "../src/crypto/crypto-limits.js";
import { RecordKind } from "../src/log/types.js";
import type { SegmentedLog } from "../src/log/segmented-log.js";

export interface LogCase {
  record_bytes: number;
  appenders: number;
  records: number;
  seconds: number;
  records_per_s: number;
  mb_per_s: number;
  p50_ms: number;
  p99_ms: number;
}

const MB = 1e6;
const RAW_CHUNK_BYTES = 8 << 20;
/** Stop a case early once it has written this much, so a fast disk does not fill up. */
const CASE_BYTES_MAX = 2 * 2 ** 30;

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
}

async function runCase(log: SegmentedLog, recordBytes: number, appenders: number, seconds: number): Promise<LogCase> {
  const payload = randomFillSync(Buffer.alloc(recordBytes));
  const tenant = "bench";
  // Encrypted frames carry their unit fields; a unit's nonce and tag (28 bytes per up to 64 KiB) are left out.
  const frame = recordBytes + 26 + tenant.length + (log.encryption === undefined ? 0 : UNIT_FRAME_FIELDS_BYTES);
  const latencies: number[] = [];
  let records = 0;
  const start = performance.now();
  const deadline = start + seconds * 1000;
  const worker = async (): Promise<void> => {
    // Bounded by the deadline and by CASE_BYTES_MAX.
    while (performance.now() < deadline && records * frame < CASE_BYTES_MAX) {
      const t0 = performance.now();
      await log.append([{ term: 1, index: log.nextIndex, kind: RecordKind.EVENTS, tenant, payload }]);
      latencies.push(performance.now() - t0);
      records++;
    }
  };
  await Promise.all(Array.from({ length: appenders }, worker));
  const elapsed = (performance.now() - start) / 1000;
  const sorted = Float64Array.from(latencies).sort();
  return {
    record_bytes: recordBytes,
    appenders,
    records,
    seconds: round(elapsed, 3),
    records_per_s: Math.round(records / elapsed),
    mb_per_s: round((records * frame) / elapsed / MB, 1),
    p50_ms: round(percentile(sorted, 0.5), 3),
    p99_ms: round(percentile(sorted, 0.99), 3),
  };
}

/** The disk's limit for this workload: sequential 8 MiB writes, each made durable with fdatasync. */
function rawLimit(dir: string, seconds: number): number {
  const file = join(dir, "raw-limit.bin");
  const chunk = randomFillSync(Buffer.alloc(RAW_CHUNK_BYTES));
  const fd = openSync(file, "w");
  let written = 0;
  const start = performance.now();
  try {
    // Bounded by the deadline and by CASE_BYTES_MAX.
    while (performance.now() - start < seconds * 1000 && written < CASE_BYTES_MAX) {
      writeSync(fd, chunk, 0, chunk.length, written);
      fdatasyncSync(fd);
      written += chunk.length;
    }
  } finally {
    closeSync(fd);
    unlinkSync(file);
  }
  return written / ((performance.now() - start) / 1000) / MB;
}

function round(n: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}

export async function logBench(options: { dataDir?: string; seconds: number; resultsDir: string }): Promise<void> {
  const keep = options.dataDir !== undefined;
  const root = keep ? resolve(options.dataDir!) : mkdtempSync(join(tmpdir(), "verity-bench-"));
  mkdirSync(root, { recursive: true });
  const dir = await DataDir.open({ path: root, clusterId: undefined, nodeId: undefined });
  const cases: LogCase[] = [];
  let raw: number;
  try {
    // The raw limit first and last, averaged, so drift on a shared machine shows in both figures.
    const rawBefore = rawLimit(root, options.seconds);
    for (const recordBytes of [256, 4096]) {
      for (const appenders of [1, 16, 256]) {
        const c = await runCase(dir.log, recordBytes, appenders, options.seconds);
        cases.push(c);
        process.stderr.write(`  ${recordBytes} B x ${appenders} appenders: ${c.records_per_s} records/s, ${c.mb_per_s} MB/s\n`);
      }
    }
    const rawAfter = rawLimit(root, options.seconds);
    raw = (rawBefore + rawAfter) / 2;
    process.stderr.write(`  raw limit: ${rawBefore.toFixed(1)} MB/s before, ${rawAfter.toFixed(1)} MB/s after\n`);
  } finally {
    await dir.close();
    if (!keep) rmSync(root, { recursive: true, force: true });
  }
  const big = cases.find((c) => c.record_bytes === 4096 && c.appenders === 256)!;
  const small = cases.find((c) => c.record_bytes === 256 && c.appenders === 256)!;
  const result = {
    benchmark: "log",
    run_id: randomUUID(),
    node: process.version,
    seconds_per_case: options.seconds,
    cases,
    raw_mb_per_s: round(raw, 1),
    ratio_4k_256: round(big.mb_per_s / raw, 3),
    targets: { ratio_4k_256_min: 0.7, records_per_s_256b_256_min: 200_000 },
    met: { ratio_4k_256: big.mb_per_s / raw >= 0.7, records_per_s_256b_256: small.records_per_s >= 200_000 },
  };
  mkdirSync(options.resultsDir, { recursive: true });
  writeFileSync(join(options.resultsDir, "log.json"), JSON.stringify(result, null, 2) + "\n");
  const line = (c: LogCase) =>
    `| ${String(c.record_bytes).padStart(6)} | ${String(c.appenders).padStart(9)} | ${String(c.records_per_s).padStart(9)} | ${c.mb_per_s.toFixed(1).padStart(7)} | ${c.p50_ms.toFixed(3).padStart(7)} | ${c.p99_ms.toFixed(3).padStart(7)} |`;
  const out = [
    "",
    "log append benchmark (fsync on)",
    "| record | appenders | records/s |    MB/s |  p50 ms |  p99 ms |",
    "|-------:|----------:|----------:|--------:|--------:|--------:|",
    ...cases.map(line),
    "",
    `raw disk limit (8 MiB writes + fdatasync): ${result.raw_mb_per_s} MB/s`,
    `4 KiB x 256: ${big.mb_per_s} MB/s = ${result.ratio_4k_256} of raw (target >= 0.7: ${result.met.ratio_4k_256 ? "met" : "NOT met"})`,
    `256 B x 256: ${small.records_per_s} records/s (target >= 200000: ${result.met.records_per_s_256b_256 ? "met" : "NOT met"})`,
    keep ? `log kept in ${root}: verity-admin log verify --data-dir ${root}` : "",
    `results: ${join(options.resultsDir, "log.json")}`,
  ];
  process.stdout.write(out.join("\n") + "\n");
}

/** One case of the encryption comparison: the plain and encrypted runs and their throughput ratio. */
export interface EncryptionCase {
  record_bytes: number;
  appenders: number;
  plain_records_per_s: number;
  encrypted_records_per_s: number;
  ratio: number;
  plain_p99_ms: number;
  encrypted_p99_ms: number;
}

/** The encryption targets: encrypted / plain records per second, per case. */
export const ENCRYPTION_RATIO_MIN = 0.8;

export async function logEncryptionBench(options: { seconds: number; resultsDir: string }): Promise<void> {
  const scratch = mkdtempSync(join(tmpdir(), "verity-bench-enc-"));
  const keyFile = join(scratch, "master.key");
  await initLocalKeyFile(keyFile);
  const { provider, description } = await openKeyProvider({ provider: "local", keyId: keyFile });
  const plainDir = await DataDir.open({ path: join(scratch, "plain") });
  const encryptedDir = await DataDir.open({ path: join(scratch, "encrypted"), keyProvider: provider });
  const cases: EncryptionCase[] = [];
  try {
    for (const recordBytes of [256, 4096]) {
      for (const appenders of [1, 16, 256]) {
        // ABBA: plain, encrypted, encrypted, plain, half the time each, so that what one run leaves
        // behind (dirty pages being written back, a warmer cache) weighs on both sides alike.
        const half = options.seconds / 2;
        const plainA = await runCase(plainDir.log, recordBytes, appenders, half);
        const encryptedA = await runCase(encryptedDir.log, recordBytes, appenders, half);
        const encryptedB = await runCase(encryptedDir.log, recordBytes, appenders, half);
        const plainB = await runCase(plainDir.log, recordBytes, appenders, half);
        const both = (a: typeof plainA, b: typeof plainA) => ({
          records_per_s: Math.round((a.records_per_s + b.records_per_s) / 2),
          p99_ms: Math.max(a.p99_ms, b.p99_ms),
        });
        const plain = both(plainA, plainB);
        const encrypted = both(encryptedA, encryptedB);
        const c: EncryptionCase = {
          record_bytes: recordBytes, appenders,
          plain_records_per_s: plain.records_per_s, encrypted_records_per_s: encrypted.records_per_s,
          ratio: round(encrypted.records_per_s / Math.max(1, plain.records_per_s), 3),
          plain_p99_ms: plain.p99_ms, encrypted_p99_ms: encrypted.p99_ms,
        };
        cases.push(c);
        process.stderr.write(`  ${recordBytes} B x ${appenders} appenders: plain ${c.plain_records_per_s}/s, encrypted ${c.encrypted_records_per_s}/s, ratio ${c.ratio}\n`);
      }
    }
  } finally {
    await plainDir.close();
    await encryptedDir.close();
    await provider.close();
    rmSync(scratch, { recursive: true, force: true });
  }
  const headline = cases.filter((c) => c.appenders === 256);
  const result = {
    benchmark: "log-encryption",
    run_id: randomUUID(),
    node: process.version,
    provider: description.provider,
    sealing: "per record (AES-256-GCM, random 96-bit nonce, 28 bytes a record)",
    seconds_per_case: options.seconds,
    cases,
    targets: { ratio_min: ENCRYPTION_RATIO_MIN },
    met: Object.fromEntries(headline.map((c) => [`ratio_${c.record_bytes}b_256`, c.ratio >= ENCRYPTION_RATIO_MIN])),
  };
  mkdirSync(options.resultsDir, { recursive: true });
  writeFileSync(join(options.resultsDir, "log-encryption.json"), JSON.stringify(result, null, 2) + "\n");
  const line = (c: EncryptionCase) =>
    `| ${String(c.record_bytes).padStart(6)} | ${String(c.appenders).padStart(9)} | ${String(c.plain_records_per_s).padStart(9)} | ` +
    `${String(c.encrypted_records_per_s).padStart(9)} | ${c.ratio.toFixed(3).padStart(5)} | ${c.plain_p99_ms.toFixed(3).padStart(8)} | ${c.encrypted_p99_ms.toFixed(3).padStart(8)} |`;
  const out = [
    "",
    "log append benchmark, plaintext versus encrypted (local key file, fsync on, same run)",
    "| record | appenders |  plain/s | encrypted/s | ratio | plain p99 | enc. p99 |",
    "|-------:|----------:|---------:|------------:|------:|----------:|---------:|",
    ...cases.map(line),
    "",
    ...headline.map((c) => `${c.record_bytes} B x 256: encrypted/plain = ${c.ratio} (target >= ${ENCRYPTION_RATIO_MIN}: ${c.ratio >= ENCRYPTION_RATIO_MIN ? "met" : "NOT met"})`),
    `results: ${join(options.resultsDir, "log-encryption.json")}`,
  ];
  process.stdout.write(out.join("\n") + "\n");
}
