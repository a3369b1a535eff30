/**
 * verity-admin's tenant, schema and projection commands against a real 3-node cluster with mutual
 * TLS, run as processes, as the operations guide uses them: create a tenant; migrate (one that
 * applies, one that fails and changes nothing); schema show; projection create from a TOML file;
 * events appended with the client library; projection status (running, positions, lag); a handler
 * failure (an event without a NOT NULL column) that status reports with exit 1; a rebuild that
 * fails again; a fixing migration and `projection rebuild --wait` until it runs again (progress
 * lines, and a bar on a terminal); the same digest on every node; tenant list and show; the --json
 * forms. Writes list the followers first in --endpoints, so each one proves that the Admin API
 * moves on to the leader. Every process is stopped by PID (ProcessCluster.killAll).
 */
import { spawn, spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TestCa, type CertFiles } from "../helpers/certs.js";
import { tempDir } from "../helpers/log-fixtures.js";
import { ProcessCluster, exited, until, type ProcessNode } from "../helpers/process-cluster.js";
import { VerityClient } from "../../src/client/verity-client.js";

const root = join(import.meta.dirname, "..", "..");
const tmp = tempDir("admin-tenants");
const ca = new TestCa(join(tmp.path, "ca"));
const cluster = new ProcessCluster(tmp.path, ca);
const ENV = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith("VERITY_")));
const TENANT = "123";
let nodes: ProcessNode[] = [];
let app: CertFiles;
/** Followers first, then the leader: what writes are sent to. */
let writeEndpoints: string;
/** The leader first: reads see every write answered so far. */
let readEndpoints: string;

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

const endpointOf = (n: ProcessNode): string => `127.0.0.1:${n.client}`;
const tlsArgs = (): string[] => ["--tls-ca", ca.cert, "--tls-cert", cluster.admin.cert, "--tls-key", cluster.admin.key];

/** Runs verity-admin (stdin, stdout and stderr not terminals); `endpoints` defaults to the read order. */
function admin(args: string[], endpoints = readEndpoints): Promise<Ran> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [join(root, "bin", "verity-admin.js"), ...args, "--endpoints", endpoints, ...tlsArgs()],
      { cwd: tmp.path, env: ENV, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), 90_000);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, stdout, stderr });
    });
  });
}

const write = (args: string[]): Promise<Ran> => admin(args, writeEndpoints);

function onlyJson<T = Record<string, unknown>>(r: Ran): T {
  const lines = r.stdout.trim().split("\n");
  expect(lines, r.stdout + r.stderr).toHaveLength(1);
  return JSON.parse(lines[0]!) as T;
}

function file(name: string, text: string): string {
  const path = join(tmp.path, name);
  writeFileSync(path, text);
  return path;
}

interface Projection { name: string; state: string; appliedPosition: number; lag: number; startPosition: number; eventTypes: string[]; errorPosition: number; error: string }
interface Status { tenant: string; projections: Projection[]; appliedPosition: number; commitIndex: number; digest: string; endpoint: string }

/** projection status --json, polled until `ready` holds. */
async function statusWhen(ready: (s: Status) => boolean, endpoints = readEndpoints): Promise<{ status: Status; code: number }> {
  return until("projection status", async () => {
    const r = await admin(["projection", "status", "--tenant", TENANT, "--json"], endpoints);
    const status = onlyJson<Status>(r);
    return ready(status) ? { status, code: r.code } : undefined;
  }, 30_000);
}

beforeAll(async () => {
  nodes = [await cluster.addNode(1), await cluster.addNode(2), await cluster.addNode(3)];
  app = ca.issue("app");
  for (const n of nodes) cluster.start(n, { clients: [{ identity: "app", tenants: [TENANT] }] });
  const { leader } = await until("a leader", () => cluster.leaderOf(nodes));
  const followers = nodes.filter((n) => n !== leader);
  writeEndpoints = [...followers, leader].map(endpointOf).join(",");
  readEndpoints = [leader, ...followers].map(endpointOf).join(",");
}, 60_000);

afterAll(async () => {
  for (const n of nodes) {
    if (n.process !== undefined && n.process.exitCode === null) n.process.kill("SIGTERM");
  }
  await Promise.all(nodes.map((n) => (n.process === undefined ? undefined : Promise.race([exited(n.process), new Promise((r) => setTimeout(r, 5_000))]))));
  cluster.killAll();
  tmp.cleanup();
});

const PATIENTS_TOML = `name = "patients"
[[handlers]]
event_type = "PatientAdmitted"
sql = "INSERT INTO patients (id, name, ward) VALUES (:id, :name, :ward)"
[[handlers]]
event_type = "PatientDischarged"
sql = "DELETE FROM patients WHERE id = :id"
`;

describe("verity-admin tenants, schema and projections on a 3-node cluster", () => {
  it("creates a tenant, migrates, shows the schema, and leaves a failed migration without effect", async () => {
    const created = await write(["tenant", "create", "--tenant", TENANT]);
    expect(created.code, created.stderr).toBe(0);
    expect(created.stdout).toMatch(/^tenant "123" created at position \d+\n$/);
    const again = await write(["tenant", "create", "--tenant", TENANT, "--json"]);
    expect(again.code).toBe(1);
    expect(onlyJson(again)).toEqual({ error: { code: "ALREADY_EXISTS", message: expect.stringMatching(/tenant "123" exists already/) } });
    // A follower alone cannot take a change: it answers UNAVAILABLE (not the leader).
    const follower = writeEndpoints.split(",")[0]!;
    const refused = await admin(["tenant", "create", "--tenant", "other", "--json"], follower);
    expect(refused.code).toBe(1);
    expect(onlyJson(refused)).toMatchObject({ error: { code: "UNAVAILABLE" } });

    // The guide's line: verity-admin migrate --tenant 123 --migration-file /migrations/001_add_column.sql
    const first = file("001_patients.sql", "CREATE TABLE patients (id TEXT PRIMARY KEY, name TEXT NOT NULL, ward TEXT NOT NULL);\n");
    const migrated = await write(["migrate", "--tenant", TENANT, "--migration-file", first]);
    expect(migrated.code, migrated.stderr).toBe(0);
    expect(migrated.stdout).toMatch(/^migration "001_patients\.sql" applied at position \d+\n$/);

    const bad = file("002_bad.sql", "CREATE TABLE wards (id TEXT PRIMARY KEY);\nINSERT INTO nonexistent VALUES (1);\n");
    const failed = await write(["migrate", "--tenant", TENANT, "--migration-file", bad]);
    expect(failed.code).toBe(1);
    expect(failed.stdout).toBe("");
    expect(failed.stderr).toMatch(/^verity-admin: error: .*the migration at position \d+ failed on every node and changed nothing: no such table: nonexistent\n$/);

    // The guide's line: verity-admin schema show --tenant 123
    const schema = onlyJson<{ tables: Array<{ name: string; rows: number; columns: unknown[] }>; migrations: Array<{ name: string; outcome: string; position: number }> }>(
      await admin(["schema", "show", "--tenant", TENANT, "--json"]));
    expect(schema.tables.map((t) => t.name)).toEqual(["patients"]);
    expect(schema.tables[0]!.columns).toEqual([
      { name: "id", type: "TEXT", notNull: false, primaryKey: true },
      { name: "name", type: "TEXT", notNull: true, primaryKey: false },
      { name: "ward", type: "TEXT", notNull: true, primaryKey: false },
    ]);
    expect(schema.migrations.map((m) => [m.name, m.outcome])).toEqual([["001_patients.sql", "applied"], ["002_bad.sql", "failed: no such table: nonexistent"]]);
    const text = await admin(["schema", "show", "--tenant", TENANT]);
    expect(text.code).toBe(0);
    expect(text.stdout).toContain([
      "table patients: 0 rows",
      "  column  type  not null  pk",
      "  id      TEXT            PK",
      "  name    TEXT  NOT NULL",
      "  ward    TEXT  NOT NULL",
    ].join("\n"));
    expect(text.stdout).not.toMatch(/table wards/);
    expect(text.stdout).toMatch(/^ +\d+ {2}002_bad\.sql +failed: no such table: nonexistent$/m);
  });

  it("creates a projection, follows appends, reports a failed handler with exit 1, and rebuilds it after a fix", async () => {
    const toml = file("patients.toml", PATIENTS_TOML);
    const created = await write(["projection", "create", "--tenant", TENANT, "--file", toml, "--json"]);
    expect(created.code, created.stderr).toBe(0);
    expect(onlyJson(created)).toEqual({ position: expect.any(Number), message: expect.stringMatching(/^projection "patients" created at position \d+/), name: "patients" });
    const twice = await write(["projection", "create", "--tenant", TENANT, "--file", toml, "--json"]);
    expect(twice.code).toBe(1);
    expect(onlyJson(twice)).toMatchObject({ error: { code: "ALREADY_EXISTS" } });

    const client = new VerityClient({ endpoints: nodes.map(endpointOf), tls: { ca: ca.cert, cert: app.cert, key: app.key }, attempts: 30 });
    await client.append({ tenant: TENANT, stream: "p-1", events: [{ type: "PatientAdmitted", data: { id: "p-1", name: "Ada", ward: "A" } }] });
    await client.append({ tenant: TENANT, stream: "p-2", events: [{ type: "PatientAdmitted", data: { id: "p-2", name: "Bob", ward: "B" } }] });
    const discharged = await client.append({ tenant: TENANT, stream: "p-1", events: [{ type: "PatientDischarged", data: { id: "p-1" } }] });

    // The guide's line: verity-admin projection status --tenant 123
    const running = await statusWhen((s) => s.projections[0]?.appliedPosition === discharged.lastPosition);
    expect(running.code).toBe(0);
    expect(running.status.projections).toEqual([{
      name: "patients", state: "running", appliedPosition: discharged.lastPosition, lag: 0, startPosition: expect.any(Number),
      eventTypes: ["PatientAdmitted", "PatientDischarged"], errorPosition: 0, error: "",
    }]);
    expect(running.status).toMatchObject({ tenant: TENANT, appliedPosition: discharged.lastPosition, digest: expect.stringMatching(/^[0-9a-f]{64}$/) });
    expect(running.status.commitIndex).toBeGreaterThanOrEqual(discharged.lastPosition);
    const text = await admin(["projection", "status", "--tenant", TENANT]);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(new RegExp(`^tenant 123 on 127\\.0\\.0\\.1:\\d+: applied position ${discharged.lastPosition}, commit index \\d+\\n  digest [0-9a-f]{64}\\n`));
    expect(text.stdout).toMatch(new RegExp(`^patients {4}running +${discharged.lastPosition} +0  PatientAdmitted, PatientDischarged$`, "m"));

    // An event without the NOT NULL ward: the handler fails and the projection stops there.
    const missing = await client.append({ tenant: TENANT, stream: "p-3", events: [{ type: "PatientAdmitted", data: { id: "p-3", name: "Cy" } }] });
    const stopped = await statusWhen((s) => s.projections[0]?.state === "failed");
    expect(stopped.code).toBe(1);
    expect(stopped.status.projections[0]).toMatchObject({
      state: "failed", appliedPosition: missing.lastPosition - 1, errorPosition: missing.lastPosition, lag: 1,
      error: "event PatientAdmitted (stream p-3, version 0): NOT NULL constraint failed: patients.ward",
    });
    const failedText = await admin(["projection", "status", "--tenant", TENANT]);
    expect(failedText.code).toBe(1);
    expect(failedText.stdout).toMatch(/^patients {4}FAILED +\d+ +1 {2}PatientAdmitted, PatientDischarged$/m);
    expect(failedText.stdout).toContain(`projection patients FAILED at position ${missing.lastPosition}: event PatientAdmitted (stream p-3, version 0): NOT NULL constraint failed: patients.ward\n`);
    expect(failedText.stdout).toContain("verity-admin projection rebuild --tenant 123 --projection patients");
    expect(failedText.stdout).toMatch(/^1 of 1 projection failed: patients$/m);

    // Rebuilt before the cause is fixed: it fails again on the same event, and --wait says so.
    const again = await write(["projection", "rebuild", "--tenant", TENANT, "--projection", "patients", "--wait", "--json"]);
    expect(again.code, again.stderr).toBe(1);
    expect(onlyJson(again)).toMatchObject({ rebuilt: false, result: "failed", projection: { state: "failed", errorPosition: missing.lastPosition } });

    const fix = file("003_ward_optional.sql", [
      "CREATE TABLE patients_new (id TEXT PRIMARY KEY, name TEXT NOT NULL, ward TEXT);",
      "INSERT INTO patients_new SELECT id, name, ward FROM patients;",
      "DROP TABLE patients;",
      "ALTER TABLE patients_new RENAME TO patients;",
    ].join("\n"));
    const fixed = await write(["migrate", "--tenant", TENANT, "--migration-file", fix, "--name", "003_ward_optional", "--json"]);
    expect(fixed.code, fixed.stdout + fixed.stderr).toBe(0);
    expect(onlyJson(fixed)).toEqual({ position: expect.any(Number), message: expect.stringMatching(/^migration "003_ward_optional" applied at position \d+$/), name: "003_ward_optional" });

    // The guide's line: verity-admin projection rebuild --tenant 123 --projection patients (here --wait: stdout is no terminal)
    const rebuilt = await write(["projection", "rebuild", "--tenant", TENANT, "--projection", "patients", "--wait"]);
    expect(rebuilt.code, rebuilt.stdout + rebuilt.stderr).toBe(0);
    expect(rebuilt.stdout).toMatch(/^projection "patients" is rebuilding from its start \(position \d+\)/);
    expect(rebuilt.stdout).toMatch(/^projection "patients" rebuilt in [\d.]+s: running at position (\d+) \(the tenant's applied position \1\)$/m);
    expect(rebuilt.stderr).toMatch(/^rebuild patients: running, position (\d+) of \1 \(100%\)$/m);

    const after = await statusWhen(() => true);
    expect(after.code).toBe(0);
    expect(after.status.projections[0]).toMatchObject({ state: "running", lag: 0, errorPosition: 0, error: "" });
    const schema = onlyJson<{ tables: Array<{ name: string; rows: number; columns: Array<{ name: string; notNull: boolean }> }>; migrations: Array<{ name: string; outcome: string }> }>(
      await admin(["schema", "show", "--tenant", TENANT, "--json"]));
    // p-1 admitted and discharged; p-2 and p-3 remain.
    expect(schema.tables).toEqual([expect.objectContaining({ name: "patients", rows: 2 })]);
    expect(schema.tables[0]!.columns.find((c) => c.name === "ward")!.notNull).toBe(false);
    expect(schema.migrations.map((m) => m.outcome)).toEqual(["applied", "failed: no such table: nonexistent", "applied"]);
    client.close();
  });

  it.skipIf(spawnSync("script", ["--version"]).status !== 0)("on a terminal, rebuild waits by default and draws a progress bar", async () => {
    const command = [process.execPath, join(root, "bin", "verity-admin.js"), "projection", "rebuild", "--tenant", TENANT, "--projection", "patients",
      "--endpoints", writeEndpoints, ...tlsArgs()].map((a) => `'${a}'`).join(" ");
    // util-linux script(1) runs the command on a pseudo-terminal; -e passes its exit code on.
    const r = spawnSync("script", ["-qec", command, "/dev/null"], { env: ENV, encoding: "utf8", timeout: 60_000 });
    expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/\rrebuild patients \[#{30}\] 100% {2}position (\d+) of \1/);
    expect(r.stdout).toMatch(/projection "patients" rebuilt in [\d.]+s: running at position \d+/);
  });

  it("every node reaches the same digest; tenant list and show; unknown names", async () => {
    const leaderStatus = (await statusWhen(() => true)).status;
    const digests = await Promise.all(nodes.map(async (n) =>
      (await statusWhen((s) => s.appliedPosition >= leaderStatus.appliedPosition, endpointOf(n))).status.digest));
    expect(new Set(digests).size, digests.join(" ")).toBe(1);

    const list = await admin(["tenant", "list"]);
    expect(list.code).toBe(0);
    expect(list.stdout).toMatch(/^tenant {2}streams {2}events {2}bytes {2}projections {2}applied position\n/);
    expect(list.stdout).toMatch(/^123 +3 +4 +\d+ B {2}patients +\d+$/m);
    const listed = onlyJson<{ tenants: Array<Record<string, unknown>> }>(await admin(["tenant", "list", "--json"]));
    expect(listed.tenants).toEqual([{ tenant: TENANT, createdAt: expect.any(Number), streams: 3, events: 4, bytes: expect.any(Number), projections: ["patients"], appliedPosition: leaderStatus.appliedPosition }]);

    const shown = await admin(["tenant", "show", "--tenant", TENANT]);
    expect(shown.code).toBe(0);
    expect(shown.stdout).toMatch(/^tenant 123\n {2}created at position {2}\d+\n {2}streams {14}3\n {2}events {15}4\n/);
    expect(shown.stdout).toMatch(/^ {2}projections {10}patients$/m);
    expect(onlyJson(await admin(["tenant", "show", "--tenant", TENANT, "--json"]))).toEqual(listed.tenants[0]);

    const unknown = await admin(["tenant", "show", "--tenant", "nobody", "--json"]);
    expect(unknown.code).toBe(1);
    expect(onlyJson(unknown)).toEqual({ error: { code: "NOT_FOUND", message: expect.stringMatching(/tenant "nobody" does not exist: create it with verity-admin tenant create --tenant nobody/) } });
    const noProjection = await write(["projection", "rebuild", "--tenant", TENANT, "--projection", "nope", "--wait"]);
    expect(noProjection.code).toBe(1);
    expect(noProjection.stderr).toMatch(/tenant "123" has no projection "nope"/);
    const noTenantStatus = await admin(["projection", "status", "--tenant", "nobody", "--json"]);
    expect(noTenantStatus.code).toBe(1);
    expect(onlyJson(noTenantStatus)).toMatchObject({ error: { code: "NOT_FOUND" } });
  });
});
