/**
 * `npm run bench -- [log] [--data-dir D] [--seconds S] [--encryption local]` and
 * `npm run bench -- cluster [--seconds S] [--clients N] [--skip-etcd]` and
 * `npm run bench -- projections [--events N]`: the benchmarks and their report.
 */

import { join, resolve } from "node:path";
import { hideBin } from "yargs/helpers";
import yargs from "yargs";
import { logBench, logEncryptionBench } from "./log-bench.js";
import { clusterBench } from "./cluster-bench.js";
import { projectionsBench } from "./projections-bench.js";

const root = join(import.meta.dirname, "..", "..");

await yargs(hideBin(process.argv))
  .scriptName("npm run bench --")
  .command(
    ["log", "$0"],
    "Log append throughput and latency versus this disk's raw fdatasync limit",
    (y) =>
      y.options({
        "data-dir": { type: "string", describe: "Keep the written log in this data directory (for log verify)" },
        seconds: { type: "number", default: 3, describe: "Seconds per case" },
        encryption: { choices: ["none", "local"] as const, default: "none" as const, describe: "local: run plaintext and encrypted (local key file) cases side by side and report the ratio" },
      }),
    async (a) => {
      if (a.encryption === "local") await logEncryptionBench({ seconds: a.seconds, resultsDir: join(root, "bench", "results") });
      else await logBench({ dataDir: a["data-dir"], seconds: a.seconds, resultsDir: join(root, "bench", "results") });
    },
  )
  .command(
    "cluster",
    "3-node cluster append throughput and latency (fsync on, loopback) versus a 3-member etcd cluster",
    (y) =>
      y.options({
        seconds: { type: "number", default: 10, describe: "Measured seconds per phase (each after a 1 s warm-up)" },
        clients: { type: "number", default: 64, describe: "Concurrent client loops" },
        "skip-etcd": { type: "boolean", default: false, describe: "Measure VerityDB only (etcd figures and the ratio are null)" },
        "client-mode": { choices: ["shared", "per-loop"] as const, default: "shared" as const, describe: "One VerityClient for all loops, or one per loop (grpc-js still shares one connection between them)" },
        "etcd-endpoints": { choices: ["leader", "all"] as const, default: "leader" as const, describe: "Give the etcd client the leader's URL only, or all three" },
        "cpu-prof-dir": { type: "string", describe: "Run the VerityDB nodes with --cpu-prof, write their profiles here and summarize them" },
      })
        .check((a) => {
          if (!(Number.isInteger(a.clients) && a.clients >= 1 && a.clients <= 1024)) throw new Error(`--clients ${a.clients}: give a whole number from 1 to 1024`);
          if (!(a.seconds > 0 && a.seconds <= 3600)) throw new Error(`--seconds ${a.seconds}: give a number of seconds above 0, at most 3600`);
          return true;
        }),
    async (a) => {
      try {
        await clusterBench({
          seconds: a.seconds, clients: a.clients, skipEtcd: a["skip-etcd"], resultsDir: join(root, "bench", "results"),
          clientMode: a["client-mode"], etcdEndpoints: a["etcd-endpoints"],
          cpuProfileDir: a["cpu-prof-dir"] === undefined ? undefined : resolve(a["cpu-prof-dir"]),
        });
      } catch (e) {
        // A failed run is not a usage error: the reason, without the option list.
        process.stderr.write(`cluster benchmark failed: ${e instanceof Error ? e.message : String(e)}\n`);
        process.exitCode = 1;
      }
    },
  )
  .command(
    "projections",
    "Projection apply throughput (2 handlers, 3-node cluster) versus direct SQLite, and query latency during appends",
    (y) =>
      y.options({
        events: { type: "number", default: 100_000, describe: "Events to load and project (the aggregate runs over this many rows)" },
        queries: { type: "number", default: 1000, describe: "Point lookups (each run linearizable and local)" },
        aggregates: { type: "number", default: 50, describe: "Aggregate queries over every row" },
        writers: { type: "number", default: 8, describe: "Concurrent writers of 100-event batches while loading" },
      }).check((a) => {
        if (!(Number.isInteger(a.events) && a.events >= 1000 && a.events <= 10_000_000)) throw new Error(`--events ${a.events}: give 1000 to 10000000`);
        return true;
      }),
    async (a) => {
      try {
        await projectionsBench({ events: a.events, queries: a.queries, aggregates: a.aggregates, writers: a.writers, resultsDir: join(root, "bench", "results") });
      } catch (e) {
        process.stderr.write(`projections benchmark failed: ${e instanceof Error ? e.message : String(e)}\n`);
        process.exitCode = 1;
      }
    },
  )
  .strict()
  .help()
  .parseAsync();
