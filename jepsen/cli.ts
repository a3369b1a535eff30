/**
 * `npm run jepsen -- [--nodes 3|5] [--nemesis kill,pause,partition,lose-unsynced,corrupt,membership,all]
 *   [--time-limit S] [--rate N] [--seed S] [--json] [--out DIR] [--network auto|netns|loopback]`
 *
 * Runs real verity-server processes under faults and checks the history (docs/jepsen.md). Prints a
 * verdict (or, with --json, one JSON object) and exits 0 when the history is valid, 1 when the
 * checker found anomalies or the run could not be completed, 2 on bad usage.
 */

import { pathToFileURL } from "node:url";
import { CLUSTER_SIZES, RATE_DEFAULT, RATE_MAX } from "./constants.js";
import { NEMESIS_NAMES, type NemesisName } from "./nemesis.js";
import { runJepsen, type RunOptions } from "./run.js";
import { ANOMALY_KEYS } from "./checker.js";

/** The longest run accepted (a bound; 30-minute runs are the documented long runs). */
const TIME_LIMIT_S_MAX = 24 * 60 * 60;
const TIME_LIMIT_S_DEFAULT = 60;

export const USAGE = `usage: npm run jepsen -- [options]

  --nodes 3|5              cluster size (default 3)
  --nemesis LIST           comma-separated: ${NEMESIS_NAMES.join(", ")}, or all (default: none)
  --time-limit S           seconds of workload under faults (default ${TIME_LIMIT_S_DEFAULT})
  --rate N                 client operations per second, all clients together (default ${RATE_DEFAULT})
  --seed S                 the seed of the harness's random choices (default: from the clock)
  --json                   print one JSON object: valid, ops, ok, fail, info, nemesis, anomalies
  --out DIR                the results folder (default: a new folder under $TMPDIR/verity-jepsen)
  --network MODE           auto (network namespaces when root, else loopback), netns, loopback

Exit codes: 0 valid, 1 anomalies found or the run failed, 2 bad usage. See docs/jepsen.md.`;

export class UsageError extends Error {}

export interface CliOptions extends RunOptions {
  json: boolean;
}

function integer(flag: string, text: string | undefined, min: number, max: number): number {
  if (text === undefined || !/^\d+$/.test(text)) throw new UsageError(`${flag} needs a whole number, got ${text === undefined ? "nothing" : `"${text}"`}`);
  const n = Number(text);
  if (n < min || n > max) throw new UsageError(`${flag} ${n} is outside ${min}..${max}`);
  return n;
}

export function parseNemeses(text: string): NemesisName[] {
  const names = text.split(",").map((s) => s.trim()).filter((s) => s !== "");
  if (names.includes("all")) return [...NEMESIS_NAMES];
  for (const n of names) {
    if (!(NEMESIS_NAMES as readonly string[]).includes(n)) throw new UsageError(`unknown nemesis "${n}": choose from ${NEMESIS_NAMES.join(", ")}, or all`);
  }
  return [...new Set(names)] as NemesisName[];
}

export function parseArgs(argv: readonly string[]): CliOptions {
  const o: CliOptions = { nodes: 3, nemeses: [], timeLimitS: TIME_LIMIT_S_DEFAULT, rate: RATE_DEFAULT, seed: Date.now() % 1_000_000_007, network: "auto", json: false };
  const seen = new Set<string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const [flag, inline] = arg.includes("=") ? [arg.slice(0, arg.indexOf("=")), arg.slice(arg.indexOf("=") + 1)] : [arg, undefined];
    if (seen.has(flag)) throw new UsageError(`${flag} given twice`);
    seen.add(flag);
    const value = (): string | undefined => inline ?? argv[++i];
    switch (flag) {
      case "--nodes": {
        const n = integer(flag, value(), 1, 99);
        if (!(CLUSTER_SIZES as readonly number[]).includes(n)) throw new UsageError(`--nodes must be ${CLUSTER_SIZES.join(" or ")}`);
        o.nodes = n;
        break;
      }
      case "--nemesis":
        o.nemeses = parseNemeses(value() ?? "");
        break;
      case "--time-limit":
        o.timeLimitS = integer(flag, value(), 1, TIME_LIMIT_S_MAX);
        break;
      case "--rate":
        o.rate = integer(flag, value(), 1, RATE_MAX);
        break;
      case "--seed":
        o.seed = integer(flag, value(), 0, 0xffff_ffff);
        break;
      case "--json":
        o.json = true;
        break;
      case "--out": {
        const v = value();
        if (v === undefined || v === "") throw new UsageError("--out needs a folder");
        o.out = v;
        break;
      }
      case "--network": {
        const v = value();
        if (v !== "auto" && v !== "netns" && v !== "loopback") throw new UsageError(`--network must be auto, netns or loopback, got ${v ?? "nothing"}`);
        o.network = v;
        break;
      }
      case "-h":
      case "--help":
        throw new UsageError("");
      default:
        throw new UsageError(`unknown option ${arg}`);
    }
  }
  return o;
}

async function main(argv: readonly string[]): Promise<number> {
  let options: CliOptions;
  try {
    options = parseArgs(argv);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    if (e.message === "") {
      process.stdout.write(USAGE + "\n");
      return 0;
    }
    process.stderr.write(`jepsen: ${e.message}\n${USAGE}\n`);
    return 2;
  }
  try {
    const { summary, result } = await runJepsen(options);
    if (options.json) {
      const { dir: _dir, network: _network, seed: _seed, ...wanted } = summary;
      process.stdout.write(JSON.stringify(wanted) + "\n");
    } else {
      const found = ANOMALY_KEYS.filter((k) => result.counts[k] > 0).map((k) => `${k} ${result.counts[k]}`);
      process.stdout.write(
        `${summary.valid ? "VALID" : "INVALID"}: ${summary.ops} operations (${summary.ok} ok, ${summary.fail} fail, ${summary.info} info); ` +
          `faults ${Object.entries(summary.nemesis).filter(([, v]) => v > 0).map(([k, v]) => `${k} ${v}`).join(", ") || "none"}` +
          `${found.length > 0 ? `; anomalies: ${found.join(", ")}` : ""}\nresults: ${summary.dir} (report.html)\n`,
      );
    }
    return summary.valid ? 0 : 1;
  } catch (e) {
    process.stderr.write(`jepsen: the run failed: ${e instanceof Error ? e.stack ?? e.message : String(e)}\n`);
    return 1;
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  process.exitCode = await main(process.argv.slice(2));
}
