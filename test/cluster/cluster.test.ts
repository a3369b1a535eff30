/**
 * A real 3-node cluster: three verity-server processes on loopback with mutual TLS (certificates
 * made with openssl), driven the way an operator would: status over HTTPS, kill -9 of the leader,
 * restart, SIGTERM of the leader. Every process started here is stopped by its PID.
 */
import { spawn, type ChildProcess } from "node:child_process";
import * as grpc from "@grpc/grpc-js";
import { ADMIN_SERVICE } from "../../src/server/admin-service.js";
import * as https from "node:https";
import * as net from "node:net";
import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { TestCa } from "../helpers/certs.js";
import { tempDir } from "../helpers/log-fixtures.js";

const root = join(import.meta.dirname, "..", "..");
const tmp = tempDir("cluster");
const ca = new TestCa(join(tmp.path, "ca"));
const admin = ca.issue("admin");
const children = new Set<ChildProcess>();

afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  tmp.cleanup();
});

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

interface Node {
  id: number;
  client: number;
  cluster: number;
  metrics: number;
  process?: ChildProcess;
  output: string;
}

function start(node: Node, all: Node[]): void {
  const cert = ca.issue(`node-${node.id}`);
  const peers = all.filter((n) => n !== node).map((n) => `127.0.0.1:${n.cluster}`).join(",");
  const child = spawn(process.execPath, [join(root, "bin", "verity-server.js"),
    "--node-id", String(node.id), "--data-dir", join(tmp.path, `node${node.id}`),
    "--bind", `127.0.0.1:${node.client}`, "--cluster-address", `127.0.0.1:${node.cluster}`, "--cluster-peers", peers,
    "--metrics-address", `127.0.0.1:${node.metrics}`], {
    stdio: ["ignore", "pipe", "pipe"],
    env: {
      ...process.env, VERITY_SECURITY_TLS_CERT: cert.cert, VERITY_SECURITY_TLS_KEY: cert.key, VERITY_SECURITY_TLS_CA: ca.cert,
      VERITY_SECURITY_NODES: all.map((n) => `node-${n.id}`).join(","), VERITY_SECURITY_ADMINS: "admin",
    },
  });
  node.output = "";
  child.stdout!.on("data", (d: Buffer) => (node.output += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (node.output += d.toString()));
  children.add(child);
  node.process = child;
}

function status(node: Node): Promise<Record<string, unknown> | undefined> {
  return new Promise((resolve) => {
    const req = https.get(
      { host: "127.0.0.1", port: node.client, path: "/status", ca: ca.pem(), cert: readFileSync(admin.cert), key: readFileSync(admin.key), timeout: 1000 },
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

async function until<T>(what: string, probe: () => Promise<T | undefined>, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  // Bounded by the deadline.
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function leaderOf(nodes: Node[]): Promise<{ leader: Node; view: number } | undefined> {
  const views = await Promise.all(nodes.map(status));
  const leaders = views.filter((s) => s?.state === "leader");
  if (leaders.length !== 1) return undefined;
  const id = leaders[0]!.node_id as number;
  // Every live node agrees on the leader.
  if (!views.every((s) => s !== undefined && s.leader_id === id)) return undefined;
  return { leader: nodes.find((n) => n.id === id)!, view: leaders[0]!.view as number };
}

const AdminClient = grpc.makeGenericClientConstructor(ADMIN_SERVICE, "Admin");
const HealthClient = grpc.makeGenericClientConstructor({
  check: {
    path: "/grpc.health.v1.Health/Check", requestStream: false, responseStream: false,
    requestSerialize: () => Buffer.alloc(0), requestDeserialize: () => ({}),
    // HealthCheckResponse: field 1, varint status (1 = SERVING).
    responseSerialize: () => Buffer.alloc(0), responseDeserialize: (b: Buffer) => ({ status: b.length >= 2 ? b[1] : 0 }),
  },
}, "Health");

/** Calls one unary method with a client certificate (the "admin" identity unless another is given). */
function call(node: Node, ctor: grpc.ServiceClientConstructor, method: string, request: object, identity = admin): Promise<Record<string, unknown>> {
  const creds = grpc.credentials.createSsl(ca.pem(), readFileSync(identity.key), readFileSync(identity.cert));
  const client = new ctor(`localhost:${node.client}`, creds) as unknown as Record<string, (r: object, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r: Record<string, unknown>) => void) => void> & { close(): void };
  return new Promise((resolve, reject) =>
    client[method]!(request, { deadline: new Date(Date.now() + 8000) }, (e, r) => {
      client.close();
      if (e) reject(e);
      else resolve(r);
    }),
  );
}

function exited(child: ChildProcess): Promise<number | null> {
  return child.exitCode !== null ? Promise.resolve(child.exitCode) : new Promise((r) => child.once("exit", (code) => r(code)));
}

describe("a 3-node cluster of real processes with mutual TLS", () => {
  it("elects a leader; admin API and health; kill -9 of the leader; rejoin; handover on SIGTERM; a wiped follower catches up", async () => {
    const nodes: Node[] = [];
    for (const id of [1, 2, 3]) nodes.push({ id, client: await freePort(), cluster: await freePort(), metrics: await freePort(), output: "" });
    for (const n of nodes) start(n, nodes);
    const first: { leader: Node; view: number } = await until("a leader", () => leaderOf(nodes));
    const s = (await status(first.leader))!;
    expect(s).toMatchObject({ state: "leader", node_id: first.leader.id });
    expect((s.cluster as { peers: unknown[] }).peers).toHaveLength(2);
    // The guide's metrics, from the leader's metrics port.
    const scrape = await (await fetch(`http://127.0.0.1:${first.leader.metrics}/metrics`)).text();
    expect(scrape).toMatch(new RegExp(`^verity_consensus_view ${first.view}$`, "m"));
    expect(scrape).toMatch(new RegExp(`^verity_consensus_leader ${first.leader.id}$`, "m"));
    expect(scrape).toMatch(/^verity_log_entries_total [1-9]/m);
    expect(scrape).toMatch(/^verity_consensus_commits_total [1-9]/m);
    expect(scrape).toMatch(/^verity_projection_applied_position [1-9]/m);
    expect(scrape).toMatch(/^verity_consensus_follower_lag_entries\{peer="\d"\} \d+$/m);

    // The admin API, with the admin identity; refused for a node identity; health says SERVING.
    const cluster = await call(first.leader, AdminClient, "clusterStatus", {});
    expect(cluster).toMatchObject({ self: { nodeId: first.leader.id, state: "leader" } });
    expect((cluster.peers as unknown[]).length).toBe(2);
    await expect(call(first.leader, AdminClient, "nodeStatus", {}, ca.issue("node-9"))).rejects.toMatchObject({
      code: grpc.status.PERMISSION_DENIED, details: expect.stringMatching(/"node-9" has no admin role/),
    });
    await until("health SERVING", async () => ((await call(first.leader, HealthClient, "check", {})).status === 1 ? true : undefined));
    const follower = nodes.find((n) => n !== first.leader)!;
    await expect(call(follower, AdminClient, "transferLeadership", {})).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });
    const moved = await call(first.leader, AdminClient, "transferLeadership", {});
    expect(moved.newLeader).not.toBe(first.leader.id);
    const afterMove = await until("the moved leadership", () => leaderOf(nodes));
    expect(afterMove.leader.id).toBe(moved.newLeader);
    first.leader = afterMove.leader;
    first.view = afterMove.view;

    // kill -9 the leader: the other two elect a new one within a few seconds.
    const killedAt = Date.now();
    first.leader.process!.kill("SIGKILL");
    await exited(first.leader.process!);
    const rest = nodes.filter((n) => n !== first.leader);
    const second = await until("a new leader", () => leaderOf(rest), 10_000);
    expect(second.view).toBeGreaterThan(first.view);
    expect(Date.now() - killedAt).toBeLessThan(10_000);

    // The old leader restarts and rejoins as a follower of the new one.
    start(first.leader, nodes);
    await until("the old leader rejoining", async () => {
      const st = await status(first.leader);
      return st?.state === "follower" && st.leader_id === second.leader.id ? st : undefined;
    });

    // SIGTERM the leader: it transfers leadership first and exits 0.
    const leaving = second.leader;
    leaving.process!.kill("SIGTERM");
    expect(await exited(leaving.process!)).toBe(0);
    expect(leaving.output).toMatch(/"transferred":true/);
    const remaining = nodes.filter((n) => n !== leaving);
    const third = await until("leadership after the handover", () => leaderOf(remaining), 10_000);
    expect(third.leader).not.toBe(leaving);

    // A follower loses its disk: restarted with the same node id and an empty data dir, it
    // rejoins and catches up by itself (the guide's "Single Node Failure" procedure).
    const wiped = remaining.find((n) => n !== third.leader)!;
    wiped.process!.kill("SIGTERM");
    expect(await exited(wiped.process!)).toBe(0);
    rmSync(join(tmp.path, `node${wiped.id}`), { recursive: true, force: true });
    leaving.process = undefined;
    start(leaving, nodes); // bring the third node back too, so the cluster has a quorum without the wiped one
    start(wiped, nodes);
    const leaderStatus = (await status(third.leader))!;
    await until("the wiped follower caught up", async () => {
      const st = await status(wiped);
      return st?.state === "follower" && (st.applied_index as number) >= (leaderStatus.commit_index as number) ? st : undefined;
    });

    for (const n of nodes) {
      n.process!.kill("SIGTERM");
      expect(await exited(n.process!)).toBe(0);
    }
  });
});
