/**
 * `verity-admin diagnostics export --output F.tar.gz`: a gzip'd tar of what support asks for first.
 *
 * - versions.json: VerityDB, Node.js and the operating system;
 * - cluster-status.json: ClusterStatus from every endpoint (Admin API);
 * - config.redacted.toml, settings.json, environment.json: this node's config file, the settings it
 *   loads to, and the VERITY_* variables, with secrets redacted (redact.ts; key files are never read);
 * - logs/<file>.tail.txt: the last lines of `--log-file`, redacted;
 * - metrics.txt: the node's /metrics, as `verity-admin metrics` reads it;
 * - log-verify.json: `verity-admin log verify` of `--data-dir`;
 * - summary.txt: what was collected and what was not, with the reason.
 *
 * An item that cannot be collected is listed with its reason; the bundle is still written. Exit 0
 * once it is written, 1 when it cannot be.
 */

import { hostname, platform, arch, release, type as osType } from "node:os";
import { access, open, rename, rm, stat } from "node:fs/promises";
import { constants as fsConstants } from "node:fs";
import { basename, dirname, join } from "node:path";
import { parse as parseToml, stringify as stringifyToml } from "smol-toml";
import type { Argv } from "yargs";
import { AdminApi, type ClientTlsFiles } from "../client/admin-client.js";
import { ErrorCode, FailedPreconditionError, VerityError } from "../errors.js";
import { CONFIG_FILE_BYTES_MAX } from "../limits.js";
import { NodeFileSystem } from "../log/node-fs.js";
import { verifyLog } from "../log/offline.js";
import { settingsNotDefault, type Settings, type SettingsResult } from "../server/settings.js";
import { formatHostPort } from "../server/setting-values.js";
import { fetchMetricsText, jsonOption, tlsOptions, METRICS_ENDPOINT_DEFAULT } from "./admin-connection.js";
import { loadNodeSettings, reachable, resolveEndpoints, resolveTls, serverEnvironment } from "./admin-doctor.js";
import { failureOf, printJson, runAdmin } from "./admin-output.js";
import { ExitCode, VERSION, formatBytes } from "./common.js";
import { redactLogLine, redactTree, redactedEnvironment } from "./redact.js";
import { TarWriter } from "./tar-writer.js";

/** Lines of --log-file collected by default, and at most. */
export const LOG_LINES_DEFAULT = 1_000;
export const LOG_LINES_MAX = 100_000;
/** Bytes read from the end of --log-file at most (the lines asked for must fit in them). */
export const LOG_TAIL_BYTES_MAX = 32 * 1024 * 1024;

export interface DiagnosticsArgs {
  output: string;
  config?: string;
  "data-dir"?: string;
  "log-file"?: string;
  "log-lines": number;
  endpoints?: string;
  "metrics-endpoint"?: string;
  "tls-ca"?: string;
  "tls-cert"?: string;
  "tls-key"?: string;
  json: boolean;
}

/** What a bundle holds so far, and what could not go into it. */
class Bundle {
  readonly files: Array<{ name: string; content: Buffer }> = [];
  readonly missing: Array<{ item: string; reason: string }> = [];

  add(name: string, content: string | object): void {
    const text = typeof content === "string" ? content : JSON.stringify(content, null, 2) + "\n";
    this.files.push({ name, content: Buffer.from(text, "utf8") });
  }

  miss(item: string, reason: string): void {
    this.missing.push({ item, reason });
  }
}

/** Where each item comes from, decided once from the flags and the config. */
interface Sources {
  loaded: SettingsResult;
  settings: Settings | undefined;
  endpoints: string[];
  tls: ClientTlsFiles | undefined;
  metricsEndpoint: string;
  dataDir: string | undefined;
}

function sourcesOf(a: DiagnosticsArgs): Sources {
  const loaded = loadNodeSettings(a);
  const settings = loaded.ok ? loaded.settings : undefined;
  // Without --config the settings are the defaults: their relative ./data says nothing about where the node keeps its data.
  const fromConfig = a.config === undefined ? undefined : settings;
  return {
    loaded,
    settings,
    endpoints: resolveEndpoints(a.endpoints, fromConfig).endpoints,
    tls: resolveTls(a, fromConfig),
    metricsEndpoint: a["metrics-endpoint"] ?? (fromConfig === undefined ? METRICS_ENDPOINT_DEFAULT : formatHostPort(reachable(fromConfig.telemetry.metricsAddress))),
    dataDir: a["data-dir"] ?? fromConfig?.storage.dataDir,
  };
}

function collectVersions(bundle: Bundle): void {
  bundle.add("versions.json", {
    verity: VERSION, node: process.version, os: { type: osType(), release: release(), platform: platform(), arch: arch(), hostname: hostname() },
    collected_at: new Date().toISOString(),
  });
}

async function collectClusterStatus(bundle: Bundle, sources: Sources): Promise<void> {
  const answers = await Promise.all(sources.endpoints.map(async (endpoint) => {
    try {
      const { response } = await new AdminApi({ endpoints: [endpoint], tls: sources.tls }).call("clusterStatus", {});
      return { endpoint, ...response };
    } catch (e) {
      const failure = failureOf(e);
      return { endpoint, error: { code: failure.code, message: failure.message } };
    }
  }));
  const failed = answers.flatMap((x) => ("error" in x && x.error !== undefined ? [{ endpoint: x.endpoint, error: x.error }] : []));
  if (failed.length === answers.length) {
    bundle.miss("cluster status", `no endpoint answered (${failed.map((x) => x.error.message).join("; ")}); start the node, or give --endpoints and an admin certificate`);
    return;
  }
  bundle.add("cluster-status.json", { endpoints: answers });
  if (failed.length > 0) bundle.miss("cluster status of some endpoints", `${failed.map((x) => x.endpoint).join(", ")} did not answer (their errors are in cluster-status.json)`);
}

async function collectConfig(bundle: Bundle, a: DiagnosticsArgs, sources: Sources): Promise<void> {
  if (a.config === undefined) bundle.miss("config file", "no --config given: give the file the node runs with (e.g. --config /etc/verity/config.toml)");
  else {
    try {
      const size = (await stat(a.config)).size;
      if (size > CONFIG_FILE_BYTES_MAX) throw new Error(`the file is ${size} bytes; a config file is at most ${CONFIG_FILE_BYTES_MAX}`);
      const handle = await open(a.config, "r");
      const text = await handle.readFile("utf8").finally(() => handle.close());
      const table = redactTree(parseToml(text, { maxDepth: 32 })) as Record<string, unknown>;
      bundle.add("config.redacted.toml", `# ${a.config}, secrets redacted by verity-admin diagnostics export\n${stringifyToml(table)}\n`);
    } catch (e) {
      // The text itself is never copied: it may hold secrets that only a parsed file can be cleaned of.
      bundle.miss("config file", `${a.config} could not be read as TOML (${e instanceof Error ? e.message.split("\n")[0] : String(e)}); not included, as its text may hold secrets`);
    }
  }
  const loaded = sources.loaded;
  bundle.add("settings.json", loaded.ok
    ? { config_file: loaded.settings.configPath ?? null, settings: redactTree(loaded.settings.shown), not_default: settingsNotDefault(loaded.settings), warnings: loaded.warnings.map(redactLogLine) }
    : { config_file: a.config ?? null, problems: loaded.problems.map(redactLogLine), warnings: loaded.warnings.map(redactLogLine) });
  bundle.add("environment.json", redactedEnvironment(serverEnvironment()));
}

/** The last `count` lines of a file, read from at most LOG_TAIL_BYTES_MAX bytes at its end. */
export async function tailLines(path: string, count: number): Promise<{ lines: string[]; cut: boolean }> {
  const handle = await open(path, "r");
  try {
    const size = (await handle.stat()).size;
    const start = Math.max(0, size - LOG_TAIL_BYTES_MAX);
    const buffer = Buffer.alloc(size - start);
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, start);
    const lines = buffer.subarray(0, bytesRead).toString("utf8").split("\n");
    if (lines.at(-1) === "") lines.pop();
    // A window that starts inside the file starts inside a line.
    if (start > 0) lines.shift();
    return { lines: lines.slice(-count), cut: start > 0 && lines.length < count };
  } finally {
    await handle.close();
  }
}

async function collectLogs(bundle: Bundle, a: DiagnosticsArgs): Promise<void> {
  const file = a["log-file"];
  if (file === undefined) {
    bundle.miss("logs", "no --log-file given: save the node's log first (journalctl -u verity -n 1000 > verity.log) and pass --log-file verity.log");
    return;
  }
  try {
    const { lines, cut } = await tailLines(file, a["log-lines"]);
    const note = cut ? `# only the last ${LOG_TAIL_BYTES_MAX} bytes of ${file} were read\n` : "";
    bundle.add(`logs/${basename(file)}.tail.txt`, `${note}${lines.map(redactLogLine).join("\n")}\n`);
  } catch (e) {
    bundle.miss("logs", `cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
}

async function collectMetrics(bundle: Bundle, sources: Sources): Promise<void> {
  try {
    bundle.add("metrics.txt", await fetchMetricsText(sources.metricsEndpoint));
  } catch (e) {
    bundle.miss("metrics", failureOf(e).message);
  }
}

async function collectLogVerify(bundle: Bundle, sources: Sources): Promise<void> {
  const dataDir = sources.dataDir;
  if (dataDir === undefined) {
    bundle.miss("log verify", "no --data-dir given (nor --config naming one): give the node's data directory");
    return;
  }
  const logDir = join(dataDir, "log");
  if ((await stat(logDir).catch(() => undefined)) === undefined) {
    bundle.miss("log verify", `${logDir} does not exist: is ${dataDir} the node's data directory?`);
    return;
  }
  try {
    const report = await verifyLog(new NodeFileSystem(), logDir);
    const damaged = report.problems.filter((p) => p.severity === "corruption").length;
    bundle.add("log-verify.json", {
      summary: `${report.ok ? "OK" : `FAILED: ${damaged} damaged places`}: ${report.segments.length} segments, ${report.records} records, ` +
        `${report.firstIndex === undefined ? "empty log" : `first index ${report.firstIndex}, last index ${report.lastIndex}`}`,
      ...report,
    });
  } catch (e) {
    bundle.miss("log verify", failureOf(e).message);
  }
}

/** Refuses an --output that cannot be written before anything is collected. */
async function checkOutput(path: string): Promise<void> {
  const dir = dirname(path);
  const st = await stat(dir).catch(() => undefined);
  if (st === undefined || !st.isDirectory()) throw new FailedPreconditionError(`--output ${path}: the directory ${dir} does not exist; create it or choose another path`);
  if ((await stat(path).catch(() => undefined))?.isDirectory() === true) throw new FailedPreconditionError(`--output ${path} is a directory; give a file name, like ${join(path, "verity-diag.tar.gz")}`);
  try {
    await access(dir, fsConstants.W_OK);
  } catch (e) {
    throw new FailedPreconditionError(`--output ${path}: cannot write in ${dir} (${(e as NodeJS.ErrnoException).code ?? String(e)}); choose a directory this user may write to, like /tmp`);
  }
}

/** Writes the archive next to its final name, then renames it: no half-written bundle is ever at `path`. */
async function writeBundle(path: string, bytes: Buffer): Promise<void> {
  const temporary = join(dirname(path), `.${basename(path)}.${process.pid}.tmp`);
  try {
    // 0600: the bundle describes the cluster; it is for the operator and support only.
    const handle = await open(temporary, "w", 0o600);
    try {
      await handle.writeFile(bytes);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temporary, path);
  } catch (e) {
    await rm(temporary, { force: true }).catch(() => {});
    throw new VerityError(ErrorCode.IO_ERROR, `cannot write the bundle to ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}; check the free space and permissions there`, { cause: e });
  }
}

function summaryText(bundle: Bundle, output: string): string {
  return [
    `verity-admin diagnostics export, ${new Date().toISOString()}, verity ${VERSION}; bundle ${output}`,
    "collected:",
    ...bundle.files.map((f) => `  ${f.name} (${f.content.length} bytes)`),
    "not collected:",
    ...(bundle.missing.length === 0 ? ["  nothing: every item was collected"] : bundle.missing.map((m) => `  ${m.item}: ${m.reason}`)),
  ].join("\n") + "\n";
}

export async function exportDiagnostics(a: DiagnosticsArgs): Promise<number> {
  await checkOutput(a.output);
  const sources = sourcesOf(a);
  const bundle = new Bundle();
  const steps: Array<[string, () => Promise<void> | void]> = [
    ["versions", () => collectVersions(bundle)],
    [`cluster status from ${sources.endpoints.join(", ")}`, () => collectClusterStatus(bundle, sources)],
    ["config, settings and environment (redacted)", () => collectConfig(bundle, a, sources)],
    [`logs${a["log-file"] === undefined ? "" : ` from ${a["log-file"]}`}`, () => collectLogs(bundle, a)],
    [`metrics from ${sources.metricsEndpoint}`, () => collectMetrics(bundle, sources)],
    [`log verify${sources.dataDir === undefined ? "" : ` of ${sources.dataDir}`}`, () => collectLogVerify(bundle, sources)],
  ];
  const progress = process.stdout.isTTY !== true;
  for (const [i, [what, step]] of steps.entries()) {
    if (progress) process.stderr.write(`diagnostics: [${i + 1}/${steps.length}] ${what}\n`);
    await step();
  }
  const stamp = new Date().toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z");
  const root = `verity-diagnostics-${stamp}`;
  bundle.add("summary.txt", summaryText(bundle, a.output));
  const tar = new TarWriter();
  tar.addDirectory(root, { mode: 0o700 });
  const directories = new Set<string>();
  for (const f of bundle.files) {
    const dir = dirname(f.name);
    if (dir !== "." && !directories.has(dir)) {
      directories.add(dir);
      tar.addDirectory(`${root}/${dir}`, { mode: 0o700 });
    }
    tar.addFile(`${root}/${f.name}`, f.content, { mode: 0o600 });
  }
  const gz = tar.finishGzip();
  await writeBundle(a.output, gz);
  report(a, bundle, root, gz.length);
  return ExitCode.OK;
}

function report(a: DiagnosticsArgs, bundle: Bundle, root: string, bytes: number): void {
  if (a.json) {
    printJson({
      output: a.output, bytes, directory: root,
      collected: bundle.files.map((f) => ({ file: `${root}/${f.name}`, bytes: f.content.length })),
      not_collected: bundle.missing,
    });
    return;
  }
  const width = Math.max(...bundle.files.map((f) => f.name.length));
  process.stdout.write([
    `wrote ${a.output} (${formatBytes(bytes)}, a gzip'd tar; extract with: tar -xzf ${a.output})`,
    `collected, in ${root}/:`,
    ...bundle.files.map((f) => `  ${f.name.padEnd(width)}  ${formatBytes(f.content.length).padStart(10)}`),
    "not collected:",
    ...(bundle.missing.length === 0 ? ["  nothing: every item was collected"] : bundle.missing.map((m) => `  ${m.item}: ${m.reason}`)),
  ].join("\n") + "\n");
}

export function addDiagnosticsCommands(y: Argv): Argv {
  return y.command("diagnostics", "Bundles of what support needs", (c) =>
    c.command("export", "Write a .tar.gz of every member's status, this node's config (secrets redacted), recent logs, metrics, a log verify summary and versions",
      (s) => s.options({
        output: { type: "string", demandOption: true, describe: "Where to write the bundle (a .tar.gz, mode 0600)" },
        config: { type: "string", describe: "The node's configuration file: included with secrets redacted; its addresses and data_dir are used" },
        "data-dir": { type: "string", describe: "The node's data directory: its log is verified (default: the config's data_dir)" },
        "log-file": { type: "string", describe: "The node's log file (e.g. saved from journalctl): its last --log-lines lines are included, redacted" },
        "log-lines": { type: "number", default: LOG_LINES_DEFAULT, describe: `How many lines of --log-file (at most ${LOG_LINES_MAX})` },
        endpoints: { type: "string", default: process.env.VERITY_ENDPOINTS, defaultDescription: "server.bind_address of the config, else 127.0.0.1:7000", describe: "Client addresses of the nodes to ask, comma-separated (env VERITY_ENDPOINTS)" },
        "metrics-endpoint": { type: "string", default: process.env.VERITY_METRICS_ENDPOINT, defaultDescription: "telemetry.metrics_address of the config, else 127.0.0.1:9090", describe: "The node's metrics address (env VERITY_METRICS_ENDPOINT)" },
        ...tlsOptions,
        ...jsonOption,
      })
        .check((a) => {
          if (!Number.isSafeInteger(a["log-lines"]) || a["log-lines"] < 1 || a["log-lines"] > LOG_LINES_MAX) throw new Error(`--log-lines must be an integer from 1 to ${LOG_LINES_MAX}`);
          return true;
        })
        .example("$0 diagnostics export --output /tmp/verity-diag.tar.gz", "What can be collected with the defaults")
        .example("journalctl -u verity -n 5000 > /tmp/verity.log && $0 diagnostics export --output /tmp/verity-diag.tar.gz --config /etc/verity/config.toml --log-file /tmp/verity.log --log-lines 5000",
          "Everything, on a node"),
      (args: unknown) => {
        const a = args as DiagnosticsArgs;
        return runAdmin(a.json, () => exportDiagnostics(a));
      })
      .example("$0 diagnostics export --output /tmp/verity-diag.tar.gz", "Export a diagnostics bundle")
      .demandCommand(1, "diagnostics needs a subcommand: export"));
}
