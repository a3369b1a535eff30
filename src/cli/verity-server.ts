/**
 * verity-server: one VerityDB node. This build loads and checks the settings (flags, VERITY_*
 * environment variables, the TOML file, defaults: src/server/settings.ts), opens the data
 * directory, recovers the log (cutting a torn tail, refusing corruption), records the node's
 * identity in meta/state.json, and runs the node (src/server/node.ts): Raft with its peers on the
 * cluster port; the Client and Admin gRPC APIs with HTTP health and status on the client port;
 * /metrics on the metrics address; until SIGINT or SIGTERM (a leader hands over leadership first).
 */

import { rmSync } from "node:fs";
import { join } from "node:path";
import { hideBin } from "yargs/helpers";
import { DATA_DIR_SUBDIRS, DataDir } from "../log/data-dir.js";
import { startTracing, stopTracing, tracesUrl } from "../server/tracing.js";
import { VerityNode, WrongNewClusterError } from "../server/node.js";
import { createRootLogger, forTarget } from "../logger.js";
import {
  SETTING_FLAGS, loadSettings, refusalsOfThisBuild, settingsNotDefault, type Settings,
} from "../server/settings.js";
import { formatHostPort, formatSize } from "../server/setting-values.js";
import { openNodeKeyProvider, type NodeKeyProvider } from "../server/encryption-settings.js";
import { ExitCode, cli, reportError, run } from "./common.js";

const NAME = "verity-server";

const DESCRIPTION =
  "Run one VerityDB node. With no options: a single-node cluster with data in ./data, on loopback.\n" +
  "Settings come from, strongest first: flags, VERITY_* environment variables, the --config file,\n" +
  "built-in defaults (docs/configuration.md). Port 0 picks a free port; the chosen ports are logged.\n" +
  "The client port serves the gRPC Client and Admin APIs, grpc.health.v1, and HTTP /health/live,\n" +
  "/health/ready and /status; the cluster port serves Raft; the metrics address serves /metrics.";


export async function main(argv: string[]): Promise<void> {
  const args = await cli(NAME, argv, DESCRIPTION)
    .options({
      config: { type: "string", describe: "Configuration file path (TOML)" },
      "node-id": { type: "string", describe: "Node identifier (overrides config) [env VERITY_NODE_ID; default: the id stored in the data dir, or 1]" },
      bind: { type: "string", describe: `Bind address host:port for client traffic: the gRPC API and HTTP /health, /status (overrides config) [env VERITY_BIND_ADDRESS; default 127.0.0.1:7000]` },
      "data-dir": { type: "string", describe: "Data directory (overrides config; may be relative here) [env VERITY_DATA_DIR; default ./data]" },
      "cluster-peers": { type: "string", describe: `Comma-separated peer addresses: the other nodes' cluster host:port, e.g. "node2:7001,node3:7001" [env VERITY_CLUSTER_PEERS]` },
      "log-level": { type: "string", describe: "Log level: trace, debug, info, warn, error [env VERITY_LOG_LEVEL; default info]" },
      "cluster-address": { type: "string", describe: `Cluster address host:port for peer (Raft) traffic [env VERITY_SERVER_CLUSTER_ADDRESS; default 127.0.0.1:7001]` },
      "metrics-address": { type: "string", describe: `Address host:port for Prometheus GET /metrics [env VERITY_TELEMETRY_METRICS_ADDRESS; default 127.0.0.1:9090]` },
      join: { type: "boolean", describe: "With a new data directory: join the existing cluster of --cluster-peers (an admin then adds this node with AddLearner) instead of forming a new one [env VERITY_JOIN]" },
      "force-recover": {
        type: "boolean",
        describe: "Majority failure only (docs/operations): continue the cluster from this node alone, the survivor with the highest commit index; the other members rejoin as learners and become voters again once caught up. Flag only",
      },
      insecure: { type: "boolean", describe: "Allow plaintext (no TLS) on a non-loopback address [env VERITY_INSECURE]" },
      validate: { type: "boolean", describe: "Check the configuration and exit: 0 with a summary, or 1 with every problem, one per line. Opens nothing" },
    })
    .check((a) => {
      if (Array.isArray(a.config)) throw new Error("--config was given more than once: give one file");
      return true;
    })
    .parseAsync();

  const flags: Record<string, unknown> = {};
  for (const flag of SETTING_FLAGS) flags[flag] = (args as Record<string, unknown>)[flag];
  const loaded = loadSettings({
    flags,
    env: process.env,
    configFile: args.config === undefined ? undefined : { path: args.config },
    cwd: process.cwd(),
  });
  for (const warning of loaded.warnings) process.stderr.write(`${NAME}: warning: ${warning}\n`);
  const problems = loaded.ok ? refusalsOfThisBuild(loaded.settings) : loaded.problems;
  if (!loaded.ok || problems.length > 0) {
    for (const problem of problems) process.stderr.write(`${NAME}: ${problem}\n`);
    const what = args.validate === true ? "configuration invalid" : "refusing to start";
    const file = args.config === undefined ? "" : ` (config file ${args.config})`;
    process.stderr.write(`${NAME}: ${what}${file}: ${problems.length} problem${problems.length === 1 ? "" : "s"}; see docs/configuration.md\n`);
    process.exitCode = ExitCode.FAILED;
    return;
  }
  const settings = loaded.settings;
  if (args.validate === true) {
    process.stdout.write(summary(settings));
    process.exitCode = ExitCode.OK;
    return;
  }
  await serve(settings);
}

/** `--validate`'s report: "configuration OK" and what this node would run with. */
function summary(s: Settings): string {
  const peers = s.clusterPeers.length === 0
    ? "none: a single-node cluster"
    : `${s.clusterPeers.map(formatHostPort).join(", ")} (${s.clusterPeers.length + 1} nodes)`;
  const tls = s.security.tlsCert === undefined
    ? `off${s.insecure ? " (--insecure: plaintext allowed off loopback)" : " (plaintext, loopback only)"}`
    : `on${s.security.requireClientCert ? ", client certificates required" : ""}`;
  const changed = Object.entries(settingsNotDefault(s)).map(([path, from]) => `${path} (${from})`);
  const lines = [
    "configuration OK",
    `  config file     ${s.configPath ?? "none (defaults, environment and flags only)"}`,
    `  node            node_id ${s.server.nodeId ?? "(the one stored in the data directory, or 1)"}; cluster_name ${s.server.clusterName}`,
    `  data_dir        ${s.storage.dataDir} (segment_size ${formatSize(s.storage.segmentBytes)}, sync_mode ${s.storage.syncMode})`,
    `  addresses       client ${formatHostPort(s.server.bindAddress)}, cluster ${formatHostPort(s.server.clusterAddress)}, metrics ${formatHostPort(s.telemetry.metricsAddress)}`,
    `  cluster_peers   ${peers}`,
    `  tls             ${tls}`,
    `  log_level       ${s.logLevel}`,
    `  not default     ${changed.length === 0 ? "nothing" : changed.join(", ")}`,
  ];
  return `${lines.join("\n")}\n`;
}

/**
 * Empties a data directory created by this start (an empty log, no cluster formed): its meta, log
 * header, event index and key sidecars all carry the cluster id it chose. The LOCK file stays.
 */
function clearNewDataDir(dataDir: string): void {
  for (const sub of [...DATA_DIR_SUBDIRS, "state"]) rmSync(join(dataDir, sub), { recursive: true, force: true });
}

/** Opens the data directory with the settings this build uses, and holds it until a signal. */
async function serve(settings: Settings): Promise<void> {
  const root = createRootLogger({ level: settings.logLevel });
  const logger = forTarget(root, "verity_server");
  await run(NAME, async () => {
    const dataDir = settings.storage.dataDir;
    // Listen for signals from the start: a SIGTERM while joining or forming a cluster still stops cleanly.
    const starting = new AbortController();
    const signalled = new Promise<string>((done) => {
      const on = (signal: string) => () => {
        starting.abort();
        done(signal);
      };
      process.once("SIGINT", on("SIGINT"));
      process.once("SIGTERM", on("SIGTERM"));
    });
    let dir: DataDir;
    let keys: NodeKeyProvider | undefined;
    let node: VerityNode;
    // Bounded: a new data directory is opened again at most once, with the cluster id its peers hold.
    for (let attempt = 0; ; attempt++) {
      try {
        // The key provider first: a node that cannot use its key must not open (or serve) encrypted data.
        keys = await openNodeKeyProvider(settings, logger);
        const clusterId = await VerityNode.clusterIdForDataDir(settings, starting.signal, logger);
        dir = await DataDir.open({
          path: dataDir,
          nodeId: settings.server.nodeId,
          clusterId,
          segmentBytes: settings.storage.segmentBytes,
          recordBytesMax: settings.limits.recordBytesMax,
          syncMode: settings.storage.syncMode,
          logger: forTarget(root, "verity_log"),
          keyProvider: keys?.provider,
        });
      } catch (e) {
        await keys?.provider.close().catch(() => {});
        if (starting.signal.aborted) return ExitCode.OK;
        logger.error({ data_dir: dataDir, error: e instanceof Error ? e.message : String(e) }, "cannot open the data directory");
        return reportError(NAME, e);
      }
      const log = dir.log;
      logger.info(
        {
          node_id: dir.meta.nodeId, cluster_id: dir.meta.clusterId, data_dir: dataDir, view: dir.meta.term,
          first_index: log.firstIndex, last_index: log.lastIndex, segments: log.segments().length,
          torn_bytes_cut: log.recovery.tornBytesCut, sync_mode: log.mode,
          encryption: keys === undefined ? "off" : keys.opened.description.provider,
          unencrypted_segments: log.segments().filter((s) => s.keyId === undefined).length,
          config_file: settings.configPath ?? null, settings: settings.shown, settings_from: settingsNotDefault(settings),
        },
        "data directory open; log recovered",
      );
      const telemetry = settings.telemetry;
      if (attempt === 0 && telemetry.tracingEnabled && telemetry.tracingEndpoint !== undefined) {
        await startTracing(telemetry.tracingEndpoint, { "verity.node_id": dir.meta.nodeId, "verity.cluster_id": dir.meta.clusterId });
        logger.info({ endpoint: tracesUrl(telemetry.tracingEndpoint) }, "exporting OpenTelemetry spans over OTLP/HTTP");
      }
      try {
        node = await VerityNode.start(settings, root, dir, starting.signal);
        break;
      } catch (e) {
        const empty = dir.log.lastIndex === 0;
        await dir.close().catch(() => {});
        await keys?.provider.close().catch(() => {});
        if (starting.signal.aborted) {
          logger.info({ reason: e instanceof Error ? e.message : String(e) }, "stopped while starting");
          return ExitCode.OK;
        }
        if (e instanceof WrongNewClusterError && empty && attempt === 0) {
          // Nothing in it but what this start wrote: forget it and open it again in the peers' cluster.
          logger.warn({ chosen_cluster_id: e.chosen, cluster_id: e.clusterId, peer: e.peer }, e.message);
          clearNewDataDir(dataDir);
          continue;
        }
        logger.error({ error: e instanceof Error ? e.message : String(e) }, "cannot start the node");
        return reportError(NAME, e);
      }
    }
    const fatal = new Promise<string>((done) => {
      node.onFatal = () => done("fatal");
    });
    const signal = await Promise.race([signalled, fatal]);
    logger.info({ signal }, "shutting down");
    await node.stop().catch(() => {});
    await keys?.provider.close().catch(() => {});
    await stopTracing().catch((e: unknown) => logger.warn({ error: e instanceof Error ? e.message : String(e) }, "could not send the last spans to the collector"));
    logger.info({}, "stopped");
    return signal === "fatal" ? ExitCode.FAILED : ExitCode.OK;
  });
}

await main(hideBin(process.argv));
