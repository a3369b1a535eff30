/**
 * The real verity-server processes of a run: starting (with mutual TLS, inside the node's network
 * namespace), stopping, killing, pausing, wiping, status over HTTPS and Admin API calls. Every
 * process is tracked by its ChildProcess and signalled by PID; `teardown` kills every one still
 * running. Each node's output goes to `<run>/nodes/node<N>.log`, every incarnation after a header.
 */

import { spawn, type ChildProcess } from "node:child_process";
import { appendFileSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import * as https from "node:https";
import { dirname, join } from "node:path";
import { AdminApi } from "../src/client/admin-client.js";
import { VerityClient } from "../src/client/verity-client.js";
import { CertificateAuthority, type CertFiles } from "./certs.js";
import {
  CLIENT_ATTEMPTS, NODE_IDS_MAX, NODE_OUTPUT_TAIL_BYTES, POLL_MS, SEGMENT_SIZE, STATUS_TIMEOUT_MS, STOP_GRACE_MS, STREAMS_PER_TENANT_LIMIT, TENANTS,
} from "./constants.js";
import type { History } from "./history.js";
import type { Network, NodeEndpoints } from "./network.js";
import { snapshotSizes, type FileSizes } from "./lose-unsynced.js";

/** The workload's certificate identity: a data-plane client granted the run's tenants. */
export const CLIENT_IDENTITY = "jepsen-client";
/** The Admin API identity. */
export const ADMIN_IDENTITY = "admin";
/** How many damaged data directories are kept per node for inspection (older ones are deleted). */
const DAMAGED_COPIES_KEPT_MAX = 3;

export type NodeState = "new" | "running" | "paused" | "stopped" | "removed";

export interface JepsenNode {
  readonly id: number;
  readonly endpoints: NodeEndpoints;
  readonly dir: string;
  readonly dataDir: string;
  state: NodeState;
  process: ChildProcess | undefined;
  /** Starts so far. */
  incarnation: number;
  /** Bumped each time the data directory is replaced by an empty one. */
  generation: number;
  /** The end of this incarnation's output (the whole output is in the log file). */
  output: string;
  /** How the last incarnation ended. */
  lastExit: { code: number | null; signal: string | null; time: number } | undefined;
  /** lose-unsynced: consistent copies of its SQLite databases (of this data generation). */
  readonly sqliteCopies: string;
  /** lose-unsynced: this incarnation's journal, and the file sizes when it started. */
  journal: string | undefined;
  baseline: FileSizes | undefined;
}

export interface NodeStatus {
  node_id: number;
  state: string;
  view: number;
  commit_index: number;
  applied_index: number;
  leader_id: number;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The repository root (where package.json is), from this file's place in jepsen/ or dist/jepsen/. */
function repositoryRoot(): string {
  let dir = import.meta.dirname;
  // Bounded: a handful of parent directories.
  for (let i = 0; i < 5; i++) {
    if (existsSync(join(dir, "package.json")) && existsSync(join(dir, "bin", "verity-server.js"))) return dir;
    dir = dirname(dir);
  }
  throw new Error(`cannot find the repository root above ${import.meta.dirname}`);
}

export interface ClusterOptions {
  /** The run's folder: certificates, node data and logs go below it. */
  dir: string;
  network: Network;
  history: History;
  /** Start nodes with the test-only durability journal (the lose-unsynced nemesis needs it). */
  journal: boolean;
}

export class JepsenCluster {
  readonly nodes = new Map<number, JepsenNode>();
  readonly ca: CertificateAuthority;
  readonly adminCert: CertFiles;
  readonly client: CertFiles;
  private readonly root = repositoryRoot();
  private readonly clients = new Map<string, VerityClient>();
  private readonly adminApis = new Map<string, AdminApi>();
  private readonly tlsOptions: { ca: Buffer; cert: Buffer; key: Buffer };
  private readonly nodeCerts = new Map<number, CertFiles>();

  constructor(private readonly options: ClusterOptions) {
    this.ca = new CertificateAuthority(join(options.dir, "ca"));
    this.adminCert = this.ca.issue(ADMIN_IDENTITY);
    this.client = this.ca.issue(CLIENT_IDENTITY);
    this.tlsOptions = { ca: this.ca.pem(), cert: readFileSync(this.adminCert.cert), key: readFileSync(this.adminCert.key) };
    mkdirSync(join(options.dir, "nodes"), { recursive: true });
  }

  get network(): Network {
    return this.options.network;
  }

  /** Creates node `id` (its addresses, folders and certificate); it is not started. */
  async addNode(id: number): Promise<JepsenNode> {
    if (id < 1 || id > NODE_IDS_MAX) throw new Error(`node id ${id} is outside 1..${NODE_IDS_MAX}`);
    if (this.nodes.has(id)) throw new Error(`node ${id} exists already`);
    const endpoints = await this.options.network.addNode(id);
    const dir = join(this.options.dir, "nodes", `node${id}`);
    mkdirSync(dir, { recursive: true });
    const node: JepsenNode = {
      id, endpoints, dir, dataDir: join(dir, "data"), sqliteCopies: join(dir, "sqlite-copy"), state: "new", process: undefined, incarnation: 0, generation: 0, output: "",
      lastExit: undefined, journal: undefined, baseline: undefined,
    };
    this.nodes.set(id, node);
    return node;
  }

  node(id: number): JepsenNode {
    const n = this.nodes.get(id);
    if (n === undefined) throw new Error(`no node ${id}`);
    return n;
  }

  /** Nodes the harness believes are members (not removed, started at least once). */
  members(): JepsenNode[] {
    return [...this.nodes.values()].filter((n) => n.state !== "removed" && n.state !== "new").sort((a, b) => a.id - b.id);
  }

  running(): JepsenNode[] {
    return this.members().filter((n) => n.state === "running");
  }

  clusterAddress(n: JepsenNode): string {
    return `${n.endpoints.host}:${n.endpoints.cluster}`;
  }

  clientAddress(n: JepsenNode): string {
    return `${n.endpoints.host}:${n.endpoints.client}`;
  }

  private logFile(n: JepsenNode): string {
    return join(this.options.dir, "nodes", `node${n.id}.log`);
  }

  /**
   * Starts `n` with the other members as --cluster-peers (or `peers` when given). `join`: a new
   * node that waits to be added.
   */
  start(n: JepsenNode, opts: { join?: boolean; peers?: JepsenNode[] } = {}): void {
    if (n.process !== undefined && n.process.exitCode === null && n.process.signalCode === null) throw new Error(`node ${n.id} is still running`);
    let cert = this.nodeCerts.get(n.id);
    if (cert === undefined) this.nodeCerts.set(n.id, (cert = this.ca.issue(`node-${n.id}`, [n.endpoints.host])));
    const config = join(n.dir, "node.toml");
    writeFileSync(config, `[[security.clients]]\nidentity = ${JSON.stringify(CLIENT_IDENTITY)}\ntenants = ${JSON.stringify([...TENANTS])}\n`);
    const peers = (opts.peers ?? this.members().filter((m) => m !== n)).map((m) => this.clusterAddress(m)).join(",");
    n.incarnation++;
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith("VERITY_")) env[k] = v;
    Object.assign(env, {
      VERITY_SECURITY_TLS_CERT: cert.cert, VERITY_SECURITY_TLS_KEY: cert.key, VERITY_SECURITY_TLS_CA: this.ca.cert,
      VERITY_SECURITY_NODES: Array.from({ length: NODE_IDS_MAX }, (_, i) => `node-${i + 1}`).join(","), VERITY_SECURITY_ADMINS: ADMIN_IDENTITY,
      VERITY_STORAGE_SEGMENT_SIZE: SEGMENT_SIZE, VERITY_LIMITS_MAX_STREAMS_PER_TENANT: String(STREAMS_PER_TENANT_LIMIT),
    });
    if (this.options.journal) {
      n.journal = join(n.dir, `journal-${n.incarnation}.jsonl`);
      n.baseline = snapshotSizes(n.dataDir);
      env.VERITY_TEST_SYNC_JOURNAL = n.journal;
    }
    const e = n.endpoints;
    const args = [join(this.root, "bin", "verity-server.js"),
      "--config", config, "--node-id", String(n.id), "--data-dir", n.dataDir,
      "--bind", `${e.host}:${e.client}`, "--cluster-address", `${e.host}:${e.cluster}`, "--metrics-address", `${e.host}:${e.metrics}`,
      ...(peers === "" ? [] : ["--cluster-peers", peers]), ...(opts.join === true ? ["--join"] : [])];
    const wrapped = this.options.network.wrap(n.id, process.execPath, args);
    const child = spawn(wrapped.command, wrapped.args, { stdio: ["ignore", "pipe", "pipe"], env, cwd: n.dir });
    const log = this.logFile(n);
    appendFileSync(log, `\n==== node ${n.id} incarnation ${n.incarnation} (generation ${n.generation}) pid ${child.pid} at ${this.options.history.now()} ms: ${args.slice(1).join(" ")}\n`);
    n.output = "";
    const onData = (d: Buffer): void => {
      // Output that arrives after the results folder was removed (a test's teardown) is dropped.
      try {
        appendFileSync(log, d);
      } catch {
        return;
      }
      n.output = (n.output + d.toString()).slice(-NODE_OUTPUT_TAIL_BYTES);
    };
    child.stdout!.on("data", onData);
    child.stderr!.on("data", onData);
    child.on("exit", (code, signal) => {
      n.lastExit = { code, signal, time: this.options.history.now() };
      this.options.history.node(n.id, "exit", { pid: child.pid, code, signal, expected: n.process !== child || n.state !== "running" });
      if (n.process === child) {
        n.process = undefined;
        if (n.state === "running" || n.state === "paused") n.state = "stopped";
      }
    });
    n.process = child;
    n.state = "running";
    this.options.history.node(n.id, "start", { pid: child.pid, incarnation: n.incarnation, generation: n.generation, join: opts.join === true });
  }

  /** Sends `signal` and waits for the process to end (SIGKILL after STOP_GRACE_MS). */
  async stop(n: JepsenNode, signal: "SIGKILL" | "SIGTERM", state: NodeState = "stopped"): Promise<void> {
    const child = n.process;
    n.state = state;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) {
      n.process = undefined;
      if (state === "removed") this.options.network.removeNode(n.id);
      return;
    }
    const done = new Promise<void>((r) => child.once("exit", () => r()));
    if (state === "removed") void done.then(() => this.options.network.removeNode(n.id));
    if (signal === "SIGTERM") child.kill("SIGCONT");
    child.kill(signal);
    const timer = setTimeout(() => child.kill("SIGKILL"), STOP_GRACE_MS);
    await done;
    clearTimeout(timer);
    n.process = undefined;
  }

  pause(n: JepsenNode): void {
    if (n.process === undefined || n.state !== "running") return;
    n.process.kill("SIGSTOP");
    n.state = "paused";
    this.options.history.node(n.id, "pause");
  }

  resume(n: JepsenNode): void {
    if (n.process === undefined || n.state !== "paused") return;
    n.process.kill("SIGCONT");
    n.state = "running";
    this.options.history.node(n.id, "resume");
  }

  /** Moves the data directory aside (kept for inspection, bounded) so the node starts empty. */
  wipe(n: JepsenNode, why: string): void {
    if (n.process !== undefined) throw new Error(`node ${n.id} must be stopped before its data is wiped`);
    if (existsSync(n.dataDir)) {
      const aside = join(n.dir, `data.damaged-${n.generation}`);
      renameSync(n.dataDir, aside);
      const old = join(n.dir, `data.damaged-${n.generation - DAMAGED_COPIES_KEPT_MAX}`);
      if (existsSync(old)) rmSync(old, { recursive: true, force: true });
    }
    n.generation++;
    rmSync(n.sqliteCopies, { recursive: true, force: true });
    this.options.history.node(n.id, "wipe", { why, generation: n.generation });
  }

  /** Starts a new data generation without wiping (part of the node's state went back in time). */
  newGeneration(n: JepsenNode, why: string): void {
    n.generation++;
    rmSync(n.sqliteCopies, { recursive: true, force: true });
    this.options.history.node(n.id, "generation", { why, generation: n.generation });
  }

  /** /status over HTTPS with the admin certificate, or undefined if the node does not answer. */
  status(n: JepsenNode): Promise<NodeStatus | undefined> {
    if (n.state !== "running") return Promise.resolve(undefined);
    return new Promise((resolve) => {
      const req = https.get(
        { host: n.endpoints.host, port: n.endpoints.client, path: "/status", ...this.tlsOptions, servername: "localhost", timeout: STATUS_TIMEOUT_MS },
        (res) => {
          let body = "";
          res.on("data", (d: Buffer) => (body += d.toString()));
          res.on("end", () => {
            try {
              resolve(res.statusCode === 200 ? (JSON.parse(body) as NodeStatus) : undefined);
            } catch {
              resolve(undefined);
            }
          });
          res.on("error", () => resolve(undefined));
        },
      );
      req.on("error", () => resolve(undefined));
      req.on("timeout", () => req.destroy());
    });
  }

  /** The leader that every running member that answers agrees on, if there is one. */
  async leader(): Promise<JepsenNode | undefined> {
    const nodes = this.running();
    const views = await Promise.all(nodes.map((n) => this.status(n)));
    const leaders = views.filter((s) => s?.state === "leader");
    if (leaders.length !== 1) return undefined;
    const id = leaders[0]!.node_id;
    const answered = views.filter((s) => s !== undefined);
    if (answered.length * 2 <= nodes.length || !answered.every((s) => s!.leader_id === id)) return undefined;
    return this.nodes.get(id);
  }

  /** Waits up to `ms` for an agreed leader. */
  async awaitLeader(ms: number): Promise<JepsenNode | undefined> {
    const end = Date.now() + ms;
    // Bounded by the deadline.
    while (Date.now() < end) {
      const l = await this.leader();
      if (l !== undefined) return l;
      await sleep(POLL_MS);
    }
    return undefined;
  }

  /** The data-plane client for one node (shared by the workload's processes pinned to it). */
  clientFor(n: JepsenNode): VerityClient {
    const address = this.clientAddress(n);
    let c = this.clients.get(address);
    if (c === undefined) {
      c = new VerityClient({ endpoints: [address], tls: { ca: this.ca.cert, ...this.client }, attempts: CLIENT_ATTEMPTS });
      this.clients.set(address, c);
    }
    return c;
  }

  /** A new client of its own (subscriptions hold one each, so cancelling one cancels nothing else). */
  newClient(n: JepsenNode): VerityClient {
    return new VerityClient({ endpoints: [this.clientAddress(n)], tls: { ca: this.ca.cert, ...this.client }, attempts: CLIENT_ATTEMPTS });
  }

  /** Admin API calls to `nodes` in order (the first that answers). */
  adminApi(nodes: JepsenNode[]): AdminApi {
    const endpoints = nodes.map((n) => this.clientAddress(n));
    const key = endpoints.join(",");
    let a = this.adminApis.get(key);
    if (a === undefined) {
      a = new AdminApi({ endpoints, tls: { ca: this.ca.cert, ...this.adminCert } });
      this.adminApis.set(key, a);
    }
    return a;
  }

  async admin(nodes: JepsenNode[], method: string, request: object): Promise<Record<string, unknown>> {
    return (await this.adminApi(nodes).call(method, request)).response;
  }

  /** Kills every process still running (SIGKILL, by PID) and closes clients. Synchronous. */
  teardown(): void {
    for (const n of this.nodes.values()) {
      const c = n.process;
      if (c !== undefined && c.exitCode === null && c.signalCode === null) {
        c.kill("SIGCONT");
        c.kill("SIGKILL");
      }
    }
    for (const c of this.clients.values()) c.close();
    this.clients.clear();
  }
}
