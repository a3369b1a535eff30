/**
 * Shared by the backup tests: an s3rver on loopback (a free port, a temp directory, one bucket),
 * S3 clients with explicit test credentials (the SDK never probes the network for any), the
 * environment for the CLIs run as child processes, a plaintext single-node verity-server, and a
 * record-by-record reader of a data directory's log.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import S3rver from "s3rver";
import { CreateBucketCommand, S3Client } from "@aws-sdk/client-s3";
import { S3ObjectStore, s3Client } from "../../src/backup/object-store.js";
import { dumpLog } from "../../src/log/offline.js";
import { NodeFileSystem } from "../../src/log/node-fs.js";
import type { LogEntry } from "../../src/log/types.js";
import { freePort, until } from "../helpers/process-cluster.js";

export const root = join(import.meta.dirname, "..", "..");
export const bin = (name: string): string => join(root, "bin", `${name}.js`);

export const TEST_CREDENTIALS = { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" };
export const BUCKET = "verity-backups";
/** A CLI run by a test is killed after this long. */
const CLI_TIMEOUT_MS = 120_000;

/** For CLI child processes: the SDK's chain finds the keys in the environment and stops there. */
export const CLI_ENV: NodeJS.ProcessEnv = {
  ...process.env,
  AWS_ACCESS_KEY_ID: TEST_CREDENTIALS.accessKeyId,
  AWS_SECRET_ACCESS_KEY: TEST_CREDENTIALS.secretAccessKey,
  AWS_REGION: "us-east-1",
  AWS_EC2_METADATA_DISABLED: "true",
  AWS_CONFIG_FILE: "/dev/null",
  AWS_SHARED_CREDENTIALS_FILE: "/dev/null",
  AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: "true",
};

export class TestS3 {
  private constructor(
    private readonly server: S3rver,
    readonly endpoint: string,
    readonly client: S3Client,
  ) {}

  static async start(dir: string): Promise<TestS3> {
    mkdirSync(dir, { recursive: true });
    const port = await freePort();
    const server = new S3rver({ address: "127.0.0.1", port, directory: dir, silent: true });
    await server.run();
    const endpoint = `http://127.0.0.1:${port}`;
    const client = s3Client({ endpoint, forcePathStyle: true, region: "us-east-1", credentials: TEST_CREDENTIALS });
    await client.send(new CreateBucketCommand({ Bucket: BUCKET }));
    return new TestS3(server, endpoint, client);
  }

  /** The store for `prefix` (relative keys). */
  store(prefix: string): S3ObjectStore {
    return new S3ObjectStore(this.client, { bucket: BUCKET, prefix });
  }

  /** The S3 flags of the CLIs, optionally through another endpoint (a proxy). */
  flags(endpoint = this.endpoint): string[] {
    return ["--endpoint", endpoint, "--force-path-style"];
  }

  async close(): Promise<void> {
    this.client.destroy();
    await this.server.close();
  }
}

/**
 * Runs a CLI to completion. Never spawnSync: s3rver runs in the test process, and a blocked event
 * loop would keep it from answering the CLI.
 */
export function runCli(name: string, args: string[], env: NodeJS.ProcessEnv = CLI_ENV): Promise<{ code: number; stdout: string; stderr: string }> {
  return runCommand(process.execPath, [bin(name), ...args], env);
}

/** Runs any command to completion, without blocking the event loop. */
export async function runCommand(command: string, args: string[], env: NodeJS.ProcessEnv = CLI_ENV): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"], env });
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => child.kill("SIGKILL"), CLI_TIMEOUT_MS);
  const { code } = await exitOf(child);
  clearTimeout(timer);
  return { code: code ?? -1, stdout, stderr };
}

/** A child process with its output collected. */
export interface Child {
  readonly process: ChildProcess;
  output: string;
}

export function startChild(name: string, args: string[], env: NodeJS.ProcessEnv = CLI_ENV): Child {
  const child = spawn(process.execPath, [bin(name), ...args], { stdio: ["ignore", "pipe", "pipe"], env });
  const c: Child = { process: child, output: "" };
  child.stdout!.on("data", (d: Buffer) => (c.output += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (c.output += d.toString()));
  return c;
}

export function exitOf(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  return new Promise((r) => child.once("exit", (code, signal) => r({ code, signal })));
}

/** A plaintext single-node verity-server with 1 MB segments, so that segments seal often. */
export class TestNode {
  child: Child | undefined;
  private constructor(
    readonly dataDir: string,
    readonly client: number,
    readonly cluster: number,
    readonly metrics: number,
  ) {}

  static async create(dataDir: string): Promise<TestNode> {
    return new TestNode(dataDir, await freePort(), await freePort(), await freePort());
  }

  get endpoint(): string {
    return `127.0.0.1:${this.client}`;
  }

  start(args: string[] = []): void {
    this.child = startChild("verity-server", [
      "--data-dir", this.dataDir, "--bind", this.endpoint, "--cluster-address", `127.0.0.1:${this.cluster}`, "--metrics-address", `127.0.0.1:${this.metrics}`, ...args,
    ], { ...process.env, VERITY_STORAGE_SEGMENT_SIZE: "1MB" });
  }

  async status(): Promise<Record<string, unknown> | undefined> {
    try {
      const r = await fetch(`http://${this.endpoint}/status`, { signal: AbortSignal.timeout(1000) });
      return r.ok ? ((await r.json()) as Record<string, unknown>) : undefined;
    } catch {
      return undefined;
    }
  }

  async leading(): Promise<void> {
    await until("the node leading", async () => ((await this.status())?.state === "leader" ? true : undefined));
  }

  async stop(): Promise<void> {
    const p = this.child?.process;
    if (p === undefined || p.exitCode !== null || p.signalCode !== null) return;
    p.kill("SIGTERM");
    await exitOf(p);
  }

  kill(): void {
    const p = this.child?.process;
    if (p !== undefined && p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
  }
}

/** Every record of a data directory's log from index 1 up to `upTo`, straight from its segment files. */
export async function readRecords(dataDir: string, upTo: number): Promise<LogEntry[]> {
  const out: LogEntry[] = [];
  for await (const item of dumpLog(new NodeFileSystem(), join(dataDir, "log"), 1, upTo)) {
    if ("damage" in item) throw new Error(`damage in ${item.file} at ${item.offset}: ${item.damage}`);
    out.push(item.entry);
  }
  return out;
}

/** One comparable line per record: index, term, kind, tenant and the payload's SHA-256 (deep-equal on buffers is slow). */
export function recordLines(entries: readonly LogEntry[]): string[] {
  return entries.map((e) => `${e.index} ${e.term} ${e.kind} ${e.tenant} ${e.payload.length} ${createHash("sha256").update(e.payload).digest("hex")}`);
}
