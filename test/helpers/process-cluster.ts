/**
 * Real verity-server processes on loopback with mutual TLS, for cluster tests: free ports,
 * openssl certificates, status over HTTPS, admin calls over gRPC. Every process started is
 * tracked and killed by `killAll` (by PID, through its ChildProcess).
 */
import { spawn, type ChildProcess } from "node:child_process";
import * as https from "node:https";
import * as net from "node:net";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { ADMIN_SERVICE } from "../../src/server/admin-service.js";
import { AdminApi } from "../../src/client/admin-client.js";
import type { CertFiles, TestCa } from "./certs.js";

const root = join(import.meta.dirname, "..", "..");

export interface ProcessNode {
  id: number;
  client: number;
  cluster: number;
  metrics: number;
  process?: ChildProcess;
  output: string;
}

/**
 * Ports below Linux's ephemeral range (32768-60999 here), so that no outgoing connection of any
 * process can take one as its source port between the test choosing it and a node (re)binding it.
 */
const TEST_PORT_MIN = 20_000;
const TEST_PORT_MAX = 32_000;
const PORT_ATTEMPTS_MAX = 200;

export async function freePort(): Promise<number> {
  // Bounded: PORT_ATTEMPTS_MAX random candidates.
  for (let attempt = 0; attempt < PORT_ATTEMPTS_MAX; attempt++) {
    const port = TEST_PORT_MIN + Math.floor(Math.random() * (TEST_PORT_MAX - TEST_PORT_MIN));
    const s = net.createServer();
    const free = await new Promise<boolean>((resolve) => {
      s.once("error", () => resolve(false));
      s.listen(port, "127.0.0.1", () => resolve(true));
    });
    if (free) {
      await new Promise<void>((r) => s.close(() => r()));
      return port;
    }
  }
  throw new Error(`no free port found between ${TEST_PORT_MIN} and ${TEST_PORT_MAX}`);
}

export async function until<T>(what: string, probe: () => Promise<T | undefined>, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  // Bounded by the deadline.
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export function exited(child: ChildProcess): Promise<number | null> {
  return child.exitCode !== null || child.signalCode !== null
    ? Promise.resolve(child.exitCode)
    : new Promise((r) => child.once("exit", (code) => r(code)));
}

export const AdminClient = grpc.makeGenericClientConstructor(ADMIN_SERVICE, "Admin");

export class ProcessCluster {
  readonly nodes: ProcessNode[] = [];
  readonly admin: CertFiles;
  private readonly children = new Set<ChildProcess>();

  constructor(
    readonly dir: string,
    readonly ca: TestCa,
    /** Identities with the node role: node-1 .. node-N. */
    readonly nodeCount = 5,
  ) {
    this.admin = ca.issue("admin");
  }

  async addNode(id: number): Promise<ProcessNode> {
    const node: ProcessNode = { id, client: await freePort(), cluster: await freePort(), metrics: await freePort(), output: "" };
    this.nodes.push(node);
    return node;
  }

  /** Starts `node` with `peers` as its --cluster-peers (default: every other node added). */
  start(node: ProcessNode, options: { peers?: ProcessNode[]; join?: boolean; clients?: { identity: string; tenants: string[] }[]; args?: string[]; env?: Record<string, string> } = {}): void {
    const cert = this.ca.issue(`node-${node.id}`);
    // [[security.clients]] exists only in the config file.
    const config = join(this.dir, `node${node.id}.toml`);
    writeFileSync(config, (options.clients ?? []).map((c) => `[[security.clients]]\nidentity = ${JSON.stringify(c.identity)}\ntenants = ${JSON.stringify(c.tenants)}\n`).join("\n"));
    const peers = (options.peers ?? this.nodes.filter((n) => n !== node)).map((n) => `127.0.0.1:${n.cluster}`).join(",");
    const child = spawn(process.execPath, [join(root, "bin", "verity-server.js"),
      "--config", config, "--node-id", String(node.id), "--data-dir", join(this.dir, `node${node.id}`),
      "--bind", `127.0.0.1:${node.client}`, "--cluster-address", `127.0.0.1:${node.cluster}`, "--cluster-peers", peers,
      "--metrics-address", `127.0.0.1:${node.metrics}`, ...(options.join === true ? ["--join"] : []), ...(options.args ?? [])], {
      stdio: ["ignore", "pipe", "pipe"],
      env: {
        ...process.env, VERITY_SECURITY_TLS_CERT: cert.cert, VERITY_SECURITY_TLS_KEY: cert.key, VERITY_SECURITY_TLS_CA: this.ca.cert,
        VERITY_SECURITY_NODES: Array.from({ length: this.nodeCount }, (_, i) => `node-${i + 1}`).join(","), VERITY_SECURITY_ADMINS: "admin",
        ...options.env,
      },
    });
    node.output = "";
    child.stdout!.on("data", (d: Buffer) => (node.output += d.toString()));
    child.stderr!.on("data", (d: Buffer) => (node.output += d.toString()));
    this.children.add(child);
    node.process = child;
  }

  status(node: ProcessNode): Promise<Record<string, unknown> | undefined> {
    return new Promise((resolve) => {
      const req = https.get(
        { host: "127.0.0.1", port: node.client, path: "/status", ca: this.ca.pem(), cert: readFileSync(this.admin.cert), key: readFileSync(this.admin.key), timeout: 1000 },
        (res) => {
          let body = "";
          res.on("data", (d: Buffer) => (body += d.toString()));
          res.on("end", () => resolve(res.statusCode === 200 ? (JSON.parse(body) as Record<string, unknown>) : undefined));
        },
      );
      req.on("error", () => resolve(undefined));
      req.on("timeout", () => req.destroy());
    });
  }

  /** The one leader every given node agrees on, if there is one. */
  async leaderOf(nodes: ProcessNode[]): Promise<{ leader: ProcessNode; view: number } | undefined> {
    const views = await Promise.all(nodes.map((n) => this.status(n)));
    const leaders = views.filter((s) => s?.state === "leader");
    if (leaders.length !== 1) return undefined;
    const id = leaders[0]!.node_id as number;
    if (!views.every((s) => s !== undefined && s.leader_id === id)) return undefined;
    return { leader: nodes.find((n) => n.id === id)!, view: leaders[0]!.view as number };
  }

  /** One unary gRPC call with a client certificate (the admin identity unless another is given). */
  call(node: ProcessNode, ctor: grpc.ServiceClientConstructor, method: string, request: object, identity: CertFiles = this.admin): Promise<Record<string, unknown>> {
    const creds = grpc.credentials.createSsl(this.ca.pem(), readFileSync(identity.key), readFileSync(identity.cert));
    const client = new ctor(`localhost:${node.client}`, creds) as unknown as
      Record<string, (r: object, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r: Record<string, unknown>) => void) => void> & { close(): void };
    return new Promise((resolve, reject) =>
      client[method]!(request, { deadline: new Date(Date.now() + 15_000) }, (e, r) => {
        client.close();
        if (e) reject(e);
        else resolve(r);
      }),
    );
  }

  /** Creates tenants through the Admin API of whichever of `nodes` leads (as the admin identity). */
  async createTenants(nodes: ProcessNode[], ...tenants: string[]): Promise<void> {
    const api = new AdminApi({ endpoints: nodes.map((n) => `127.0.0.1:${n.client}`), tls: { ca: this.ca.cert, ...this.admin } });
    for (const tenant of tenants) {
      // Bounded: a leader is normally known within a second; the test's own timeout ends it otherwise.
      for (let attempt = 0; ; attempt++) {
        try {
          await api.call("createTenant", { tenant });
          break;
        } catch (e) {
          if (attempt >= 50 || (e as { code?: number }).code !== grpc.status.UNAVAILABLE) throw e;
          await new Promise((r) => setTimeout(r, 200));
        }
      }
    }
  }

  killAll(): void {
    for (const c of this.children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  }
}
