/** What every VerityDB command-line tool shares: version, exit codes, error reporting. */

import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import yargs, { type Argv } from "yargs";
import { VerityError } from "../errors.js";

/** Exit codes of every tool: 0 ok, 1 the check failed or the operation was refused, 2 bad usage. */
export const ExitCode = { OK: 0, FAILED: 1, USAGE: 2 } as const;

/** The package's package.json, found by walking up from this module (src/cli in tests, dist/src/cli when built). */
function packageJson(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  // Bounded: the root is a few levels up.
  for (let level = 0; level < 6; level++) {
    const candidate = join(dir, "package.json");
    if (existsSync(candidate)) return candidate;
    dir = dirname(dir);
  }
  throw new Error(`package.json not found above ${fileURLToPath(import.meta.url)}: the installation is incomplete`);
}

export const VERSION: string = (JSON.parse(readFileSync(packageJson(), "utf8")) as { version: string }).version;

/** A yargs parser with the house conventions: -h/--help, -V/--version, strict flags, exit 2 on bad usage. */
export function cli(name: string, argv: string[], description: string, usage = "$0 [options]"): Argv {
  return yargs(argv)
    .scriptName(name)
    .usage(`${name} ${VERSION}\n\n${description}\n\nUsage: ${usage}`)
    .version(VERSION)
    .alias("V", "version")
    .help()
    .alias("h", "help")
    .strict()
    .wrap(Math.min(100, process.stdout.columns ?? 100))
    .fail((msg, err) => {
      if (err !== undefined && err !== null) throw err;
      process.stderr.write(`${name}: ${msg}\nRun '${name} --help' for usage.\n`);
      process.exit(ExitCode.USAGE);
    });
}

/** Prints an error for a person (what went wrong, what to do) and returns the exit code. */
export function reportError(name: string, e: unknown): number {
  if (e instanceof VerityError) {
    process.stderr.write(`${name}: error: ${e.message}\n`);
  } else {
    process.stderr.write(`${name}: unexpected error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  }
  return ExitCode.FAILED;
}

/** Runs an async command body and exits with its code (errors are reported, never a bare stack for expected ones). */
export async function run(name: string, body: () => Promise<number>): Promise<void> {
  let code: number;
  try {
    code = await body();
  } catch (e) {
    code = reportError(name, e);
  }
  process.exitCode = code;
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(1)} ${units[i]}`;
}

const ANSI = { red: 31, green: 32, yellow: 33, bold: 1 } as const;

/**
 * `text` in a colour when stdout is a terminal (and NO_COLOR is not set); plain otherwise, so
 * pipes, files and scripts never see escape codes.
 */
export function paint(text: string, colour: keyof typeof ANSI): string {
  if (process.stdout.isTTY !== true || (process.env.NO_COLOR ?? "") !== "") return text;
  return `\u001b[${ANSI[colour]}m${text}\u001b[0m`;
}
