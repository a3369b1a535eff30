/**
 * The data plane on a real 3-node cluster with mutual TLS: appends through any node (followers
 * forward), linearizable and local reads, subscriptions, expected-version races, retried request
 * ids, kill -9 of the leader under load with no acknowledged write lost, TLS refusals per role,
 * bad input with the right status codes, and the `verity` CLI. Every process is stopped by PID.
 */
import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TestCa, type CertFiles } from "../helpers/certs.js";
import { tempDir } from "../helpers/log-fixtures.js";
import { ProcessCluster, exited, until, type ProcessNode } from "../helpers/process-cluster.js";
import { VerityClient, VerityClientError, type StoredEvent } from "../../src/client/verity-client.js";
import { AdminApi } from "../../src/client/admin-client.js";

const run = promisify(execFile);
const root = join(import.meta.dirname, "..", "..");
const tmp = tempDir("data-plane");
const ca = new TestCa(join(tmp.path, "ca"));
const procs = new ProcessCluster(tmp.path, ca);
const clients = [
  { identity: "writer", tenants: ["acme", "shared", "nobody-made-me"] },
  { identity: "other", tenants: ["globex", "shared"] },
];
let nodes: ProcessNode[] = [];
let writer: CertFiles;

function clientFor(cert: CertFiles, endpoints: ProcessNode[] = nodes, caFile = ca.cert): VerityClient {
  return new VerityClient({ endpoints: endpoints.map((n) => `127.0.0.1:${n.client}`), tls: { ca: caFile, cert: cert.cert, key: cert.key }, attempts: 30 });
}

const text = (e: StoredEvent): string => Buffer.from(e.data).toString("utf8");

async function expectCode(p: Promise<unknown>, code: number, message: RegExp): Promise<void> {
  const e = await p.then(() => undefined, (err: unknown) => err);
  expect(e, "the call should fail").toBeInstanceOf(VerityClientError);
  expect(grpc.status[(e as VerityClientError).code]).toBe(grpc.status[code]);
  expect((e as VerityClientError).message).toMatch(message);
}

beforeAll(async () => {
  nodes = [await procs.addNode(1), await procs.addNode(2), await procs.addNode(3)];
  writer = ca.issue("writer");
  for (const n of nodes) procs.start(n, { clients });
  await until("a leader", () => procs.leaderOf(nodes));
  await procs.createTenants(nodes, "acme", "globex", "shared");
}, 60_000);

afterAll(() => {
  procs.killAll();
  tmp.cleanup();
});

describe("the Client API on a 3-node cluster with mutual TLS", () => {
  it("appends through a follower (forwarded), reads back linearizably from every node, and locally", async () => {
    const { leader } = (await procs.leaderOf(nodes))!;
    const follower = nodes.find((n) => n !== leader)!;
    const c = clientFor(writer, [follower]);
    const r = await c.append({ tenant: "acme", stream: "order-1", events: [{ type: "Placed", data: { total: 9 } }, { type: "Paid", data: {} }], expectedVersion: "no-stream" });
    expect(r).toMatchObject({ firstVersion: 0, lastVersion: 1, deduplicated: false });
    expect(r.lastPosition).toBe(r.firstPosition + 1);
    c.close();
    for (const n of nodes) {
      const nc = clientFor(writer, [n]);
      const read = await nc.read({ tenant: "acme", stream: "order-1" });
      expect(read.events.map((e) => [e.position, e.version, e.type, text(e)])).toEqual([
        [r.firstPosition, 0, "Placed", '{"total":9}'],
        [r.lastPosition, 1, "Paid", "{}"],
      ]);
      const local = await until("the local read on every node", async () => {
        const l = await nc.read({ tenant: "acme", stream: "order-1", consistency: "local" });
        return l.events.length === 2 ? l : undefined;
      });
      expect(local.events[0]!.eventId).toBe(read.events[0]!.eventId);
      nc.close();
    }
    const scrape = await (await fetch(`http://127.0.0.1:${follower.metrics}/metrics`)).text();
    expect(scrape).toMatch(/^verity_forwarded_writes_total [1-9]/m);
    expect(scrape).toMatch(/^verity_write_duration_seconds_count\{status="OK"\} [1-9]/m);
    expect(scrape).toMatch(/^verity_query_duration_seconds_count\{method="read",status="OK"\} [1-9]/m);
    expect(scrape).toMatch(/^verity_active_tenants 3$/m);
  });

  it("decides concurrent appends with the same expected version: exactly one wins", async () => {
    const c = clientFor(writer);
    await c.append({ tenant: "acme", stream: "race", events: [{ type: "Opened", data: {} }] });
    const results = await Promise.allSettled(
      Array.from({ length: 8 }, (_, i) => clientFor(writer, [nodes[i % 3]!]).append({ tenant: "acme", stream: "race", events: [{ type: "Claimed", data: { by: i } }], expectedVersion: 0 })),
    );
    const won = results.filter((r) => r.status === "fulfilled");
    const lost = results.filter((r): r is PromiseRejectedResult => r.status === "rejected");
    expect(won).toHaveLength(1);
    expect(lost).toHaveLength(7);
    for (const l of lost) {
      expect((l.reason as VerityClientError).code).toBe(grpc.status.FAILED_PRECONDITION);
      expect((l.reason as VerityClientError).message).toMatch(/wrong expected version: stream "race" is at version 1/);
    }
    const read = await c.read({ tenant: "acme", stream: "race" });
    expect(read.events.map((e) => e.type)).toEqual(["Opened", "Claimed"]);
    c.close();
  });

  it("appends a retried request id once, whichever node the retry reaches", async () => {
    const answers = [];
    for (const n of nodes) {
      const c = clientFor(writer, [n]);
      answers.push(await c.append({ tenant: "acme", stream: "retry", events: [{ type: "Once", data: {} }], requestId: "req-42" }));
      c.close();
    }
    expect(answers.map((a) => a.deduplicated)).toEqual([false, true, true]);
    expect(new Set(answers.map((a) => a.firstPosition)).size).toBe(1);
    const c = clientFor(writer);
    expect((await c.read({ tenant: "acme", stream: "retry" })).events).toHaveLength(1);
    c.close();
  });

  it("subscribes: catches up, follows live, and filters by stream", async () => {
    const c = clientFor(writer);
    const before = await c.append({ tenant: "acme", stream: "sub", events: [{ type: "A", data: 1 }] });
    const abort = new AbortController();
    const seen: StoredEvent[] = [];
    const done = (async () => {
      for await (const e of c.subscribe({ tenant: "acme", stream: "sub", fromPosition: before.firstPosition, signal: abort.signal })) {
        seen.push(e);
        if (seen.length === 3) abort.abort();
      }
    })();
    await c.append({ tenant: "acme", stream: "elsewhere", events: [{ type: "Other", data: 0 }] });
    await c.append({ tenant: "acme", stream: "sub", events: [{ type: "B", data: 2 }, { type: "C", data: 3 }] });
    await done;
    expect(seen.map((e) => [e.type, e.version])).toEqual([["A", 0], ["B", 1], ["C", 2]]);
    c.close();
  });

  it("refuses callers by role: no certificate, another CA, no client role, a tenant not granted", async () => {
    const other = ca.issue("other");
    const nobody = ca.issue("nobody");
    const elsewhere = new TestCa(join(tmp.path, "other-ca"), "other-ca");
    const foreign = elsewhere.issue("writer");
    const one = [nodes[0]!];
    const metricsBefore = await (await fetch(`http://127.0.0.1:${nodes[0]!.metrics}/metrics`)).text();
    const failuresBefore = Number(/^verity_auth_failures_total\{port="client"\} (\d+)/m.exec(metricsBefore)?.[1] ?? 0);

    const a = { tenant: "acme", stream: "s", events: [{ type: "X", data: {} }] };
    const noRole = clientFor(nobody, one);
    await expectCode(noRole.append(a), grpc.status.PERMISSION_DENIED, /"nobody" has no client role/);
    noRole.close();
    const wrongTenant = clientFor(other, one);
    await expectCode(wrongTenant.read({ tenant: "acme", stream: "order-1" }), grpc.status.PERMISSION_DENIED, /"other" may not use tenant "acme"/);
    expect((await wrongTenant.append({ ...a, tenant: "globex" })).firstVersion).toBe(0);
    wrongTenant.close();
    // A certificate from another CA never reaches a handler: the handshake fails.
    const strange = new VerityClient({ endpoints: [`127.0.0.1:${nodes[0]!.client}`], tls: { ca: ca.cert, cert: foreign.cert, key: foreign.key }, attempts: 1 });
    await expectCode(strange.append(a), grpc.status.UNAVAILABLE, /./);
    strange.close();
    // Without a client certificate: the handshake fails too.
    const bare = grpc.credentials.createSsl(ca.pem());
    const { CLIENT_SERVICE } = await import("../../src/server/client-service.js");
    const Stub = grpc.makeGenericClientConstructor(CLIENT_SERVICE, "Client");
    const stub = new Stub(`localhost:${nodes[0]!.client}`, bare) as unknown as { append(r: object, o: object, cb: (e: grpc.ServiceError | null) => void): void; close(): void };
    const err = await new Promise<grpc.ServiceError | null>((r) => stub.append({ tenant: "acme", stream: "s", events: [{ type: "X" }] }, { deadline: new Date(Date.now() + 5000) }, r));
    stub.close();
    expect(err?.code).toBe(grpc.status.UNAVAILABLE);

    const metricsAfter = await (await fetch(`http://127.0.0.1:${nodes[0]!.metrics}/metrics`)).text();
    const failuresAfter = Number(/^verity_auth_failures_total\{port="client"\} (\d+)/m.exec(metricsAfter)?.[1] ?? 0);
    expect(failuresAfter - failuresBefore).toBeGreaterThanOrEqual(4);
  });

  it("answers bad input with the right status code and a message that says what to do", async () => {
    const c = clientFor(writer);
    const big = "x".repeat(1024 * 1024 + 1);
    await expectCode(c.append({ tenant: "acme", stream: "s", events: [{ type: "Big", data: big }] }), grpc.status.RESOURCE_EXHAUSTED, /more than limits\.max_record_size \(1048576 bytes\)/);
    const batch = Array.from({ length: 11 }, () => ({ type: "Chunk", data: "y".repeat(1000 * 1000) }));
    await expectCode(c.append({ tenant: "acme", stream: "s", events: batch }), grpc.status.RESOURCE_EXHAUSTED, /more than limits\.max_batch_size/);
    await expectCode(c.append({ tenant: "no spaces", stream: "s", events: [{ type: "X", data: {} }] }), grpc.status.INVALID_ARGUMENT, /not a valid tenant id/);
    await expectCode(c.append({ tenant: "acme", stream: "", events: [{ type: "X", data: {} }] }), grpc.status.INVALID_ARGUMENT, /not a valid stream name/);
    await expectCode(c.append({ tenant: "acme", stream: "s", events: [] }), grpc.status.INVALID_ARGUMENT, /has no events/);
    await expectCode(c.append({ tenant: "nobody-made-me", stream: "s", events: [{ type: "X", data: {} }] }), grpc.status.NOT_FOUND, /tenant "nobody-made-me" does not exist: create it first/);
    await expectCode(c.append({ tenant: "acme", stream: "s", events: [{ type: "", data: {} }] }), grpc.status.INVALID_ARGUMENT, /type "" must be/);
    // Nothing of the refused appends reached the stream.
    expect((await c.read({ tenant: "acme", stream: "s" })).events).toHaveLength(0);
    c.close();
  });

  it("the verity CLI appends, reads and reports refusals with exit codes", async () => {
    const env = {
      ...process.env, VERITY_ENDPOINTS: nodes.map((n) => `127.0.0.1:${n.client}`).join(","),
      VERITY_TLS_CA: ca.cert, VERITY_TLS_CERT: writer.cert, VERITY_TLS_KEY: writer.key,
    };
    const verity = (args: string[], input?: string) => {
      const child = run(process.execPath, [join(root, "bin", "verity.js"), ...args], { env });
      if (input !== undefined) child.child.stdin!.end(input);
      return child.then((r) => ({ code: 0, ...r }), (e: { code: number; stdout: string; stderr: string }) => e);
    };
    const one = await verity(["append", "--tenant", "acme", "--stream", "cli", "--type", "Hello", "--data", '{"n": 1}']);
    expect(one.stdout).toMatch(/^appended to acme\/cli: position \d+, version 0\n$/);
    const lines = Array.from({ length: 150 }, (_, i) => JSON.stringify({ type: "Bulk", data: { i } })).join("\n") + "\n";
    const bulk = await verity(["append", "--tenant", "acme", "--stream", "cli", "--json"], lines);
    expect(JSON.parse(bulk.stdout)).toMatchObject({ events: 150, batches: 2 });
    const read = await verity(["read", "--tenant", "acme", "--stream", "cli", "--from", "149", "--json"]);
    expect(read.stdout.trim().split("\n").map((l) => JSON.parse(l) as { version: number; data: unknown })).toEqual([
      expect.objectContaining({ version: 149, data: { i: 148 } }),
      expect.objectContaining({ version: 150, data: { i: 149 } }),
    ]);
    const stale = await verity(["append", "--tenant", "acme", "--stream", "cli", "--type", "X", "--data", "1", "--expected-version", "3"]);
    expect(stale.code).toBe(1);
    expect(stale.stderr).toMatch(/wrong expected version: stream "cli" is at version 150/);
    const usage = await verity(["append", "--tenant", "acme", "--stream", "cli", "--type", "X", "--data", "{oops"]);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toMatch(/--data is not valid JSON/);
  });

  it("cluster readonly: a replicated write freeze refuses appends with the reason; reads go on", async () => {
    const admin = new AdminApi({ endpoints: nodes.map((n) => `127.0.0.1:${n.client}`), tls: { ca: ca.cert, ...procs.admin } });
    const c = new VerityClient({ endpoints: nodes.map((n) => `127.0.0.1:${n.client}`), tls: { ca: ca.cert, cert: writer.cert, key: writer.key }, attempts: 1 });
    await c.append({ tenant: "acme", stream: "freeze", events: [{ type: "Before", data: {} }] });
    await admin.call("setReadOnly", { on: true, reason: "disk replacement" });
    for (const n of nodes) {
      const one = new VerityClient({ endpoints: [`127.0.0.1:${n.client}`], tls: { ca: ca.cert, cert: writer.cert, key: writer.key }, attempts: 1 });
      await expectCode(one.append({ tenant: "acme", stream: "freeze", events: [{ type: "During", data: {} }] }), grpc.status.UNAVAILABLE, /read-only for maintenance \(disk replacement\)/);
      expect((await one.read({ tenant: "acme", stream: "freeze" })).events.map((e) => e.type)).toEqual(["Before"]);
      one.close();
    }
    expect((await admin.call("nodeStatus", {})).response).toMatchObject({ readOnly: true, readOnlyReason: "disk replacement" });
    await admin.call("setReadOnly", { on: false });
    await c.append({ tenant: "acme", stream: "freeze", events: [{ type: "After", data: {} }] });
    expect((await c.read({ tenant: "acme", stream: "freeze" })).events.map((e) => e.type)).toEqual(["Before", "After"]);
    c.close();
  });

  it("loses no acknowledged append when the leader is killed with -9 under load", async () => {
    const c = clientFor(writer);
    const acked: { position: number; n: number }[] = [];
    let stop = false;
    const failures: string[] = [];
    const writers = Array.from({ length: 4 }, async (_, w) => {
      // Bounded by `stop`, set after the failover below.
      for (let n = 0; !stop; n++) {
        try {
          const r = await c.append({ tenant: "acme", stream: `load-${w}`, events: [{ type: "Tick", data: { w, n } }] });
          acked.push({ position: r.firstPosition, n });
        } catch (e) {
          failures.push(String(e));
        }
      }
    });
    await until("some acknowledged appends", async () => (acked.length >= 20 ? true : undefined));
    const { leader, view } = (await procs.leaderOf(nodes))!;
    leader.process!.kill("SIGKILL");
    await exited(leader.process!);
    const rest = nodes.filter((n) => n !== leader);
    await until("a new leader", async () => {
      const l = await procs.leaderOf(rest);
      return l !== undefined && l.view > view ? l : undefined;
    });
    const ackedAtFailover = acked.length;
    await until("appends going on under the new leader", async () => (acked.length >= ackedAtFailover + 20 ? true : undefined));
    stop = true;
    await Promise.all(writers);
    procs.start(leader, { clients });
    await until("the old leader back", async () => ((await procs.status(leader))?.state === "follower" ? true : undefined));

    // Every acknowledged append is there, on every node, exactly once.
    for (const n of nodes) {
      const nc = clientFor(writer, [n]);
      const all: StoredEvent[] = [];
      for (let from = 0; ; ) {
        const page = await nc.readAll({ tenant: "acme", fromPosition: from, limit: 10_000 });
        all.push(...page.events);
        if (page.events.length < 10_000) break;
        from = page.events[page.events.length - 1]!.position + 1;
      }
      const positions = new Set(all.filter((e) => e.stream.startsWith("load-")).map((e) => e.position));
      const missing = acked.filter((a) => !positions.has(a.position));
      expect(missing, `node ${n.id} misses acknowledged appends`).toEqual([]);
      nc.close();
    }
    expect(failures.length).toBeLessThan(acked.length);
    c.close();
  });
});
