/**
 * Projections on a real 3-node cluster with mutual TLS: a migration and two projections, a few
 * thousand events across streams, and the same rows on every node (equal digests and query
 * results); kill -9 of a node while it applies, restarted to the same digest; a rebuild to the
 * same digest; a failing handler stops only its projection, on every node, with the error; a
 * failing migration changes nothing; queries are read-only and confined to their tenant; a long
 * query does not disturb the cluster.
 */
import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import Database from "better-sqlite3-multiple-ciphers";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TestCa, type CertFiles } from "../helpers/certs.js";
import { tempDir } from "../helpers/log-fixtures.js";
import { AdminClient, ProcessCluster, exited, until, type ProcessNode } from "../helpers/process-cluster.js";
import { VerityClient, type NewEvent } from "../../src/client/verity-client.js";

const run = promisify(execFile);
const root = join(import.meta.dirname, "..", "..");
const tmp = tempDir("projections");
const ca = new TestCa(join(tmp.path, "ca"));
const procs = new ProcessCluster(tmp.path, ca);
const clients = [
  { identity: "hospital-app", tenants: ["hospital"] },
  { identity: "other-app", tenants: ["other"] },
];
let nodes: ProcessNode[] = [];
let app: CertFiles;

const PATIENTS = `
name = "patients"
[[handlers]]
event_type = "PatientAdmitted"
sql = "INSERT INTO patients (id, name, ward, admitted_at) VALUES (:id, :name, :ward, :_position)"
[[handlers]]
event_type = "PatientMoved"
sql = "UPDATE patients SET ward = :to.ward WHERE id = :id"
[[handlers]]
event_type = "PatientDischarged"
sql = "DELETE FROM patients WHERE id = :id"
`;

const WARDS = `
name = "ward_counts"
[[handlers]]
event_type = "PatientAdmitted"
sql = "INSERT INTO ward_counts (ward, admitted) VALUES (:ward, 1) ON CONFLICT (ward) DO UPDATE SET admitted = admitted + 1"
`;

/** Queries stop after 10 s here, so the long-query case takes exactly that. */
const QUERY_LIMIT = { VERITY_LIMITS_MAX_QUERY_DURATION: "10s" };

const admin = (node: ProcessNode, method: string, request: object) => procs.call(node, AdminClient, method, request);

async function leader(): Promise<ProcessNode> {
  return (await until("a leader", () => procs.leaderOf(nodes.filter((n) => n.process !== undefined && n.process.exitCode === null))))!.leader;
}

/** Every running node's projection status once all of them reached the same applied position. */
async function settledStatus(tenant: string, on: ProcessNode[] = nodes): Promise<Record<string, unknown>[]> {
  return until("every node at the same projection position", async () => {
    const all = await Promise.all(on.map((n) => admin(n, "projectionStatus", { tenant }).catch(() => undefined)));
    if (all.some((s) => s === undefined)) return undefined;
    const positions = new Set(all.map((s) => s!.appliedPosition));
    const commits = new Set(all.map((s) => s!.commitIndex));
    return positions.size === 1 && commits.size === 1 && [...positions][0] === [...commits][0] ? (all as Record<string, unknown>[]) : undefined;
  }, 30_000);
}

beforeAll(async () => {
  nodes = [await procs.addNode(1), await procs.addNode(2), await procs.addNode(3)];
  app = ca.issue("hospital-app");
  for (const n of nodes) procs.start(n, { clients, env: QUERY_LIMIT });
  await until("a leader", () => procs.leaderOf(nodes));
  await procs.createTenants(nodes, "hospital", "other");
}, 60_000);

afterAll(() => {
  procs.killAll();
  tmp.cleanup();
});

describe("projections on a 3-node cluster", () => {
  it("applies migrations and projections identically on every node, through kill -9 and rebuild", async () => {
    const l = await leader();
    const migrated = await admin(l, "migrate", {
      tenant: "hospital", name: "001_init",
      sql: "CREATE TABLE patients (id INTEGER PRIMARY KEY, name TEXT NOT NULL, ward TEXT, admitted_at INTEGER); CREATE TABLE ward_counts (ward TEXT PRIMARY KEY, admitted INTEGER NOT NULL);",
    });
    expect(migrated.message).toMatch(/migration "001_init" applied at position \d+/);
    // A failing migration is refused as a whole: the first statement's table does not appear.
    await expect(admin(l, "migrate", { tenant: "hospital", name: "002_bad", sql: "CREATE TABLE half (a INT); CREATE TABLE patients (x INT);" })).rejects.toMatchObject({
      code: grpc.status.FAILED_PRECONDITION, details: expect.stringMatching(/failed on every node and changed nothing: table patients already exists/),
    });
    await admin(l, "createProjection", { tenant: "hospital", definition: PATIENTS });
    await admin(l, "createProjection", { tenant: "hospital", definition: WARDS });
    await expect(admin(l, "createProjection", { tenant: "hospital", definition: WARDS })).rejects.toMatchObject({ code: grpc.status.ALREADY_EXISTS });

    const c = new VerityClient({ endpoints: nodes.map((n) => `127.0.0.1:${n.client}`), tls: { ca: ca.cert, ...app }, attempts: 40 });
    const wards = ["A", "B", "C", "D"];
    const write = async (from: number, to: number) => {
      for (let id = from; id < to; id += 50) {
        // 50 streams per round, one batch of events each.
        await Promise.all(Array.from({ length: 50 }, (_, k) => {
          const pid = id + k;
          const events: NewEvent[] = [{ type: "PatientAdmitted", data: { id: pid, name: `patient ${pid}`, ward: wards[pid % 4] } }];
          if (pid % 3 === 0) events.push({ type: "PatientMoved", data: { id: pid, to: { ward: wards[(pid + 1) % 4] } } });
          if (pid % 5 === 0) events.push({ type: "PatientDischarged", data: { id: pid } });
          return c.append({ tenant: "hospital", stream: `patient-${pid % 90}`, events });
        }));
      }
    };
    await write(0, 1500);
    const first = await settledStatus("hospital");
    const digests = new Set(first.map((s) => s.digest));
    expect(digests.size, JSON.stringify(first.map((s) => [s.appliedPosition, s.digest]))).toBe(1);
    for (const s of first) {
      expect((s.projections as { name: string; state: string }[]).map((p) => [p.name, p.state])).toEqual([["patients", "running"], ["ward_counts", "running"]]);
    }
    const schema = await admin(nodes[0]!, "showSchema", { tenant: "hospital" });
    expect((schema.tables as { name: string }[]).map((t) => t.name)).toEqual(["patients", "ward_counts"]);
    expect((schema.migrations as { name: string; outcome: string }[]).map((m) => [m.name, m.outcome.split(":")[0]])).toEqual([["001_init", "applied"], ["002_bad", "failed"]]);
    const patientsTable = (schema.tables as { name: string; rows: number }[]).find((t) => t.name === "patients")!;
    expect(patientsTable.rows).toBe(1500 - 300); // every fifth patient was discharged

    // kill -9 a follower while events are applied, restart it: it reaches the same digest.
    const victim = nodes.find((n) => n !== l)!;
    const writing = write(1500, 3000);
    await new Promise((r) => setTimeout(r, 300));
    victim.process!.kill("SIGKILL");
    await exited(victim.process!);
    await writing;
    procs.start(victim, { clients, env: QUERY_LIMIT });
    const second = await settledStatus("hospital");
    expect(new Set(second.map((s) => s.digest)).size, JSON.stringify(second.map((s) => [s.appliedPosition, s.digest]))).toBe(1);

    // A rebuild replays from the log to the same digest, on every node.
    const before = second[0]!.digest;
    const l2 = await leader();
    await admin(l2, "rebuildProjection", { tenant: "hospital", projection: "ward_counts" });
    const third = await until("rebuilt everywhere", async () => {
      const all = await settledStatus("hospital");
      return all.every((s) => (s.projections as { state: string }[]).every((p) => p.state === "running")) ? all : undefined;
    });
    const commitBefore = Number(second[0]!.commitIndex);
    expect(Number(third[0]!.commitIndex)).toBeGreaterThan(commitBefore); // the rebuild is a log entry
    expect(new Set(third.map((s) => s.digest))).toEqual(new Set([before]));

    // A handler that fails stops just its projection, at the same event on every node.
    await c.append({ tenant: "hospital", stream: "patient-x", events: [{ type: "PatientAdmitted", data: { id: 99_999, ward: "Z" } }] }); // no name: NOT NULL
    const failed = await until("the failure everywhere", async () => {
      const all = await settledStatus("hospital");
      return all.every((s) => (s.projections as { name: string; state: string }[]).find((p) => p.name === "patients")?.state === "failed") ? all : undefined;
    });
    for (const s of failed) {
      const projections = s.projections as { name: string; state: string; error: string; errorPosition: number }[];
      expect(projections.find((p) => p.name === "ward_counts")!.state).toBe("running");
      const p = projections.find((x) => x.name === "patients")!;
      expect(p.error).toMatch(/event PatientAdmitted \(stream patient-x, version 0\): NOT NULL constraint failed: patients.name/);
      expect(p.errorPosition).toBe((failed[0]!.projections as { name: string; errorPosition: number }[]).find((x) => x.name === "patients")!.errorPosition);
    }
    expect(new Set(failed.map((s) => s.digest)).size).toBe(1);
    // The fix: a migration and a rebuild.
    await admin(await leader(), "migrate", {
      tenant: "hospital", name: "003_nullable",
      sql: "CREATE TABLE p2 (id INTEGER PRIMARY KEY, name TEXT, ward TEXT, admitted_at INTEGER); INSERT INTO p2 SELECT * FROM patients; DROP TABLE patients; ALTER TABLE p2 RENAME TO patients;",
    });
    await admin(await leader(), "rebuildProjection", { tenant: "hospital", projection: "patients" });
    const fixed = await until("fixed everywhere", async () => {
      const all = await settledStatus("hospital");
      return all.every((s) => (s.projections as { state: string }[]).every((p) => p.state === "running")) ? all : undefined;
    });
    expect(new Set(fixed.map((s) => s.digest)).size).toBe(1);
    // The same query answers the same on every node.
    const answers = await Promise.all(nodes.map(async (n) => {
      const nc = new VerityClient({ endpoints: [`127.0.0.1:${n.client}`], tls: { ca: ca.cert, ...app }, attempts: 40 });
      const r = await nc.query({ tenant: "hospital", sql: "SELECT ward, COUNT(*) AS n, SUM(id) AS ids FROM patients GROUP BY ward ORDER BY ward" });
      const point = await nc.query({ tenant: "hospital", sql: "SELECT id, name, ward FROM patients WHERE id = :id", params: { id: 7 } });
      nc.close();
      return JSON.stringify([r.columns, r.rows, point.rows]);
    }));
    expect(new Set(answers).size).toBe(1);
    expect(JSON.parse(answers[0]!)[2]).toEqual([[7, "patient 7", "D"]]);
    // verify --data-dir on a stopped node: the log, and a replay that reproduces the projections.
    const stopped = nodes.find((n) => n !== l2 && n !== victim) ?? victim;
    stopped.process!.kill("SIGTERM");
    expect(await exited(stopped.process!)).toBe(0);
    const verify = () =>
      run(process.execPath, [join(root, "bin", "verity-admin.js"), "verify", "--data-dir", join(tmp.path, `node${stopped.id}`), "--json"]).then(
        (r) => ({ code: 0, out: JSON.parse(r.stdout) as { ok: boolean; projections: { tenants: { tenant: string; status: string }[] } } }),
        (e: { code: number; stdout: string }) => ({ code: e.code, out: JSON.parse(e.stdout) as { ok: boolean; projections: { tenants: { tenant: string; status: string }[] } } }),
      );
    const good = await verify();
    expect(good.code).toBe(0);
    expect(good.out.projections.tenants.find((t) => t.tenant === "hospital")!.status).toBe("ok");
    const tampered = new Database(join(tmp.path, `node${stopped.id}`, "projections", "tenant_hospital", "projections.sqlite"));
    tampered.prepare("UPDATE ward_counts SET admitted = admitted + 1").run();
    tampered.close();
    const bad = await verify();
    expect(bad.code).toBe(1);
    expect(bad.out.projections.tenants.find((t) => t.tenant === "hospital")!.status).toBe("replay-mismatch");
    procs.start(stopped, { clients, env: QUERY_LIMIT });
    await until("the stopped node back", async () => ((await procs.status(stopped))?.state === "follower" ? true : undefined));

    const tenant = await admin(nodes[0]!, "showTenant", { tenant: "hospital" });
    expect(tenant).toMatchObject({ tenant: "hospital", projections: ["patients", "ward_counts"], streams: 91 });
    c.close();
  });

  it("refuses every query that is not one read-only SELECT of the caller's own tenant", async () => {
    const c = new VerityClient({ endpoints: nodes.map((n) => `127.0.0.1:${n.client}`), tls: { ca: ca.cert, ...app }, attempts: 40 });
    const refused = async (sql: string, code: number, message: RegExp) => {
      const e = await c.query({ tenant: "hospital", sql }).then(() => undefined, (err: unknown) => err);
      expect(e, sql).toMatchObject({ code });
      expect((e as Error).message, sql).toMatch(message);
    };
    await refused("DELETE FROM patients", grpc.status.PERMISSION_DENIED, /cannot write/);
    await refused("INSERT INTO patients (id, name) VALUES (1, 'x')", grpc.status.PERMISSION_DENIED, /cannot write/);
    await refused("DROP TABLE patients", grpc.status.PERMISSION_DENIED, /./);
    await refused("ATTACH DATABASE '/tmp/x.db' AS x", grpc.status.PERMISSION_DENIED, /ATTACH/);
    await refused("PRAGMA journal_mode = DELETE", grpc.status.PERMISSION_DENIED, /PRAGMA|pragma/);
    await refused("SELECT load_extension('/tmp/evil')", grpc.status.PERMISSION_DENIED, /extension/);
    await refused("SELECT 1; SELECT 2", grpc.status.INVALID_ARGUMENT, /more than one statement/);
    await refused("SELEC nonsense", grpc.status.INVALID_ARGUMENT, /./);
    // Another tenant's client cannot read this tenant's projections, and vice versa.
    const other = ca.issue("other-app");
    const oc = new VerityClient({ endpoints: nodes.map((n) => `127.0.0.1:${n.client}`), tls: { ca: ca.cert, ...other }, attempts: 5 });
    await expect(oc.query({ tenant: "hospital", sql: "SELECT * FROM patients" })).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED });
    // Its own tenant has no tables: the hospital's are not visible through it.
    await expect(oc.query({ tenant: "other", sql: "SELECT * FROM patients" })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT, message: expect.stringMatching(/no such table: patients/) });
    oc.close();
    c.close();
  });

  it("a 10-second query is stopped at max_query_duration and causes no election", async () => {
    const l = await leader();
    const before = (await procs.status(l))!;
    const c = new VerityClient({ endpoints: [`127.0.0.1:${l.client}`], tls: { ca: ca.cert, ...app }, attempts: 1 });
    const started = Date.now();
    const slow = c.query({ tenant: "hospital", consistency: "local", sql: "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT COUNT(*) FROM n" });
    // Appends go on meanwhile.
    for (let i = 0; i < 20; i++) await c.append({ tenant: "hospital", stream: "during-query", events: [{ type: "Tick", data: { i } }] });
    const e = await slow.then(() => undefined, (err: unknown) => err);
    expect(e, `${String(e)}\n${l.output.slice(-3000)}`).toMatchObject({ code: grpc.status.DEADLINE_EXCEEDED });
    expect(Date.now() - started).toBeGreaterThanOrEqual(9_500);
    const after = (await procs.status(l))!;
    expect(after).toMatchObject({ state: "leader", view: before.view });
    c.close();
  }, 60_000);
});
