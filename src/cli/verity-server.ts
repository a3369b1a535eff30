/**
 * verity-server: one VerityDB node. This build opens the data directory, recovers the log (cutting
 * a torn tail, refusing corruption), records the node's identity in meta/state.json, and holds the
 * directory until SIGINT or SIGTERM. The network services join in later builds.
 */

import { resolve } from "node:path";
import { hideBin } from "yargs/helpers";
import { DataDir } from "../log/data-dir.js";
import { LOG_LEVELS, createLogger, type LogLevel } from "../logger.js";
import { ExitCode, cli, reportError, run } from "./common.js";

const NAME = "verity-server";

export async function main(argv: string[]): Promise<void> {
  const args = await cli(NAME, argv, "Run one VerityDB node. With no options: a single-node cluster with data in ./data.")
    .env("VERITY")
    .options({
      "data-dir": { type: "string", default: "./data", describe: "Data directory (env VERITY_DATA_DIR)" },
      "node-id": { type: "number", describe: "Node identifier (env VERITY_NODE_ID); defaults to the one stored in the data dir, or 1" },
      "log-level": { type: "string", choices: LOG_LEVELS, default: "info", describe: "Log level (env VERITY_LOG_LEVEL)" },
    })
    .check((a) => {
      if (a["node-id"] !== undefined && (!Number.isSafeInteger(a["node-id"]) || a["node-id"] < 1)) {
        throw new Error("--node-id must be a positive integer");
      }
      return true;
    })
    .parseAsync();
  const logger = createLogger({ level: args["log-level"] as LogLevel, target: "verity_server" });
  await run(NAME, async () => {
    const dataDir = resolve(args["data-dir"]);
    let dir: DataDir;
    try {
      dir = await DataDir.open({ path: dataDir, nodeId: args["node-id"], logger: logger.child({ target: "verity_log" }) });
    } catch (e) {
      logger.error({ data_dir: dataDir, error: e instanceof Error ? e.message : String(e) }, "cannot open the data directory");
      return reportError(NAME, e);
    }
    const log = dir.log;
    logger.info(
      {
        node_id: dir.meta.nodeId, cluster_id: dir.meta.clusterId, data_dir: dataDir, view: dir.meta.term,
        first_index: log.firstIndex, last_index: log.lastIndex, segments: log.segments().length,
        torn_bytes_cut: log.recovery.tornBytesCut, sync_mode: log.mode,
      },
      "data directory open; log recovered",
    );
    // Signal listeners alone do not keep Node's event loop running; this handle does, until a signal.
    const keepAlive = setInterval(() => {}, 2 ** 31 - 1);
    const signal = await new Promise<string>((done) => {
      process.once("SIGINT", () => done("SIGINT"));
      process.once("SIGTERM", () => done("SIGTERM"));
    });
    clearInterval(keepAlive);
    logger.info({ signal }, "shutting down");
    await dir.close();
    logger.info({}, "stopped");
    return ExitCode.OK;
  });
}

await main(hideBin(process.argv));
