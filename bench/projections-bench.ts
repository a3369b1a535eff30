/**
 * `npm run bench -- projections`: projections on a 3-node cluster of real processes (plaintext
 * loopback, fsync on).
 *
 * - Apply throughput: N events are appended first, then a 2-handler projection is created with
 *   `--from-start`, and the time until every node has applied it is measured (events/s). The limit
 *   it is compared with, in the same run: the same two statements for the same events, straight
 *   into a better-sqlite3 database in one process (no log, no projector).
 * - Query latency while appends run: a point lookup and an aggregate over every row (p50/p99),
 *   through the Query API; compared with the same queries straight on the node's database file.
 *
 * Writes bench/results/projections.json and prints a table.
 */

import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from "node:fs";
import * as net from "node:net";
import { tmpdir, cpus, loadavg } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3-multiple-ciphers";
import { VerityClient } from "../src/client/verity-client.js";
import { AdminApi } from "../src/client/admin-client.js";

const root = join(import.meta.dirname, "..", "..");

/** Bounds of the run. */
const START_WAIT_MS = 30_000;
const APPLY_WAIT_MS = 600_000;
const POLL_MS = 250;

export interface ProjectionsBenchOptions {
  events: number;
  queries: number;
  aggregates: number;
  writers: number;
  resultsDir: string;
}

interface Node {
  id: number;
  client: number;
  cluster: number;
  metrics: number;
  child?: ChildProcess;
  dir: string;
}

async function freePort(): Promise<number> {
  // Below the ephemeral range, like the tests (a restarted node must rebind its port).
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.createServer();
      s.once("error", () => resolve(false));
      s.listen(port, "127.0.0.1", () => s.close(() => resolve(true)));
    });
    if (ok) return port;
  }
  throw new Error("no free port found in 20000-32000");
}

async function until<T>(what: string, probe: () => Promise<T | undefined>, ms: number): Promise<T> {
  const end = Date.now() + ms;
  // Bounded by `ms`.
  for (;;) {
    const v = await probe().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

function summary(samples: number[]): { p50_ms: number; p99_ms: number; n: number } {
  const s = [...samples].sort((a, b) => a - b);
  return { p50_ms: Number(percentile(s, 50).toFixed(3)), p99_ms: Number(percentile(s, 99).toFixed(3)), n: s.length };
}

const MIGRATION = `
CREATE TABLE items (id INTEGER PRIMARY KEY, stream TEXT NOT NULL, n INTEGER NOT NULL, at INTEGER NOT NULL);
CREATE TABLE totals (stream TEXT PRIMARY KEY, items INTEGER NOT NULL, total INTEGER NOT NULL);
`;
const HANDLER_ITEM = "INSERT INTO items (id, stream, n, at) VALUES (:id, :_stream, :n, :_position)";
const HANDLER_TOTAL = "INSERT INTO totals (stream, items, total) VALUES (:_stream, 1, :n) ON CONFLICT (stream) DO UPDATE SET items = items + 1, total = total + excluded.total";
const PROJECTION = `
name = "items"
[[handlers]]
event_type = "ItemAdded"
sql = "${HANDLER_ITEM}"
[[handlers]]
event_type = "ItemAdded"
sql = "${HANDLER_TOTAL.replace(/"/g, '\\"')}"
`;
const STREAMS = 64;

/** The limit: the same two statements per event, straight into SQLite, batched like the projector. */
function directApply(events: number): number {
  const dir = mkdtempSync(join(tmpdir(), "verity-proj-direct-"));
  try {
    const db = new Database(join(dir, "direct.sqlite"));
    db.pragma("journal_mode = WAL");
    db.pragma("synchronous = NORMAL");
    db.exec(MIGRATION);
    const item = db.prepare(HANDLER_ITEM);
    const total = db.prepare(HANDLER_TOTAL);
    const started = performance.now();
    for (let from = 0; from < events; from += 1000) {
      db.transaction(() => {
        for (let id = from; id < Math.min(events, from + 1000); id++) {
          const params = { id, _stream: `s-${id % STREAMS}`, n: id % 97, _position: id + 1 };
          item.run(params);
          total.run(params);
        }
      })();
    }
    const seconds = (performance.now() - started) / 1000;
    db.close();
    return events / seconds;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function projectionsBench(o: ProjectionsBenchOptions): Promise<void> {
  const tmp = mkdtempSync(join(tmpdir(), "verity-proj-bench-"));
  const nodes: Node[] = [];
  const stop = (): void => {
    for (const n of nodes) if (n.child !== undefined && n.child.exitCode === null) n.child.kill("SIGKILL");
  };
  process.once("SIGINT", () => {
    stop();
    process.exit(130);
  });
  try {
    for (let id = 1; id <= 3; id++) nodes.push({ id, client: await freePort(), cluster: await freePort(), metrics: await freePort(), dir: join(tmp, `node${id}`) });
    for (const n of nodes) {
      const peers = nodes.filter((p) => p !== n).map((p) => `127.0.0.1:${p.cluster}`).join(",");
      const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("VERITY_")));
      n.child = spawn(process.execPath, [join(root, "bin", "verity-server.js"), "--node-id", String(n.id), "--data-dir", n.dir,
        "--bind", `127.0.0.1:${n.client}`, "--cluster-address", `127.0.0.1:${n.cluster}`, "--cluster-peers", peers,
        "--metrics-address", `127.0.0.1:${n.metrics}`, "--log-level", "warn"], { stdio: ["ignore", "ignore", "inherit"], env });
    }
    const endpoints = nodes.map((n) => `127.0.0.1:${n.client}`);
    const admin = new AdminApi({ endpoints, tls: undefined });
    await until("the cluster and a tenant", async () => (await admin.call("createTenant", { tenant: "bench" }), true), START_WAIT_MS);
    await admin.call("migrate", { tenant: "bench", name: "001", sql: MIGRATION });
    const client = new VerityClient({ endpoints, attempts: 30 });

    // Load: batches of 100 events from `writers` concurrent writers.
    process.stdout.write(`loading ${o.events} events ...\n`);
    let next = 0;
    const loadStarted = performance.now();
    await Promise.all(Array.from({ length: o.writers }, async () => {
      // Bounded by o.events.
      while (next < o.events) {
        const from = next;
        next += 100;
        const ids = Array.from({ length: Math.min(100, o.events - from) }, (_, i) => from + i);
        await client.append({ tenant: "bench", stream: `s-${from % STREAMS}`, events: ids.map((id) => ({ type: "ItemAdded", data: { id, n: id % 97 } })) });
      }
    }));
    const loadSeconds = (performance.now() - loadStarted) / 1000;

    // Apply: the projection from the start, until every node has applied it.
    const applyStarted = performance.now();
    await admin.call("createProjection", { tenant: "bench", definition: PROJECTION, fromStart: true });
    await until("every node applied the projection", async () => {
      const all = await Promise.all(nodes.map(async (n) => (await new AdminApi({ endpoints: [`127.0.0.1:${n.client}`], tls: undefined }).call("projectionStatus", { tenant: "bench" })).response));
      const done = all.every((s) => (s.projections as { state: string; appliedPosition: number }[]).every((p) => p.state === "running"));
      return done ? all : undefined;
    }, APPLY_WAIT_MS);
    const applySeconds = (performance.now() - applyStarted) / 1000;
    const applyRate = o.events / applySeconds;
    const directRate = directApply(o.events);

    // Queries while appends run.
    let appending = true;
    let appended = 0;
    const background = Promise.all(Array.from({ length: 4 }, async (_, w) => {
      // Bounded by `appending`.
      for (let i = 0; appending; i++) {
        await client.append({ tenant: "bench", stream: `live-${w}`, events: [{ type: "Tick", data: { i } }] });
        appended++;
      }
    }));
    const point: number[] = [];
    const pointLocal: number[] = [];
    for (let i = 0; i < o.queries; i++) {
      const id = (i * 7919) % o.events;
      let t = performance.now();
      await client.query({ tenant: "bench", sql: "SELECT id, stream, n FROM items WHERE id = :id", params: { id } });
      point.push(performance.now() - t);
      t = performance.now();
      await client.query({ tenant: "bench", sql: "SELECT id, stream, n FROM items WHERE id = :id", params: { id }, consistency: "local" });
      pointLocal.push(performance.now() - t);
    }
    const aggregate: number[] = [];
    for (let i = 0; i < o.aggregates; i++) {
      const t = performance.now();
      await client.query({ tenant: "bench", sql: "SELECT stream, COUNT(*) AS items, SUM(n) AS total FROM items GROUP BY stream", limit: 1000 });
      aggregate.push(performance.now() - t);
    }
    appending = false;
    await background;

    // The limit: the same queries straight on node 1's database file.
    const db = new Database(join(nodes[0]!.dir, "projections", "tenant_bench", "projections.sqlite"), { readonly: true });
    const directPoint: number[] = [];
    const directAggregate: number[] = [];
    const pointStmt = db.prepare("SELECT id, stream, n FROM items WHERE id = :id");
    const aggStmt = db.prepare("SELECT stream, COUNT(*) AS items, SUM(n) AS total FROM items GROUP BY stream");
    for (let i = 0; i < o.queries; i++) {
      const t = performance.now();
      pointStmt.all({ id: (i * 7919) % o.events });
      directPoint.push(performance.now() - t);
    }
    for (let i = 0; i < o.aggregates; i++) {
      const t = performance.now();
      aggStmt.all();
      directAggregate.push(performance.now() - t);
    }
    db.close();
    client.close();

    const results = {
      benchmark: "projections",
      date: new Date().toISOString(),
      node: process.version,
      machine: { cpus: cpus().length, load_average_1m: loadavg()[0] },
      settings: { events: o.events, writers: o.writers, queries: o.queries, aggregates: o.aggregates, handlers: 2, nodes: 3, sync_mode: "fsync" },
      load: { events_per_s: Math.round(o.events / loadSeconds), seconds: Number(loadSeconds.toFixed(2)) },
      apply: { events_per_s: Math.round(applyRate), seconds: Number(applySeconds.toFixed(2)), direct_sqlite_events_per_s: Math.round(directRate), ratio_vs_direct: Number((applyRate / directRate).toFixed(3)) },
      query_point_linearizable: summary(point),
      query_point_local: summary(pointLocal),
      query_aggregate_100k: summary(aggregate),
      direct_point: summary(directPoint),
      direct_aggregate: summary(directAggregate),
      appends_during_queries: appended,
    };
    const row = (name: string, s: { p50_ms: number; p99_ms: number }, d?: { p50_ms: number; p99_ms: number }): string =>
      `  ${name.padEnd(34)} p50 ${s.p50_ms.toFixed(2).padStart(8)} ms   p99 ${s.p99_ms.toFixed(2).padStart(8)} ms` +
      (d === undefined ? "" : `   (direct p50 ${d.p50_ms.toFixed(3)} ms, p99 ${d.p99_ms.toFixed(3)} ms)`);
    process.stdout.write(
      [
        `projections on a 3-node cluster (fsync), ${o.events} events, 2 handlers`,
        `  load                                ${results.load.events_per_s} events/s (batches of 100, ${o.writers} writers)`,
        `  apply (rebuild from the start)      ${results.apply.events_per_s} events/s on every node; direct SQLite ${results.apply.direct_sqlite_events_per_s} events/s; ratio ${results.apply.ratio_vs_direct}`,
        row("point lookup (linearizable)", results.query_point_linearizable, results.direct_point),
        row("point lookup (local)", results.query_point_local, results.direct_point),
        row(`aggregate over ${o.events} rows`, results.query_aggregate_100k, results.direct_aggregate),
        `  appends while querying              ${appended}`,
      ].join("\n") + "\n",
    );
    mkdirSync(o.resultsDir, { recursive: true });
    writeFileSync(join(o.resultsDir, "projections.json"), JSON.stringify(results, null, 2) + "\n");
  } finally {
    stop();
    rmSync(tmp, { recursive: true, force: true });
  }
}
