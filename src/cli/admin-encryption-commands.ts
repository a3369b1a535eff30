/**
 * verity-admin's at-rest encryption commands (issue 9, docs/encryption.md):
 *
 *   encryption init-local --output F   a new local master key file (mode 0600; never overwrites)
 *   encryption status                  provider, key id and version; segments by key version; unencrypted ones
 *   encryption rotate [--rewrap-only]  local: a new key version; then every data key re-wrapped, with progress
 *
 * status and rotate talk to ONE running node over the Admin API (the node owns its open files and
 * its keys): give that node's client address with --endpoints, and run them on each node.
 * init-local works on this machine's files and needs no node.
 */

import type { Argv } from "yargs";
import { AdminApi, AdminCallError } from "../client/admin-client.js";
import { initLocalKeyFile } from "../crypto/local-kms.js";
import { GrpcStatus } from "../errors.js";
import { ExitCode } from "./common.js";
import { command } from "./admin-commands.js";
import { api, connectionOptions, jsonOption, tlsOf, type Connection } from "./admin-connection.js";
import type { EncryptionStatusReport, RewrapJob } from "../server/encryption-admin.js";
import { UsageError, printJson } from "./admin-output.js";

/** How often rotate asks for progress, and how long it waits at most. */
export const ROTATE_POLL_MS = 250;
export const ROTATE_WAIT_MS_MAX = 60 * 60_000;
/** Status calls in a row that may fail (a node restarting) before rotate stops following. */
const POLL_FAILURES_MAX = 5;

/** What the Admin API's EncryptionStatus answers (the node's own report type). */
type EncryptionStatus = EncryptionStatusReport;

function statusLines(s: EncryptionStatus, endpoint: string): string[] {
  const lines = [`encryption on node ${endpoint}: ${s.enabled ? "on" : "OFF"}`];
  if (s.enabled) {
    lines.push(`  provider        ${s.provider} (${s.where})`);
    lines.push(`  key             ${s.keyId}, current version ${s.keyVersion}`);
  }
  lines.push(`  segments        ${s.segments} (${s.unencryptedSegments} unencrypted)`);
  for (const k of s.segmentsByKey) {
    const current = k.keyId === s.keyId && k.keyVersion === s.keyVersion ? "  (current)" : "";
    lines.push(`    ${String(k.segments).padStart(6)}  key ${k.keyId} version ${k.keyVersion === "" ? "?" : k.keyVersion}${current}`);
  }
  if (s.unencryptedSegments > 0) {
    lines.push(`    ${String(s.unencryptedSegments).padStart(6)}  unencrypted (written before encryption was on; they stay readable as they are)`);
  }
  const r = s.rewrap;
  if (r.state !== "idle") lines.push(`  last rotation   ${rewrapLine(r)}`);
  return lines;
}

function rewrapLine(r: RewrapJob): string {
  const counts = `${r.segmentsDone} of ${r.segmentsTotal} segments (${r.segmentsRewrapped} re-wrapped), ${r.otherFilesDone} other files (${r.otherFilesRewrapped} re-wrapped)`;
  switch (r.state) {
    case "running":
      return `running to version ${r.keyVersion}: ${counts}${r.currentFile === "" ? "" : `, at ${r.currentFile}`}`;
    case "done":
      return `done: version ${r.keyVersion}, ${counts} in ${((r.finishedAtMs - r.startedAtMs) / 1000).toFixed(1)}s`;
    case "failed":
      return `FAILED at ${r.currentFile || "(start)"}: ${r.error}; ${counts}. Fix the cause, then run verity-admin encryption rotate --rewrap-only`;
    default:
      return "never ran since the node started";
  }
}

const initLocal = command<{ json: boolean; output: string }>(async (a) => {
  const summary = await initLocalKeyFile(a.output);
  if (a.json) printJson(summary);
  else {
    process.stdout.write(
      `created ${summary.path} (mode 0600): key ${summary.keyId}, version ${summary.keyVersion}\n` +
        "Set in the node's configuration:\n  [encryption]\n  enabled = true\n  kms_provider = \"local\"\n" +
        `  kms_key_id = ${JSON.stringify(summary.path)}\n` +
        "Back this file up apart from the data: without it, nothing encrypted under it can be read.\n",
    );
  }
  return ExitCode.OK;
});

const status = command<Connection>(async (a) => {
  const { endpoint, response } = await api(a).call("encryptionStatus", {});
  const s = response as unknown as EncryptionStatus;
  if (a.json) printJson({ ...s, endpoint });
  else process.stdout.write(statusLines(s, endpoint).join("\n") + "\n");
  return ExitCode.OK;
});

const rotate = command<Connection & { "rewrap-only": boolean }>(async (a) => {
  if (a.endpoints.includes(",")) {
    throw new UsageError("encryption rotate works on one node: give that node's client address alone in --endpoints, and run it on each node");
  }
  const { endpoint, response } = await api(a).call("rotateEncryption", { rewrapOnly: a["rewrap-only"] });
  const started = response as unknown as EncryptionStatus;
  if (!a.json) process.stdout.write(`rotation started on ${endpoint}: new data keys use ${started.keyId} version ${started.keyVersion}; re-wrapping existing ones\n`);
  const polled = new AdminApi({ endpoints: [endpoint], tls: tlsOf(a) });
  const final = await follow(polled, a.json);
  if (a.json) printJson({ ...final, endpoint });
  else process.stdout.write(statusLines(final, endpoint).join("\n") + "\n");
  return final.rewrap.state === "done" ? ExitCode.OK : ExitCode.FAILED;
});

/** Polls the status until the re-wrap is no longer running, drawing progress on stderr. */
async function follow(polled: AdminApi, json: boolean): Promise<EncryptionStatus> {
  const startedMs = Date.now();
  const terminal = process.stderr.isTTY === true && !json;
  let failures = 0;
  let lastLineMs = 0;
  let last: EncryptionStatus | undefined;
  // Bounded by ROTATE_WAIT_MS_MAX and POLL_FAILURES_MAX failed calls in a row.
  while (Date.now() - startedMs < ROTATE_WAIT_MS_MAX) {
    try {
      last = (await polled.call("encryptionStatus", {})).response as unknown as EncryptionStatus;
      failures = 0;
    } catch (e) {
      const passing = e instanceof AdminCallError && (e.code === GrpcStatus.UNAVAILABLE || e.code === GrpcStatus.DEADLINE_EXCEEDED);
      if (!passing || ++failures >= POLL_FAILURES_MAX) throw e;
    }
    if (last !== undefined) {
      const r = last.rewrap;
      const line = `re-wrap: ${r.segmentsDone}/${r.segmentsTotal} segments, ${r.otherFilesDone} other files`;
      if (terminal) process.stderr.write(`\r${line}\x1b[K`);
      else if (Date.now() - lastLineMs >= 1000 || r.state !== "running") {
        process.stderr.write(`${line}\n`);
        lastLineMs = Date.now();
      }
      if (r.state !== "running") {
        if (terminal) process.stderr.write("\n");
        return last;
      }
    }
    await new Promise((resolve) => setTimeout(resolve, ROTATE_POLL_MS));
  }
  if (last === undefined) throw new AdminCallError(GrpcStatus.UNAVAILABLE, "no encryption status from the node");
  return last;
}

export function addEncryptionCommands(parser: Argv): Argv {
  return parser.command("encryption", "At-rest encryption: key files, status, rotation (docs/encryption.md)", (c) =>
    c
      .command("init-local", "Create a local master key file (mode 0600) for kms_provider = \"local\"; never overwrites",
        (s) => s.options({
          ...jsonOption,
          output: { type: "string", demandOption: true, describe: "Where to create the key file (must not exist)" },
        }).example("$0 encryption init-local --output /etc/verity/master.key", "Then set kms_key_id to that path"),
        initLocal)
      .command("status", "This node's provider, key id and version, segments per key version, unencrypted segments",
        (s) => s.options(connectionOptions).example("$0 encryption status --endpoints node2:7000", "Node 2's files"), status)
      .command("rotate", "Rotate (local: add a key version) and re-wrap every data key; headers only, with progress",
        (s) => s.options({
          ...connectionOptions,
          "rewrap-only": { type: "boolean", default: false, describe: "Only re-wrap to the current key version (after an AWS rotation or a kms_key_id change)" },
        }).example("$0 encryption rotate --endpoints node1:7000", "Rotate node 1's key and re-wrap its data keys"),
        rotate)
      .demandCommand(1, "encryption needs a subcommand: init-local, status or rotate"));
}
