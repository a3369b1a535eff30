/** `npm run bench -- [log] [--data-dir D] [--seconds S]`: the benchmarks and their report. */

import { join } from "node:path";
import { hideBin } from "yargs/helpers";
import yargs from "yargs";
import { logBench } from "./log-bench.js";

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
      }),
    async (a) => {
      await logBench({ dataDir: a["data-dir"], seconds: a.seconds, resultsDir: join(root, "bench", "results") });
    },
  )
  .strict()
  .help()
  .parseAsync();
