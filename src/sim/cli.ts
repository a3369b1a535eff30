#!/usr/bin/env node
/**
 * `npm run sim` (node dist/src/sim/cli.js): runs the deterministic simulator over seeds.
 *
 *   --seeds N     seeds 1..N
 *   --seed S      one seed
 *   --minutes M   consecutive seeds from --from (default: a random start, printed) until M minutes pass
 *   --nodes 3|5   voters at the start (default 3; the other ids up to 5 are spare machines)
 *   --json        print one JSON object with the totals
 *   --without O   switch oracle O off (repeatable): which other oracle catches the same bug?
 *
 * Exits 1 on any violation, printing the seed, the oracle and the last trace lines. Wall-clock time
 * only bounds --minutes; it never decides anything inside a seed.
 */

import { randomInt } from "node:crypto";
import { runSeeds, type BatchResult } from "./batch.js";
import { OracleName } from "./oracles.js";

interface CliOptions {
  seeds: number[] | undefined;
  minutes: number | undefined;
  from: number | undefined;
  voters: 3 | 5;
  json: boolean;
  safetyDuration: number | undefined;
  disabledOracles: OracleName[];
}

const USAGE = "usage: node dist/src/sim/cli.js (--seeds N | --seed S | --minutes M [--from S]) [--nodes 3|5] [--json] [--duration MS] [--without ORACLE]...";

function parse(argv: readonly string[]): CliOptions | string {
  const options: CliOptions = { seeds: undefined, minutes: undefined, from: undefined, voters: 3, json: false, safetyDuration: undefined, disabledOracles: [] };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]!;
    const value = (): number | undefined => {
      const text = argv[++i];
      const n = Number(text);
      return text !== undefined && Number.isSafeInteger(n) && n >= 0 ? n : undefined;
    };
    switch (flag) {
      case "--seeds": {
        const n = value();
        if (n === undefined || n < 1) return `--seeds needs a positive integer. ${USAGE}`;
        options.seeds = Array.from({ length: n }, (_, k) => k + 1);
        break;
      }
      case "--seed": {
        const n = value();
        if (n === undefined) return `--seed needs a non-negative integer. ${USAGE}`;
        options.seeds = [n];
        break;
      }
      case "--minutes": {
        const text = argv[++i];
        const n = Number(text);
        if (text === undefined || !(n > 0)) return `--minutes needs a positive number. ${USAGE}`;
        options.minutes = n;
        break;
      }
      case "--from": {
        const n = value();
        if (n === undefined) return `--from needs a non-negative integer. ${USAGE}`;
        options.from = n;
        break;
      }
      case "--nodes": {
        const n = value();
        if (n !== 3 && n !== 5) return `--nodes must be 3 or 5. ${USAGE}`;
        options.voters = n;
        break;
      }
      case "--duration": {
        const n = value();
        if (n === undefined || n < 100) return `--duration needs virtual milliseconds >= 100. ${USAGE}`;
        options.safetyDuration = n;
        break;
      }
      case "--json":
        options.json = true;
        break;
      case "--without": {
        const name = argv[++i];
        const known = Object.values(OracleName) as string[];
        if (name === undefined || !known.includes(name)) return `--without needs one of ${known.join(", ")}. ${USAGE}`;
        options.disabledOracles.push(name as OracleName);
        break;
      }
      case "--help":
      case "-h":
        return USAGE;
      default:
        return `unknown option ${flag}. ${USAGE}`;
    }
  }
  if ((options.seeds === undefined) === (options.minutes === undefined)) return `give exactly one of --seeds, --seed, --minutes. ${USAGE}`;
  return options;
}

async function main(): Promise<number> {
  const options = parse(process.argv.slice(2));
  if (typeof options === "string") {
    process.stderr.write(options + "\n");
    return 2;
  }
  let result: BatchResult;
  const started = performance.now();
  if (options.seeds !== undefined) {
    result = await runSeeds({ seeds: options.seeds, voters: options.voters, safetyDuration: options.safetyDuration, disabledOracles: options.disabledOracles });
  } else {
    const from = options.from ?? randomInt(1, 2 ** 31);
    process.stderr.write(`running seeds from ${from} for ${options.minutes} minutes\n`);
    const deadline = started + options.minutes! * 60_000;
    result = await runSeeds({
      from,
      voters: options.voters,
      safetyDuration: options.safetyDuration,
      disabledOracles: options.disabledOracles,
      until: () => performance.now() >= deadline,
    });
  }
  const seconds = (performance.now() - started) / 1000;
  if (result.failure !== undefined) {
    const f = result.failure;
    process.stderr.write(`VIOLATION at seed ${f.seed} (--nodes ${options.voters}): ${f.violation!.oracle}: ${f.violation!.message}\n`);
    process.stderr.write(`replay: node dist/src/sim/cli.js --seed ${f.seed} --nodes ${options.voters}\n`);
    process.stderr.write(`last ${f.trace.length} trace lines:\n${f.trace.map((line) => "  " + line).join("\n")}\n`);
  }
  if (options.json) {
    process.stdout.write(JSON.stringify(result.summary) + "\n");
  } else {
    const s = result.summary;
    process.stdout.write(
      `${s.seeds} seeds, ${s.events} events in ${seconds.toFixed(1)}s (${Math.round(s.events / seconds)} events/s, ` +
        `${((s.seeds / seconds) * 60).toFixed(0)} seeds/min); ${s.violations} violations; ${s.elections} elections, ${s.commits} commits; ` +
        `faults ${JSON.stringify(s.faults)}; trace hash ${s.trace_hash}\n`,
    );
  }
  return result.failure === undefined ? 0 : 1;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`simulator crashed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exitCode = 1;
  },
);
