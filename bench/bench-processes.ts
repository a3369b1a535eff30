/**
 * The processes a benchmark starts (verity-server, etcd): free loopback ports, polling, and a
 * registry that stops every child it started by its PID, and only those, on success, on error
 * and on SIGINT/SIGTERM of the benchmark. Copied in spirit from test/helpers/process-cluster.ts,
 * which benchmarks do not import.
 */

import { spawn, type ChildProcess } from "node:child_process";
import * as http from "node:http";
import * as net from "node:net";

/**
 * Ports below Linux's ephemeral range (32768-60999), so that no outgoing connection takes one as
 * its source port between choosing it and a server binding it.
 */
const BENCH_PORT_MIN = 20_000;
const BENCH_PORT_MAX = 32_000;
const PORT_ATTEMPTS_MAX = 200;
/** Output kept per child (its tail), to show when it fails. */
const OUTPUT_BYTES_MAX = 64 * 1024;
/** How long a child may take to exit after SIGTERM before it gets SIGKILL. */
const STOP_WAIT_MS = 5_000;
/** Size of an HTTP answer read by `httpJson`, at most. */
const HTTP_BODY_BYTES_MAX = 1024 * 1024;

const taken = new Set<number>();

/** A free loopback port in [BENCH_PORT_MIN, BENCH_PORT_MAX), never one handed out before in this run. */
export async function freePort(): Promise<number> {
  // Bounded: PORT_ATTEMPTS_MAX random candidates.
  for (let attempt = 0; attempt < PORT_ATTEMPTS_MAX; attempt++) {
    const port = BENCH_PORT_MIN + Math.floor(Math.random() * (BENCH_PORT_MAX - BENCH_PORT_MIN));
    if (taken.has(port)) continue;
    const server = net.createServer();
    const free = await new Promise<boolean>((resolve) => {
      server.once("error", () => resolve(false));
      server.listen(port, "127.0.0.1", () => resolve(true));
    });
    if (free) {
      await new Promise<void>((r) => server.close(() => r()));
      taken.add(port);
      return port;
    }
  }
  throw new Error(`no free port found between ${BENCH_PORT_MIN} and ${BENCH_PORT_MAX}`);
}

/** Polls `probe` every 100 ms until it returns a value, or fails after `ms`. */
export async function until<T>(what: string, probe: () => Promise<T | undefined>, ms = 30_000): Promise<T> {
  const end = Date.now() + ms;
  // Bounded by the deadline.
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** GET (or POST `body`) over plain HTTP; the body of a 200 answer, else undefined. */
export function httpText(port: number, path: string, body?: string): Promise<string | undefined> {
  return new Promise((resolve) => {
    const req = http.request(
      { host: "127.0.0.1", port, path, method: body === undefined ? "GET" : "POST", timeout: 1_000, headers: body === undefined ? {} : { "content-type": "application/json" } },
      (res) => {
        let text = "";
        res.on("data", (d: Buffer) => {
          text += d.toString();
          if (text.length > HTTP_BODY_BYTES_MAX) req.destroy();
        });
        res.on("end", () => resolve(res.statusCode === 200 ? text : undefined));
        res.on("error", () => resolve(undefined));
      },
    );
    req.on("error", () => resolve(undefined));
    req.on("timeout", () => req.destroy());
    req.end(body);
  });
}

/** Like httpText, parsed as a JSON object; undefined unless a 200 answer holds one. */
export async function httpJson(port: number, path: string, body?: string): Promise<Record<string, unknown> | undefined> {
  const text = await httpText(port, path, body);
  if (text === undefined) return undefined;
  try {
    const value: unknown = JSON.parse(text);
    return typeof value === "object" && value !== null ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

export interface BenchChild {
  readonly name: string;
  readonly process: ChildProcess;
  /** The tail of its stdout and stderr (at most OUTPUT_BYTES_MAX). */
  output(): string;
}

function exited(child: ChildProcess): Promise<void> {
  return child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise((r) => child.once("exit", () => r()));
}

/**
 * The children of one benchmark run. `stopAll` sends SIGTERM to each (so a node profiled with
 * --cpu-prof writes its profile), then SIGKILL to any still running after STOP_WAIT_MS. A SIGINT
 * or SIGTERM of the benchmark stops them too, runs `onInterrupt` (removing the data) and exits;
 * the benchmark's exit kills any left.
 */
export class ChildRegistry {
  private readonly children = new Set<BenchChild>();
  private readonly onSignal = (signal: NodeJS.Signals): void => {
    process.stderr.write(`\n${signal}: stopping the benchmark's processes\n`);
    void this.stopAll()
      .then(() => this.onInterrupt())
      .finally(() => process.exit(130));
  };
  private readonly onExit = (): void => this.killAll();

  constructor(private readonly onInterrupt: () => void = () => {}) {
    process.once("SIGINT", this.onSignal);
    process.once("SIGTERM", this.onSignal);
    process.once("exit", this.onExit);
  }

  spawn(name: string, command: string, args: readonly string[], env: NodeJS.ProcessEnv): BenchChild {
    const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"], env });
    let tail = "";
    const keep = (d: Buffer): void => {
      tail += d.toString();
      if (tail.length > OUTPUT_BYTES_MAX) tail = tail.slice(-OUTPUT_BYTES_MAX);
    };
    child.stdout!.on("data", keep);
    child.stderr!.on("data", keep);
    // A failed spawn (e.g. ENOENT) shows up as an exit with no code; keep the reason for the report.
    child.on("error", (e) => keep(Buffer.from(`${name}: ${e.message}\n`)));
    const entry: BenchChild = { name, process: child, output: () => tail };
    this.children.add(entry);
    return entry;
  }

  private running(): BenchChild[] {
    return [...this.children].filter((c) => c.process.exitCode === null && c.process.signalCode === null);
  }

  /** Stops every child this registry started: SIGTERM, then SIGKILL after STOP_WAIT_MS. */
  async stopAll(): Promise<void> {
    const running = this.running();
    for (const c of running) c.process.kill("SIGTERM");
    await Promise.race([Promise.all(running.map((c) => exited(c.process))), new Promise((r) => setTimeout(r, STOP_WAIT_MS).unref())]);
    this.killAll();
    await Promise.all(running.map((c) => exited(c.process)));
  }

  /** SIGKILL to every child still running (synchronous: also used from the exit handler). */
  killAll(): void {
    for (const c of this.running()) c.process.kill("SIGKILL");
  }

  /** Removes the signal handlers (after stopAll). */
  dispose(): void {
    process.off("SIGINT", this.onSignal);
    process.off("SIGTERM", this.onSignal);
    process.off("exit", this.onExit);
  }
}
