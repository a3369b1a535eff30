/**
 * verity-admin: cluster and node operations over the Admin API (admin-commands.ts), tenants,
 * migrations and schema (admin-tenant-commands.ts), projections (admin-projection-commands.ts), offline checks
 * of a data directory (`log verify`, `log dump`, `verify`), `doctor` (admin-doctor.ts) and
 * `diagnostics export` (admin-diagnostics.ts). Every command takes `--json`; exit codes are 0 ok,
 * 1 a check failed or the operation was refused, 2 bad usage (admin-output.ts, docs/admin.md).
 */

import { join } from "node:path";
import { hideBin } from "yargs/helpers";
import { NodeFileSystem } from "../log/node-fs.js";
import { dumpLog, verifyLog, type VerifyReport } from "../log/offline.js";
import { verifyProjections, type ProjectionsReport } from "../projections/verify-projections.js";
import { ExitCode, cli, formatBytes } from "./common.js";
import { FailedPreconditionError } from "../errors.js";
import { addAdminCommands } from "./admin-commands.js";
import { addTenantCommands } from "./admin-tenant-commands.js";
import { addProjectionCommands } from "./admin-projection-commands.js";
import { addDoctorCommand } from "./admin-doctor.js";
import { addDiagnosticsCommands } from "./admin-diagnostics.js";
import { addEncryptionCommands } from "./admin-encryption-commands.js";
import { openDumpCiphers } from "./admin-log-keys.js";
import { atRestForDataDir, encryptionConfigFlag, openConfiguredKeyProvider } from "./at-rest-config.js";
import { jsonOption } from "./admin-connection.js";
import { ADMIN_NAME, printJson, runAdmin, usageFailure } from "./admin-output.js";

const NAME = ADMIN_NAME;

async function logDirOf(dataDir: string): Promise<string> {
  const fs = new NodeFileSystem();
  const st = await fs.stat(dataDir);
  if (st === undefined || !st.isDirectory) {
    throw new FailedPreconditionError(`${dataDir} is not a directory: pass the node's data directory with --data-dir`);
  }
  const logDir = join(dataDir, "log");
  if ((await fs.stat(logDir)) === undefined) {
    throw new FailedPreconditionError(`${dataDir} has no log/ directory: is it a VerityDB data directory?`);
  }
  return logDir;
}

function printVerify(report: VerifyReport, title: string): void {
  const out = process.stdout;
  out.write(`${title}: ${report.dir}\n`);
  if (report.clusterId !== undefined) out.write(`  cluster ${report.clusterId}\n`);
  for (const s of report.segments) {
    const range = s.records > 0 ? `indexes ${s.firstIndex}..${s.lastIndex}` : "no records";
    out.write(
      `  ${s.file.padEnd(24)} ${(s.sealed ? "sealed" : "current").padEnd(8)} ${range.padEnd(28)} ` +
        `${String(s.records).padStart(9)} records ${formatBytes(s.bytes).padStart(10)}  ${s.status}\n`,
    );
  }
  for (const p of report.problems) {
    const where = p.offset === undefined ? p.file : `${p.file} at byte offset ${p.offset}` + (p.index === undefined ? "" : ` (index ${p.index})`);
    const label = p.severity === "corruption" ? "DAMAGE" : p.severity === "torn-tail" ? "TORN TAIL" : "note";
    out.write(`  ${label}: ${where}: ${p.reason}\n`);
  }
  const range = report.firstIndex === undefined ? "empty log" : `first index ${report.firstIndex}, last index ${report.lastIndex}`;
  const summary = `${report.segments.length} segments, ${report.records} records, ${report.bytes} bytes (${formatBytes(report.bytes)}), ${range}`;
  if (report.ok) out.write(`OK: ${summary}\n`);
  else {
    const n = report.problems.filter((p) => p.severity === "corruption").length;
    out.write(`FAILED: ${n} damaged ${n === 1 ? "place" : "places"} found; ${summary}\n`);
    out.write("The node refuses to serve damaged ranges. Restore it from a backup (verity-restore) or let it re-sync from healthy peers.\n");
  }
}

async function verifyCommand(dataDir: string, json: boolean, title: string, withProjections = false, config?: string): Promise<number> {
  const fs = new NodeFileSystem();
  const report = await verifyLog(fs, await logDirOf(dataDir));
  let projections: ProjectionsReport | undefined;
  if (withProjections && report.ok) {
    // Encrypted databases need the node's key provider (--config); without it the report says so.
    const provider = await openConfiguredKeyProvider(config);
    try {
      projections = await verifyProjections(fs, dataDir, report.lastIndex ?? 0, await atRestForDataDir(fs, dataDir, provider));
    } finally {
      await provider?.close();
    }
  }
  if (json) printJson(projections === undefined ? report : { ...report, ok: report.ok && projections.ok, projections });
  else {
    printVerify(report, title);
    if (projections !== undefined) printProjections(projections);
  }
  return report.ok && (projections?.ok ?? true) ? ExitCode.OK : ExitCode.FAILED;
}

function printProjections(p: ProjectionsReport): void {
  const out = process.stdout;
  out.write(`projections: event index applied up to ${p.eventIndexPosition ?? "(none)"}\n`);
  for (const t of p.tenants) {
    const label = t.status === "ok" ? "ok" : t.status === "replay-skipped" ? "not replayed" : "DAMAGE";
    out.write(`  tenant ${t.tenant.padEnd(20)} applied ${String(t.appliedPosition).padStart(9)}  ${label}${t.detail === "" ? "" : `: ${t.detail}`}\n`);
  }
  for (const n of p.notes) out.write(`  note: ${n}\n`);
  out.write(p.ok ? `OK: ${p.tenants.length} tenants' projections checked\n` : "FAILED: projections that do not match the log were found\n");
}

async function dumpCommand(dataDir: string, from: number, limit: number, json: boolean, config: string | undefined): Promise<number> {
  let damaged = false;
  let sealedSeen = false;
  const logDir = await logDirOf(dataDir);
  const keys = config === undefined ? undefined : await openDumpCiphers(config, dataDir);
  try {
    for await (const item of dumpLog(new NodeFileSystem(), logDir, from, limit, "log/", keys?.cipherFor)) {
      if ("damage" in item) {
        damaged = true;
        const msg = `DAMAGE: ${item.file} at byte offset ${item.offset}: ${item.damage}`;
        if (json) process.stdout.write(JSON.stringify({ file: item.file, offset: item.offset, damage: item.damage }) + "\n");
        else process.stdout.write(msg + "\n");
        break;
      }
      const e = item.entry;
      const payload = Buffer.from(e.payload);
      if (item.sealed) {
        sealedSeen = true;
        if (json) {
          process.stdout.write(JSON.stringify({ index: e.index, term: e.term, kind: e.kind, tenant: e.tenant, file: item.file, offset: item.offset, encrypted: true, sealed_bytes: payload.length }) + "\n");
        } else {
          process.stdout.write(`index=${e.index} term=${e.term} kind=${e.kind} tenant=${e.tenant === "" ? "-" : e.tenant} sealed_bytes=${payload.length} at=${item.file}:${item.offset} (encrypted)\n`);
        }
      } else if (json) {
        process.stdout.write(
          JSON.stringify({
            index: e.index, term: e.term, kind: e.kind, tenant: e.tenant, file: item.file, offset: item.offset,
            payload_bytes: payload.length, payload_base64: payload.toString("base64"),
          }) + "\n",
        );
      } else {
        const preview = printable(payload);
        process.stdout.write(
          `index=${e.index} term=${e.term} kind=${e.kind} tenant=${e.tenant === "" ? "-" : e.tenant} bytes=${payload.length} ` +
            `at=${item.file}:${item.offset} ${preview}\n`,
        );
      }
    }
  } finally {
    await keys?.close();
  }
  if (sealedSeen) {
    process.stderr.write(`${NAME}: records of encrypted segments are shown without payloads: pass --config with the node's configuration ` +
      "([encryption] and its key) to decrypt them\n");
  }
  return damaged ? ExitCode.FAILED : ExitCode.OK;
}

/** The payload as text if it is printable UTF-8, else hex; cut at 64 characters. */
function printable(payload: Buffer): string {
  const text = payload.toString("utf8");
  const ok = !text.includes("\uFFFD") && ![...text].some((ch) => {
    const c = ch.charCodeAt(0);
    return c < 0x20 && c !== 0x09 && c !== 0x0a && c !== 0x0d;
  });
  const s = ok ? JSON.stringify(text) : "0x" + payload.toString("hex");
  return s.length > 64 ? s.slice(0, 61) + "..." : s;
}

const dataDirOption = {
  "data-dir": { type: "string", demandOption: true, describe: "The node's data directory (the one holding log/)" },
  ...jsonOption,
} as const;

export async function main(argv: string[]): Promise<void> {
  const parser = cli(NAME, argv, "Operate VerityDB clusters and check data directories.", `${NAME} <command> [options]`)
    .command("log", "Offline tools for a node's log", (y) =>
      y
        .command(
          "verify",
          "Check every segment: headers, checksums, dense indexes, non-decreasing terms",
          (c) => c.options(dataDirOption)
            .example("$0 log verify --data-dir /var/lib/verity", "Check the log of a stopped node")
            .example("$0 log verify --data-dir /var/lib/verity --json", "The full report as JSON"),
          (a) => runAdmin(a.json, () => verifyCommand(a["data-dir"], a.json, "log verify")),
        )
        .command(
          "dump",
          "Print the log's records (with --json: one JSON object per record, a line each)",
          (c) =>
            c.options({
              ...dataDirOption,
              from: { type: "number", default: 1, describe: "First index to print" },
              limit: { type: "number", default: 100, describe: "How many records at most" },
              config: { type: "string", describe: "The node's configuration file: its [encryption] key decrypts the payloads of encrypted segments" },
            })
              .example("$0 log dump --data-dir /var/lib/verity --from 12340 --limit 10", "Ten records from index 12340")
              .example("$0 log dump --data-dir /var/lib/verity --json | jq .index", "Records as JSON lines")
              .check((a) => {
              if (!Number.isSafeInteger(a.from) || a.from < 1) throw new Error("--from must be a positive integer");
              if (!Number.isSafeInteger(a.limit) || a.limit < 1) throw new Error("--limit must be a positive integer");
              return true;
            }),
          (a) => runAdmin(a.json, () => dumpCommand(a["data-dir"], a.from, a.limit, a.json, a.config)),
        )
        .example("$0 log verify --data-dir /var/lib/verity", "Log integrity check")
        .demandCommand(1, "log needs a subcommand: verify or dump"),
    )
    .command(
      "verify",
      "Check a data directory (log integrity now; projection checks join with projections)",
      (c) => c.options({ ...dataDirOption, ...encryptionConfigFlag })
        .example("$0 verify --data-dir /var/lib/verity", "After verity-restore, before starting the node")
        .example("$0 verify --data-dir /var/lib/verity --config /etc/verity/config.toml", "Encryption on: the config's key provider reads the encrypted databases"),
      (a) => runAdmin(a.json, () => verifyCommand(a["data-dir"], a.json, "verify", true, a.config)),
    )
    .example("$0 cluster status", "Every member of the cluster and its leader")
    .example("$0 doctor --config /etc/verity/config.toml", "Check what the troubleshooting guide checks by hand")
    .example("$0 projection status --tenant 123", "Projection lag and failures of tenant 123")
    .epilogue("Exit codes: 0 ok, 1 a check failed or the operation was refused, 2 bad usage. Every command takes --json. See docs/admin.md.")
    .demandCommand(1, "a command is required")
    .fail(usageFailure(argv));
  await addEncryptionCommands(addDiagnosticsCommands(addDoctorCommand(addProjectionCommands(addTenantCommands(addAdminCommands(parser)))))).parseAsync();
}

await main(hideBin(process.argv));
