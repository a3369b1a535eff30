/**
 * `verity-admin doctor`: one command for what the operations guide's troubleshooting section checks
 * by hand. Each check prints PASS, WARN or FAIL, what it found and, unless it passed, the fix to try:
 *
 * - config: the settings loader of verity-server (`verity-server --config F --validate`);
 * - data-dir, disk-space: permissions of the data directory, free space and inodes (statfs);
 * - log: `verity-admin log verify` (src/log/offline.ts verifyLog);
 * - node, cluster: the Admin API of each endpoint (node and cluster status);
 * - clock-skew: each member's clock, from the Date header of its /status (the Admin API has no time);
 * - peers: `verity-admin cluster ping` of every peer (src/client/ping.ts);
 * - tls-cert, tls-ca: validity dates, key match and issuer (cert-check.ts).
 *
 * Exit 0 when no check failed, 1 when one did. A check that needs a running node reports FAIL "not
 * reachable" when none answers; nothing here throws for what it finds.
 */

import { access, stat, statfs } from "node:fs/promises";
import { constants as fsConstants } from "node:fs";
import { dirname, join } from "node:path";
import type { Argv } from "yargs";
import { AdminApi, AdminCallError, type ClientTlsFiles } from "../client/admin-client.js";
import { ping } from "../client/ping.js";
import { GrpcStatus } from "../errors.js";
import { NodeFileSystem } from "../log/node-fs.js";
import { verifyLog } from "../log/offline.js";
import { loadSettings, refusalsOfThisBuild, type Settings, type SettingsResult } from "../server/settings.js";
import { formatHostPort, formatSize, type HostPort } from "../server/setting-values.js";
import { unhealthy, type Peer, type Self } from "./admin-commands.js";
import { ADMIN_ENV_VARIABLES, ENDPOINTS_DEFAULT, jsonOption, splitList, tlsOf, tlsOptions } from "./admin-connection.js";
import { UsageError, callMessage, printJson, runAdmin } from "./admin-output.js";
import { checkCertificate } from "./cert-check.js";
import { fail, pass, warn, type CheckResult, type CheckStatus } from "./check-result.js";
import { judgeClocks, measureOffset } from "./clock-skew.js";
import { ExitCode, formatBytes, paint } from "./common.js";

export type { CheckResult, CheckStatus } from "./check-result.js";

/** Free space under this share of the disk is a warning. */
export const DISK_FREE_WARN_RATIO = 0.1;
/** Free space for fewer than this many new segments is a warning; for less than one, a failure. */
export const DISK_FREE_WARN_SEGMENTS = 4;
/** Fewer free inodes than this is a warning. */
export const DISK_FREE_INODES_MIN = 1_000;
/** Parent directories walked up at most to find an existing one. */
const PATH_DEPTH_MAX = 256;

/** Parsed flags of `doctor`. */
export interface DoctorArgs {
  config?: string;
  "data-dir"?: string;
  endpoints?: string;
  "tls-ca"?: string;
  "tls-cert"?: string;
  "tls-key"?: string;
  json: boolean;
}

/** What the checks work from: the loaded settings when the config is valid, the flags otherwise. */
interface Context {
  settings: Settings | undefined;
  dataDir: string | undefined;
  endpoints: string[];
  /** Where `endpoints` came from, for the report. */
  endpointsFrom: string;
  tls: ClientTlsFiles | undefined;
  nowMs: number;
}

/** One endpoint's answer to ClusterStatus, or why there was none. */
type Answer = { endpoint: string; self: Self; peers: Peer[] } | { endpoint: string; error: AdminCallError };

/** The environment as verity-server would read it: without the admin tool's own VERITY_* variables. */
export function serverEnvironment(): Record<string, string | undefined> {
  const env = { ...process.env };
  for (const name of ADMIN_ENV_VARIABLES) delete env[name];
  return env;
}

/** The settings the node would run with, loaded by verity-server's own loader (`--validate`). */
export function loadNodeSettings(a: Pick<DoctorArgs, "config" | "data-dir">): SettingsResult {
  return loadSettings({
    flags: { "data-dir": a["data-dir"] },
    env: serverEnvironment(),
    configFile: a.config === undefined ? undefined : { path: a.config },
  });
}

function checkConfig(a: DoctorArgs): { result: CheckResult; settings: Settings | undefined } {
  const loaded = loadNodeSettings(a);
  const file = a.config ?? "no --config given (defaults and VERITY_* environment only)";
  const validate = `verity-server${a.config === undefined ? "" : ` --config ${a.config}`} --validate`;
  if (!loaded.ok) {
    return {
      settings: undefined,
      result: fail("config", `${file}: ${loaded.problems.length} problem${loaded.problems.length === 1 ? "" : "s"}; the node would refuse to start`,
        `fix each problem listed (docs/configuration.md), then run '${validate}'`, loaded.problems.slice()),
    };
  }
  const s = loaded.settings;
  const summary = `${file}: valid; node_id ${s.server.nodeId ?? "(stored in the data dir)"}, data_dir ${s.storage.dataDir}, ` +
    `${s.clusterPeers.length} peer${s.clusterPeers.length === 1 ? "" : "s"}, TLS ${s.security.tlsCert === undefined ? "off" : "on"}`;
  const refusals = refusalsOfThisBuild(s);
  if (refusals.length > 0) return { settings: s, result: fail("config", `${file}: valid, but this build refuses it`, "change the settings named", refusals) };
  if (loaded.warnings.length > 0) {
    return { settings: s, result: warn("config", summary, "remove or rename the variables named (docs/configuration.md lists every VERITY_* name)", loaded.warnings.slice()) };
  }
  return { settings: s, result: pass("config", summary) };
}

/** The path itself if it exists, else its nearest existing parent. */
async function nearestExisting(path: string): Promise<{ path: string; exists: boolean }> {
  let current = path;
  // Bounded: PATH_DEPTH_MAX parents.
  for (let depth = 0; depth < PATH_DEPTH_MAX; depth++) {
    if ((await stat(current).catch(() => undefined)) !== undefined) return { path: current, exists: current === path };
    const parent = dirname(current);
    if (parent === current) break;
    current = parent;
  }
  return { path: current, exists: false };
}

async function canWrite(path: string): Promise<string | undefined> {
  try {
    await access(path, fsConstants.R_OK | fsConstants.W_OK | fsConstants.X_OK);
    return undefined;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? String(e);
  }
}

async function checkDataDir(dataDir: string | undefined): Promise<CheckResult> {
  if (dataDir === undefined) return warn("data-dir", "not checked: the configuration did not load", "fix the config problems, or give --data-dir");
  const where = await nearestExisting(dataDir);
  const uid = process.getuid?.() ?? -1;
  const user = `this user (uid ${uid})`;
  if (!where.exists) {
    const refused = await canWrite(where.path);
    return refused === undefined
      ? pass("data-dir", `${dataDir} does not exist yet; verity-server creates it (${where.path} is writable by ${user})`)
      : fail("data-dir", `${dataDir} does not exist, and ${user} cannot create it in ${where.path}: ${refused}`,
        `create it for the server's user: mkdir -p ${dataDir} && chown <verity user> ${dataDir}`);
  }
  const st = await stat(dataDir);
  if (!st.isDirectory()) return fail("data-dir", `${dataDir} is not a directory`, "point storage.data_dir (or --data-dir) at a directory");
  const owner = `owner uid ${st.uid}, mode ${(st.mode & 0o7777).toString(8).padStart(4, "0")}`;
  const problems: string[] = [];
  for (const path of [dataDir, join(dataDir, "log"), join(dataDir, "meta")]) {
    if ((await stat(path).catch(() => undefined)) === undefined) continue;
    const refused = await canWrite(path);
    if (refused !== undefined) problems.push(`${path}: ${refused}`);
  }
  if (problems.length > 0) {
    return fail("data-dir", `${dataDir} (${owner}) is not readable and writable by ${user}`,
      `run the server as the directory's owner, or give it the directory: chown -R <verity user> ${dataDir}`, problems);
  }
  const asRoot = uid === 0 && st.uid !== 0 ? "; checked as root: the server's own user must be the owner or have write permission" : "";
  return pass("data-dir", `${dataDir} (${owner}) is readable and writable by ${user}${asRoot}`);
}

async function checkDiskSpace(dataDir: string | undefined, segmentBytes: number | undefined): Promise<CheckResult> {
  if (dataDir === undefined) return warn("disk-space", "not checked: the configuration did not load", "fix the config problems, or give --data-dir");
  const where = await nearestExisting(dataDir);
  const fs = await statfs(where.path);
  const free = fs.bavail * fs.bsize;
  const total = fs.blocks * fs.bsize;
  const segment = segmentBytes ?? 0;
  const found = `${formatBytes(free)} free of ${formatBytes(total)} (${total === 0 ? 0 : Math.round((100 * free) / total)}%) on the file system of ${where.path}; ` +
    `${fs.ffree} inodes free; segment_size ${formatSize(segment)}`;
  const freeUp = `free space on that file system, or move storage.data_dir to a larger disk`;
  if (free < segment) return fail("disk-space", found, `${freeUp}: the node cannot start its next segment`);
  if (free < DISK_FREE_WARN_SEGMENTS * segment || free < DISK_FREE_WARN_RATIO * total) return warn("disk-space", found, freeUp);
  if (fs.files > 0 && fs.ffree < DISK_FREE_INODES_MIN) return warn("disk-space", found, "delete unneeded small files on that file system: it is running out of inodes");
  return pass("disk-space", found);
}

async function checkLog(dataDir: string | undefined): Promise<CheckResult> {
  if (dataDir === undefined) return warn("log", "not checked: the configuration did not load", "fix the config problems, or give --data-dir");
  const logDir = join(dataDir, "log");
  if ((await stat(logDir).catch(() => undefined)) === undefined) return pass("log", `${logDir} does not exist: a new data directory, nothing to verify`);
  let report;
  try {
    report = await verifyLog(new NodeFileSystem(), logDir);
  } catch (e) {
    return fail("log", `cannot read ${logDir}: ${e instanceof Error ? e.message : String(e)}`, "check the data directory's permissions (see data-dir)");
  }
  const range = report.firstIndex === undefined ? "empty" : `indexes ${report.firstIndex}..${report.lastIndex}`;
  const plural = (n: number, word: string): string => `${n} ${word}${n === 1 ? "" : "s"}`;
  const found = `${plural(report.segments.length, "segment")}, ${plural(report.records, "record")} (${range}), ${formatBytes(report.bytes)}`;
  const where = (p: (typeof report.problems)[number]): string =>
    `${p.file}${p.offset === undefined ? "" : ` at byte offset ${p.offset}`}${p.index === undefined ? "" : ` (index ${p.index})`}: ${p.reason}`;
  const damage = report.problems.filter((p) => p.severity === "corruption");
  if (damage.length > 0) {
    return fail("log", `${found}; ${damage.length} damaged place${damage.length === 1 ? "" : "s"}`,
      `stop the node, run 'verity-admin log verify --data-dir ${dataDir}' for the full report, then restore it from a backup (verity-restore) or empty it and let it re-sync from healthy peers`,
      damage.map(where));
  }
  const torn = report.problems.filter((p) => p.severity === "torn-tail");
  if (torn.length > 0) {
    return warn("log", `${found}; a torn tail (a write cut short)`,
      "nothing to do if the node is running (its last write may be in flight) or crashed: the tail is cut on the next start; run doctor again with the node stopped to be sure",
      torn.map(where));
  }
  return pass("log", `${found}; every checksum and index is in order`);
}

async function askEndpoints(context: Context): Promise<Answer[]> {
  return Promise.all(context.endpoints.map(async (endpoint): Promise<Answer> => {
    try {
      const { response } = await new AdminApi({ endpoints: [endpoint], tls: context.tls }).call("clusterStatus", {});
      return { endpoint, self: response.self as Self, peers: (response.peers as Peer[]) ?? [] };
    } catch (e) {
      return { endpoint, error: e instanceof AdminCallError ? e : new AdminCallError(GrpcStatus.UNKNOWN, e instanceof Error ? e.message : String(e)) };
    }
  }));
}

/** For the checks after `node` when no endpoint answered: refused or not reachable, as the node check says. */
function noAnswer(name: string, answers: Answer[], what: string): CheckResult {
  const refused = answers.some((x) => "error" in x && x.error.code === GrpcStatus.PERMISSION_DENIED);
  return refused
    ? fail(name, `not checked: the Admin API refused this certificate, so ${what}`, "see the node check: give an admin certificate with --tls-cert and --tls-key")
    : fail(name, `not reachable: no endpoint answered, so ${what}`, "see the node check: start the node, or give its client address with --endpoints");
}

function notReachableFix(context: Context): string {
  return `start the node (systemctl start verity) and check that ${context.endpoints.join(", ")} is its client address ` +
    "(server.bind_address); give the right ones with --endpoints or VERITY_ENDPOINTS";
}

function checkNode(context: Context, answers: Answer[]): CheckResult {
  const ok = answers.filter((x) => "self" in x);
  const failed = answers.filter((x) => "error" in x);
  const failures = failed.map((x) => callMessage(x.error));
  const denied = failed.find((x) => x.error.code === GrpcStatus.PERMISSION_DENIED);
  if (ok.length === 0) {
    if (denied !== undefined) {
      return fail("node", `refused: ${callMessage(denied.error)}`, "give an admin certificate with --tls-cert and --tls-key (an identity in [security] admins), and the CA with --tls-ca", failures);
    }
    return fail("node", `not reachable at ${context.endpoints.join(", ")} (${context.endpointsFrom})`, notReachableFix(context), failures);
  }
  const described = ok.map((x) => `node ${x.self.nodeId} at ${x.endpoint}: ${x.self.state}, view ${x.self.view}, commit ${x.self.commitIndex}, applied ${x.self.appliedIndex}`);
  if (failed.length > 0) return warn("node", `${ok.length} of ${answers.length} endpoints answered`, notReachableFix(context), [...described, ...failures]);
  return pass("node", described.length === 1 ? described[0]! : `${described.length} endpoints answered`, described.length === 1 ? undefined : described);
}

function checkCluster(answers: Answer[]): CheckResult {
  const ok = answers.flatMap((x) => ("self" in x ? [x] : []));
  if (ok.length === 0) return noAnswer("cluster", answers, "no member's view of the cluster could be read");
  const leader = ok.find((x) => x.self.state === "leader");
  if (leader === undefined) {
    const known = ok.find((x) => x.self.leaderId !== 0);
    if (known === undefined) {
      return fail("cluster", `no leader known to node${ok.length === 1 ? "" : "s"} ${ok.map((x) => x.self.nodeId).join(", ")}`,
        "a majority of voters must reach each other: see peers, and the nodes' logs (journalctl -u verity | grep -i \"connection\\|timeout\\|refused\")");
    }
    return pass("cluster", `leader node ${known.self.leaderId}, view ${known.self.view}, as node ${known.self.nodeId} sees it`,
      ["give the leader's client address in --endpoints to check how far each member is"]);
  }
  const members = leader.peers.length + 1;
  const missing = unhealthy(leader.self, leader.peers);
  if (missing.length > 0) {
    return warn("cluster", `leader node ${leader.self.nodeId}, view ${leader.self.view}, ${members} members; not every member is up and caught up`,
      "see peers for reachability; a member that is behind catches up by itself ('verity-admin cluster wait-healthy' waits for it)", missing);
  }
  return pass("cluster", `leader node ${leader.self.nodeId}, view ${leader.self.view}, ${members} member${members === 1 ? "" : "s"}, every one up and caught up`);
}

async function checkClock(context: Context, answers: Answer[]): Promise<CheckResult> {
  const ok = answers.flatMap((x) => ("self" in x ? [x] : []));
  if (ok.length === 0) return noAnswer("clock-skew", answers, "no member's clock could be read");
  const measured = await Promise.all(ok.map(async (x) => ({ id: x.self.nodeId, endpoint: x.endpoint, measurement: await measureOffset(x.endpoint, context.tls) })));
  const seen = new Set(ok.map((x) => x.self.nodeId));
  const members = new Set(ok.flatMap((x) => x.peers.map((p) => p.id)));
  return judgeClocks(measured, [...members].filter((id) => !seen.has(id)).sort((x, y) => x - y));
}

async function checkPeers(context: Context, answers: Answer[]): Promise<CheckResult> {
  const own = new Set<string>();
  const addresses: string[] = [];
  if (context.settings !== undefined) {
    own.add(formatHostPort(context.settings.server.clusterAddress));
    addresses.push(...context.settings.clusterPeers.map(formatHostPort));
  }
  // Every member any node knows of; with a config, all but this node itself.
  for (const x of answers) {
    if (!("self" in x)) continue;
    addresses.push(x.self.clusterAddress);
    for (const p of x.peers) if (p.address !== "") addresses.push(p.address);
  }
  const peers = [...new Set(addresses)].filter((p) => !own.has(p));
  if (peers.length === 0) {
    return context.settings === undefined && !answers.some((x) => "self" in x)
      ? warn("peers", "not checked: the configuration did not load and no node answered", "fix the config problems; 'verity-admin cluster ping --peers ...' checks peers by hand")
      : pass("peers", "no peers: a single-node cluster");
  }
  const results = await Promise.all(peers.map((p) => ping(p, context.tls)));
  const lines = results.map((r) => r.ok
    ? `${r.address}: ok, ${r.rttMs!.toFixed(1)} ms${r.identity === undefined ? "" : `, certificate "${r.identity}"`}`
    : `${r.address}: ${r.reason}`);
  const down = results.filter((r) => !r.ok);
  if (down.length === 0) return pass("peers", `${results.length} of ${results.length} reachable on their cluster port`, lines);
  const certificate = down.some((r) => r.reason?.startsWith("certificate"));
  return fail("peers", `${down.length} of ${results.length} not reachable: ${down.map((r) => r.address).join(", ")}`,
    certificate
      ? "the TLS handshake failed: every node's certificate must be issued by the CA in security.tls_ca and name the address it is reached by"
      : "start the nodes named; check cluster_peers, and that the firewall lets the cluster port (7001) through between nodes",
    lines);
}

function checkCertificates(context: Context): CheckResult[] {
  if (context.settings === undefined) {
    return ["tls-cert", "tls-ca"].map((name) => warn(name, "not checked: the configuration did not load", "fix the config problems first"));
  }
  const sec = context.settings.security;
  return [
    checkCertificate("tls_cert", sec.tlsCert, context.nowMs, { keyPath: sec.tlsKey, caPath: sec.tlsCa }),
    checkCertificate("tls_ca", sec.tlsCa, context.nowMs),
  ];
}

/** Where to reach the node: --endpoints (or VERITY_ENDPOINTS), else the config's bind address, else the default. */
export function resolveEndpoints(endpointsFlag: string | undefined, settings: Settings | undefined): { endpoints: string[]; from: string } {
  if (endpointsFlag !== undefined) {
    const from = process.env.VERITY_ENDPOINTS === endpointsFlag ? "VERITY_ENDPOINTS" : "--endpoints";
    const endpoints = splitList(endpointsFlag);
    if (endpoints.length === 0) throw new UsageError(`${from} is empty: give the client address host:port of at least one node`);
    return { endpoints, from };
  }
  if (settings !== undefined && settings.server.bindAddress.port !== 0) {
    return { endpoints: [formatHostPort(reachable(settings.server.bindAddress))], from: "server.bind_address" };
  }
  return { endpoints: [ENDPOINTS_DEFAULT], from: "the default" };
}

/** A wildcard bind address is reached on loopback from this machine. */
export function reachable(address: HostPort): HostPort {
  return { host: address.host === "0.0.0.0" ? "127.0.0.1" : address.host === "::" ? "::1" : address.host, port: address.port };
}

/** The TLS files: the flags (or VERITY_TLS_*), else the node's own files from the config (its certificate is what its peers see). */
export function resolveTls(a: Pick<DoctorArgs, "tls-ca" | "tls-cert" | "tls-key">, settings: Settings | undefined): ClientTlsFiles | undefined {
  const explicit = tlsOf(a);
  if (explicit !== undefined) return explicit;
  const sec = settings?.security;
  return sec?.tlsCert !== undefined && sec.tlsKey !== undefined && sec.tlsCa !== undefined ? { ca: sec.tlsCa, cert: sec.tlsCert, key: sec.tlsKey } : undefined;
}

function contextOf(a: DoctorArgs, settings: Settings | undefined): Context {
  const { endpoints, from } = resolveEndpoints(a.endpoints, settings);
  return { settings, dataDir: settings?.storage.dataDir ?? a["data-dir"], endpoints, endpointsFrom: from, tls: resolveTls(a, settings), nowMs: Date.now() };
}

/** Runs every check, in the order the guide's troubleshooting section takes them. */
export async function runDoctor(a: DoctorArgs): Promise<CheckResult[]> {
  const config = checkConfig(a);
  const context = contextOf(a, config.settings);
  const results: CheckResult[] = [config.result];
  results.push(await checkDataDir(context.dataDir));
  results.push(await checkDiskSpace(context.dataDir, config.settings?.storage.segmentBytes));
  results.push(await checkLog(context.dataDir));
  const answers = await askEndpoints(context);
  results.push(checkNode(context, answers), checkCluster(answers));
  const [clock, peers] = await Promise.all([checkClock(context, answers), checkPeers(context, answers)]);
  results.push(clock, peers, ...checkCertificates(context));
  return results;
}

function printReport(results: CheckResult[]): void {
  const width = Math.max(...results.map((r) => r.name.length));
  const lines: string[] = [];
  for (const r of results) {
    const status = r.status === "PASS" ? paint(r.status, "green") : r.status === "WARN" ? paint(r.status, "yellow") : paint(r.status, "red");
    lines.push(`${status}  ${r.name.padEnd(width)}  ${r.found}`);
    for (const d of r.details ?? []) lines.push(`${" ".repeat(width + 8)}- ${d}`);
    if (r.fix !== undefined) lines.push(`${" ".repeat(width + 8)}fix: ${r.fix}`);
  }
  const count = (s: CheckStatus): number => results.filter((r) => r.status === s).length;
  lines.push(`doctor: ${count("PASS")} passed, ${count("WARN")} warning${count("WARN") === 1 ? "" : "s"}, ${count("FAIL")} failed`);
  process.stdout.write(lines.join("\n") + "\n");
}

export function addDoctorCommand(y: Argv): Argv {
  return y.command(
    "doctor",
    "Check config, data dir permissions and free space, log integrity, node and cluster, clock skew, peers, certificate expiry: PASS / WARN / FAIL each, with the fix",
    (c) => c.options({
      config: { type: "string", describe: "The node's configuration file (as given to verity-server --config)" },
      "data-dir": { type: "string", describe: "The node's data directory (overrides the config, as verity-server's flag does)" },
      endpoints: { type: "string", default: process.env.VERITY_ENDPOINTS, defaultDescription: "server.bind_address of the config, else 127.0.0.1:7000", describe: "Client addresses of the nodes to ask, comma-separated (env VERITY_ENDPOINTS)" },
      ...tlsOptions,
      ...jsonOption,
    })
      .example("$0 doctor --config /etc/verity/config.toml", "On a node: everything the troubleshooting guide checks")
      .example("$0 doctor --config /etc/verity/config.toml --endpoints node1:7000,node2:7000,node3:7000 --tls-cert admin.crt --tls-key admin.key --tls-ca ca.crt",
        "Ask every member, with an admin certificate")
      .example("$0 doctor --config /etc/verity/config.toml --json | jq '.checks[] | select(.status != \"PASS\")'", "Only what needs attention"),
    (args: unknown) => {
      const a = args as DoctorArgs;
      return runAdmin(a.json, async () => {
        const results = await runDoctor(a);
        const ok = results.every((r) => r.status !== "FAIL");
        if (a.json) {
          const count = (s: CheckStatus): number => results.filter((r) => r.status === s).length;
          printJson({ ok, checks: results, counts: { pass: count("PASS"), warn: count("WARN"), fail: count("FAIL") } });
        } else printReport(results);
        return ok ? ExitCode.OK : ExitCode.FAILED;
      });
    },
  );
}
