/**
 * verity-admin's tenant, schema and projection commands without a cluster: every command's --help
 * has an example and takes --json; bad usage (a missing flag or file, a malformed tenant id or
 * file, a malformed --timeout) exits 2 with one INVALID_ARGUMENT error object before anything is
 * sent; a node that does not answer exits 1 with UNAVAILABLE. And the pieces of the output: tables
 * aligned, the rebuild's progress as a bar on a terminal and as lines otherwise.
 */
import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, afterEach, describe, expect, it, vi } from "vitest";
import { tempDir } from "../helpers/log-fixtures.js";
import { formatTable, projectionStatusLines, schemaLines, tenantLines } from "../../src/cli/admin-tenant-output.js";
import { ProgressReporter, rebuildProgress } from "../../src/cli/admin-projection-progress.js";
import type { ProjectionInfo } from "../../src/cli/admin-tenant-api.js";

// src/cli/common.ts finds package.json relative to its built place (dist/src/cli): its built copy stands in for it.
vi.mock("../../src/cli/common.js", () => import(new URL("../../dist/src/cli/common.js", import.meta.url).href));

const root = join(import.meta.dirname, "..", "..");
const tmp = tempDir("admin-tenants-cli");
const ENV = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith("VERITY_")));
afterAll(() => tmp.cleanup());

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

function admin(args: string[]): Promise<Ran> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [join(root, "bin", "verity-admin.js"), ...args], { cwd: tmp.path, env: ENV, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, stdout, stderr });
    });
  });
}

function onlyJson(r: Ran): Record<string, unknown> {
  const lines = r.stdout.trim().split("\n");
  expect(lines, r.stdout + r.stderr).toHaveLength(1);
  return JSON.parse(lines[0]!) as Record<string, unknown>;
}

const GROUPS = [["tenant"], ["schema"], ["projection"]];
const LEAVES = [["tenant", "create"], ["tenant", "list"], ["tenant", "show"], ["migrate"], ["schema", "show"], ["projection", "create"], ["projection", "status"], ["projection", "rebuild"]];

describe("--help", () => {
  it("every new command has an example, and every one that runs takes --json and the connection flags", async () => {
    const groups = await Promise.all(GROUPS.map((c) => admin([...c, "--help"])));
    for (const [i, r] of groups.entries()) {
      expect(r.code, GROUPS[i]!.join(" ")).toBe(0);
      expect(r.stdout, GROUPS[i]!.join(" ")).toMatch(/Examples:\n\s+verity-admin /);
    }
    const leaves = await Promise.all(LEAVES.map((c) => admin([...c, "--help"])));
    for (const [i, r] of leaves.entries()) {
      const name = LEAVES[i]!.join(" ");
      expect(r.code, name).toBe(0);
      expect(r.stdout, name).toMatch(new RegExp(`Examples:\\n\\s+verity-admin ${name} `));
      expect(r.stdout, name).toMatch(/--json/);
      expect(r.stdout, name).toMatch(/--endpoints/);
    }
    const top = await admin(["--help"]);
    for (const name of ["tenant", "migrate", "schema", "projection"]) expect(top.stdout).toMatch(new RegExp(`^ +verity-admin ${name} `, "m"));
  });
});

describe("bad usage: exit 2 with one INVALID_ARGUMENT object, nothing sent", () => {
  it("refuses missing flags and files, malformed tenant ids, files and durations", async () => {
    const sql = join(tmp.path, "001.sql");
    writeFileSync(sql, "CREATE TABLE t (id INTEGER PRIMARY KEY);\n");
    const empty = join(tmp.path, "empty.sql");
    writeFileSync(empty, "  \n");
    const attach = join(tmp.path, "attach.sql");
    writeFileSync(attach, "ATTACH DATABASE 'x' AS y;\n");
    const badToml = join(tmp.path, "bad.toml");
    writeFileSync(badToml, 'name = "p"\n[[handlers]]\nevent_type = "E"\n');
    // The endpoint does not answer: had anything been sent, the answer would be UNAVAILABLE (exit 1).
    const cases: Array<[string[], RegExp]> = [
      [["tenant", "create"], /Missing required argument: tenant/],
      [["tenant", "create", "--tenant", "not a tenant!"], /--tenant "not a tenant!" is not a tenant id/],
      [["tenant", "show", "--tenant", ""], /is not a tenant id/],
      [["migrate", "--tenant", "123"], /Missing required argument: migration-file/],
      [["migrate", "--tenant", "123", "--migration-file", join(tmp.path, "nope.sql")], /cannot read --migration-file .*nope\.sql: no such file/],
      [["migrate", "--tenant", "123", "--migration-file", tmp.path], /is not a file/],
      [["migrate", "--tenant", "123", "--migration-file", empty], /is empty: nothing to send/],
      [["migrate", "--tenant", "123", "--migration-file", attach], /attach\.sql: migrations may not ATTACH/],
      [["schema"], /schema needs a subcommand: show/],
      [["schema", "show"], /Missing required argument: tenant/],
      [["projection"], /projection needs a subcommand: create, status or rebuild/],
      [["projection", "create", "--tenant", "123", "--file", join(tmp.path, "nope.toml")], /cannot read --file .*nope\.toml: no such file/],
      [["projection", "create", "--tenant", "123", "--file", badToml], /bad\.toml: handlers\[0\]\.sql must be a non-empty string/],
      [["projection", "rebuild", "--tenant", "123"], /Missing required argument: projection/],
      [["projection", "rebuild", "--tenant", "123", "--projection", "p", "--wait", "--timeout", "soon"], /--timeout soon: is not a duration/],
      [["tenant"], /tenant needs a subcommand: create, list or show/],
    ];
    const results = await Promise.all(cases.map(([args]) => admin([...args, "--endpoints", "127.0.0.1:1", "--json"])));
    for (const [i, r] of results.entries()) {
      const name = cases[i]![0].join(" ");
      expect(r.code, name).toBe(2);
      expect(onlyJson(r).error, name).toEqual({ code: "INVALID_ARGUMENT", message: expect.stringMatching(cases[i]![1]) });
    }
    const text = await admin(["migrate", "--tenant", "123", "--migration-file", "/migrations/001_add_column.sql", "--endpoints", "127.0.0.1:1"]);
    expect(text.code).toBe(2);
    expect(text.stdout).toBe("");
    expect(text.stderr).toBe("verity-admin: error: cannot read --migration-file /migrations/001_add_column.sql: no such file (check the path)\n");
  });

  it("a node that does not answer: exit 1 with UNAVAILABLE, for every command", async () => {
    const sql = join(tmp.path, "ok.sql");
    writeFileSync(sql, "CREATE TABLE t (id INTEGER PRIMARY KEY);\n");
    const toml = join(tmp.path, "ok.toml");
    writeFileSync(toml, 'name = "p"\n[[handlers]]\nevent_type = "E"\nsql = "INSERT INTO t (id) VALUES (:id)"\n');
    const commands = [
      ["tenant", "create", "--tenant", "123"], ["tenant", "list"], ["tenant", "show", "--tenant", "123"],
      ["migrate", "--tenant", "123", "--migration-file", sql], ["schema", "show", "--tenant", "123"],
      ["projection", "create", "--tenant", "123", "--file", toml], ["projection", "status", "--tenant", "123"],
      ["projection", "rebuild", "--tenant", "123", "--projection", "p", "--wait"],
    ];
    const results = await Promise.all(commands.map((args) => admin([...args, "--endpoints", "127.0.0.1:1,127.0.0.1:2", "--json"])));
    for (const [i, r] of results.entries()) {
      const name = commands[i]!.join(" ");
      expect(r.code, name).toBe(1);
      // Both endpoints were tried, in order.
      expect(onlyJson(r), name).toEqual({ error: { code: "UNAVAILABLE", message: expect.stringMatching(/^127\.0\.0\.1:1: .*ECONNREFUSED.*; 127\.0\.0\.1:2: .*ECONNREFUSED/) } });
    }
  });
});

const projection = (over: Partial<ProjectionInfo>): ProjectionInfo => ({
  name: "patients", state: "running", appliedPosition: 12, lag: 0, startPosition: 6, eventTypes: ["PatientAdmitted", "PatientDischarged"],
  errorPosition: 0, error: "", ...over,
});

describe("output", () => {
  it("aligns tables: text left, numbers right", () => {
    expect(formatTable([{ heading: "name" }, { heading: "rows", numeric: true }, { heading: "note" }], [["a", "1", ""], ["longer", "12345", "x"]])).toEqual([
      "  name     rows  note",
      "  a           1",
      "  longer  12345  x",
    ]);
    expect(tenantLines([{ tenant: "123", createdAt: 2, streams: 3, events: 4, bytes: 2048, projections: ["patients"], appliedPosition: 12 }])).toEqual([
      "tenant  streams  events    bytes  projections  applied position",
      "123           3       4  2.0 KiB  patients                   12",
    ]);
    expect(tenantLines([])).toEqual(["no tenants: create one with verity-admin tenant create --tenant T"]);
  });

  it("schema show: columns with NOT NULL and PK, row counts, migrations with their outcome", () => {
    const lines = schemaLines({
      tenant: "123", appliedPosition: 12,
      tables: [{ name: "patients", rows: 2, columns: [
        { name: "id", type: "TEXT", notNull: false, primaryKey: true },
        { name: "name", type: "TEXT", notNull: true, primaryKey: false },
        { name: "ward", type: "", notNull: false, primaryKey: false },
      ] }],
      migrations: [{ position: 3, name: "001.sql", sql: "", outcome: "applied" }, { position: 4, name: "002_bad.sql", sql: "", outcome: "failed: no such table: x" }],
    });
    expect(lines).toEqual([
      "tenant 123: 1 table, applied position 12 (on the answering node)",
      "",
      "table patients: 2 rows",
      "  column  type  not null  pk",
      "  id      TEXT            PK",
      "  name    TEXT  NOT NULL",
      "  ward    -",
      "",
      "migrations:",
      "  position  name         outcome",
      "         3  001.sql      applied",
      "         4  002_bad.sql  failed: no such table: x",
    ]);
  });

  it("projection status: a failed projection with its position, error and the fix", () => {
    const lines = projectionStatusLines({
      tenant: "123", appliedPosition: 14, commitIndex: 15, digest: "ab".repeat(32),
      projections: [projection({}), projection({ name: "wards", state: "failed", appliedPosition: 8, lag: 6, errorPosition: 9, error: "event E (stream s, version 0): NOT NULL constraint failed: wards.name", eventTypes: ["E"] })],
    }, "127.0.0.1:7000");
    expect(lines).toEqual([
      "tenant 123 on 127.0.0.1:7000: applied position 14, commit index 15",
      `  digest ${"ab".repeat(32)}`,
      "projection  state    applied position  lag  handles",
      "patients    running                12    0  PatientAdmitted, PatientDischarged",
      "wards       FAILED                  8    6  E",
      "projection wards FAILED at position 9: event E (stream s, version 0): NOT NULL constraint failed: wards.name",
      "  it applies nothing until rebuilt: fix the cause (a migration, or the handler), then run verity-admin projection rebuild --tenant 123 --projection wards",
    ]);
  });
});

describe("rebuild progress", () => {
  afterEach(() => vi.restoreAllMocks());

  it("counts from the projection's start to the tenant's applied position", () => {
    expect(rebuildProgress(projection({ startPosition: 1, appliedPosition: 0 }), 100)).toEqual({ done: 0, total: 100, fraction: 0 });
    expect(rebuildProgress(projection({ startPosition: 51, appliedPosition: 75 }), 100)).toEqual({ done: 25, total: 50, fraction: 0.5 });
    expect(rebuildProgress(projection({ startPosition: 101, appliedPosition: 100 }), 100)).toEqual({ done: 0, total: 0, fraction: 1 });
  });

  it("draws a bar in place on a terminal, and at most a line a second otherwise", () => {
    const written: string[] = [];
    vi.spyOn(process.stderr, "write").mockImplementation((chunk: string | Uint8Array) => {
      written.push(String(chunk));
      return true;
    });
    const bar = new ProgressReporter("rebuild patients", true);
    bar.update(projection({ state: "rebuilding", startPosition: 1, appliedPosition: 50 }), 100);
    bar.update(projection({ state: "running", startPosition: 1, appliedPosition: 100 }), 100, true);
    bar.finish();
    expect(written).toEqual([
      `\rrebuild patients [${"#".repeat(15)}${"-".repeat(15)}]  50%  position 50 of 100\x1b[K`,
      `\rrebuild patients [${"#".repeat(30)}] 100%  position 100 of 100\x1b[K`,
      "\n",
    ]);

    written.length = 0;
    const lines = new ProgressReporter("rebuild patients", false);
    lines.update(projection({ state: "rebuilding", startPosition: 1, appliedPosition: 10 }), 100);
    lines.update(projection({ state: "rebuilding", startPosition: 1, appliedPosition: 20 }), 100);
    lines.update(projection({ state: "running", startPosition: 1, appliedPosition: 100 }), 100, true);
    lines.finish();
    expect(written).toEqual(["rebuild patients: rebuilding, position 10 of 100 (10%)\n", "rebuild patients: running, position 100 of 100 (100%)\n"]);
  });
});
