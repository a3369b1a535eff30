/**
 * The query engine through the real QueryPool: worker processes running the compiled worker
 * (dist/, built by `npm run build`) against SQLite files written in WAL mode, as the projector does.
 */

import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, unlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3-multiple-ciphers";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { ErrorCode, VerityError } from "../../src/errors.js";
import { QUERY_ALLOWED } from "../../src/projections/query-guard.js";
import { QueryPool, findQueryWorkerScript, type QueryRequest, type QueryResult } from "../../src/projections/query-pool.js";

const ACCOUNTS = 10;
const BALANCE_START = 1_000;
const NUMBERS = 1_000;

let dir: string;
let dbPath: string;
const pools: QueryPool[] = [];

/** A tenant's projections database as the projector writes it: WAL mode, a few tables. */
function createDatabase(path: string): Database.Database {
  const db = new Database(path);
  db.pragma("journal_mode = WAL");
  db.pragma("synchronous = NORMAL");
  db.exec(`
    CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, balance INTEGER NOT NULL);
    CREATE TABLE files (id INTEGER PRIMARY KEY, name TEXT, data BLOB);
    CREATE TABLE numbers (n INTEGER PRIMARY KEY, square INTEGER, half REAL);
    CREATE TABLE ledger (id INTEGER PRIMARY KEY, amount INTEGER NOT NULL);
    CREATE TABLE meta (id INTEGER PRIMARY KEY CHECK (id = 1), ledger_count INTEGER NOT NULL);
    INSERT INTO meta VALUES (1, 0);
  `);
  const account = db.prepare("INSERT INTO accounts VALUES (?, ?, ?)");
  const number = db.prepare("INSERT INTO numbers VALUES (?, ?, ?)");
  db.transaction(() => {
    for (let id = 1; id <= ACCOUNTS; id++) account.run(id, `owner-${id}`, BALANCE_START);
    for (let n = 1; n <= NUMBERS; n++) number.run(n, n * n, n / 2);
  })();
  db.prepare("INSERT INTO files VALUES (?, ?, ?)").run(1, "two bytes", Buffer.from([1, 2]));
  db.prepare("INSERT INTO files VALUES (?, ?, ?)").run(2, "empty", Buffer.alloc(0));
  db.prepare("INSERT INTO files VALUES (?, ?, ?)").run(3, "none", null);
  return db;
}

function newPool(options: Partial<ConstructorParameters<typeof QueryPool>[0]> = {}): QueryPool {
  const pool = new QueryPool({ workers: 2, timeoutMs: 5_000, rowsMax: 500, ...options });
  pools.push(pool);
  return pool;
}

function request(sql: string, params: QueryRequest["params"] = {}, limit = 100, path = dbPath): QueryRequest {
  return { dbPath: path, sql, params, limit };
}

async function failure(promise: Promise<QueryResult>): Promise<VerityError> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(VerityError);
    return error as VerityError;
  }
  throw new Error("expected the query to fail");
}

/** Waits until every worker of the pool has started, so a test's timing excludes start-up. */
async function ready(pool: QueryPool, workers: number): Promise<void> {
  const deadline = performance.now() + 10_000;
  while (pool.stats().readyWorkers < workers) {
    if (performance.now() > deadline) throw new Error("query workers did not start within 10 s");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function waitUntil(condition: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  while (!condition()) {
    if (performance.now() > deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return true;
}

/** Counts to 10^9 in one SQLite step: minutes of CPU, never returning to JavaScript. */
const ENDLESS_SQL = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000) SELECT count(*) FROM c";

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "verity-query-pool-"));
  dbPath = join(dir, "projections.sqlite");
  createDatabase(dbPath).close();
});

afterEach(async () => {
  await Promise.all(pools.splice(0).map((pool) => pool.close()));
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe("QueryPool answers queries", () => {
  it("finds the compiled worker from the TypeScript source", () => {
    expect(findQueryWorkerScript()).toMatch(/dist[/\\]src[/\\]projections[/\\]query-worker\.js$/);
  });

  it("runs a SELECT with named parameters (:name, @name, $name)", async () => {
    const pool = newPool();
    const result = await pool.query(request(
      "SELECT id, owner, balance FROM accounts WHERE id BETWEEN :low AND @high AND owner <> $skip ORDER BY id",
      { low: 2, high: 4, skip: "owner-3" },
    ));
    expect(result.columns).toEqual(["id", "owner", "balance"]);
    expect(result.rows).toEqual([[2, "owner-2", BALANCE_START], [4, "owner-4", BALANCE_START]]);
    expect(result.truncated).toBe(false);
    expect(result.ms).toBeGreaterThan(0);
    const values = await pool.query(request("VALUES (1, 'a', NULL, 2.5)"));
    expect(values.rows).toEqual([[1, "a", null, 2.5]]);
    const text = await pool.query(request("SELECT count(*) AS n FROM numbers WHERE n < :n", { n: "10" }));
    expect(text.rows).toEqual([[9]]);
  });

  it("returns at most limit rows and says when there were more; limit is clamped to rowsMax", async () => {
    const pool = newPool({ rowsMax: 500 });
    const sql = "SELECT n FROM numbers ORDER BY n";
    const ten = await pool.query(request(sql, {}, 10));
    expect(ten.rows).toEqual([[1], [2], [3], [4], [5], [6], [7], [8], [9], [10]]);
    expect(ten.truncated).toBe(true);
    const exact = await pool.query(request("SELECT n FROM numbers WHERE n <= 10", {}, 10));
    expect(exact.rows).toHaveLength(10);
    expect(exact.truncated).toBe(false);
    const clamped = await pool.query(request(sql, {}, 100_000));
    expect(clamped.rows).toHaveLength(500);
    expect(clamped.truncated).toBe(true);
    const server = await pool.query(request(sql, {}, 0));
    expect(server.rows).toHaveLength(500);
    const error = await failure(pool.query(request(sql, {}, -1)));
    expect(error.code).toBe(ErrorCode.INVALID_ARGUMENT);
  });

  it("returns blobs as {$base64}, reals and large integers as numbers", async () => {
    const pool = newPool();
    const files = await pool.query(request("SELECT name, data FROM files ORDER BY id"));
    expect(files.rows).toEqual([["two bytes", { $base64: "AQI=" }], ["empty", { $base64: "" }], ["none", null]]);
    const numbers = await pool.query(request("SELECT half, 9007199254740993 AS big, randomblob(3) AS r FROM numbers WHERE n = 3"));
    expect(numbers.rows[0]![0]).toBe(1.5);
    expect(typeof numbers.rows[0]![1]).toBe("number");
    expect(Buffer.from((numbers.rows[0]![2] as { $base64: string }).$base64, "base64")).toHaveLength(3);
  });

  it("answers NOT_FOUND for a tenant without a projections database", async () => {
    const pool = newPool();
    const error = await failure(pool.query(request("SELECT 1", {}, 10, join(dir, "no-such-tenant", "projections.sqlite"))));
    expect(error.code).toBe(ErrorCode.NOT_FOUND);
    expect(error.message).toBe("the tenant has no projections database yet: run a migration first");
  });

  it("keeps answering across many databases (the connection cache evicts) and sees a replaced file", async () => {
    const pool = newPool({ workers: 1 });
    const paths: string[] = [];
    for (let i = 0; i < 20; i++) {
      const path = join(dir, `tenant-${i}.sqlite`);
      const db = new Database(path);
      db.pragma("journal_mode = WAL");
      db.exec(`CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (${i});`);
      db.close();
      paths.push(path);
    }
    for (let pass = 0; pass < 2; pass++) {
      for (const [i, path] of paths.entries()) {
        expect((await pool.query(request("SELECT v FROM t", {}, 10, path))).rows).toEqual([[i]]);
      }
    }
    const replaced = paths[19]!;
    for (const suffix of ["", "-wal", "-shm"]) if (existsSync(replaced + suffix)) unlinkSync(replaced + suffix);
    const db = new Database(replaced);
    db.exec("CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (1919);");
    db.close();
    expect((await pool.query(request("SELECT v FROM t", {}, 10, replaced))).rows).toEqual([[1919]]);
  });

  it("refuses a result larger than QUERY_RESULT_BYTES_MAX with QUOTA_EXCEEDED", async () => {
    const pool = newPool();
    const error = await failure(pool.query(request("SELECT randomblob(20000000)")));
    expect(error.code).toBe(ErrorCode.QUOTA_EXCEEDED);
    expect(error.message).toMatch(/QUERY_RESULT_BYTES_MAX/);
    expect((await pool.query(request("SELECT 1"))).rows).toEqual([[1]]);
  });
});

describe("QueryPool refuses what a query may not do", () => {
  const writes = [
    "INSERT INTO accounts VALUES (99, 'mallory', 1000000)",
    "UPDATE accounts SET balance = 0",
    "DELETE FROM accounts",
    "CREATE TABLE stolen (x)",
    "DROP TABLE accounts",
    "WITH doomed AS (SELECT id FROM accounts) DELETE FROM accounts WHERE id IN (SELECT id FROM doomed)",
    "WITH x AS (SELECT 1) INSERT INTO ledger (amount) SELECT 5 FROM x",
  ];
  const refusals: Array<[string, ErrorCode, RegExp]> = [
    ...writes.map((sql): [string, ErrorCode, RegExp] => [sql, ErrorCode.PERMISSION_DENIED, /cannot write/]),
    ["SELECT 1; SELECT 2", ErrorCode.INVALID_ARGUMENT, /more than one statement/],
    ["SELECT * FROM accounts; DELETE FROM accounts", ErrorCode.INVALID_ARGUMENT, /more than one statement/],
    [`ATTACH DATABASE '${"/tmp/verity-attached.sqlite"}' AS other`, ErrorCode.PERMISSION_DENIED, /ATTACH/],
    ["DETACH DATABASE other", ErrorCode.PERMISSION_DENIED, /DETACH/],
    ["PRAGMA table_info(accounts)", ErrorCode.PERMISSION_DENIED, /PRAGMA/],
    ["PRAGMA query_only = OFF", ErrorCode.PERMISSION_DENIED, /PRAGMA/],
    ["PRAGMA journal_mode", ErrorCode.PERMISSION_DENIED, /PRAGMA/],
    ["SELECT * FROM pragma_database_list", ErrorCode.PERMISSION_DENIED, /pragma functions/],
    ["SELECT load_extension('/tmp/evil.so')", ErrorCode.PERMISSION_DENIED, /load an extension/],
    ["SELECT \"load_extension\"('/tmp/evil.so', 'entry')", ErrorCode.PERMISSION_DENIED, /load an extension/],
    ["VACUUM INTO '/tmp/verity-vacuumed.sqlite'", ErrorCode.PERMISSION_DENIED, /VACUUM/],
    ["", ErrorCode.INVALID_ARGUMENT, /empty/],
    ["SELECT owner FROM accounts WHERE AND id = 1", ErrorCode.INVALID_ARGUMENT, /SQLite cannot run the query: near "AND": syntax error/],
    ["SELECT owner FROM accounts WHERE", ErrorCode.INVALID_ARGUMENT, /SQLite cannot run the query: incomplete input/],
    ["SELECT x FROM no_such_table", ErrorCode.INVALID_ARGUMENT, /no such table: no_such_table/],
    ["BEGIN IMMEDIATE", ErrorCode.INVALID_ARGUMENT, /not a query/],
  ];

  let shared: QueryPool;
  beforeAll(() => {
    shared = new QueryPool({ workers: 1, timeoutMs: 5_000, rowsMax: 100 });
  });
  afterAll(async () => {
    await shared.close();
  });

  it.each(refusals)("refuses %j", async (sql, code, message) => {
    const pool = shared;
    const error = await failure(pool.query(request(sql)));
    expect(error.code).toBe(code);
    expect(error.message).toMatch(message);
    expect(error.message).toContain(QUERY_ALLOWED);
  });

  it("left the database and the file system as they were", async () => {
    const pool = newPool({ workers: 1 });
    for (const [sql] of refusals) await failure(pool.query(request(sql)));
    const counts = await pool.query(request(
      "SELECT (SELECT count(*) FROM accounts), (SELECT sum(balance) FROM accounts), (SELECT count(*) FROM ledger), " +
        "(SELECT count(*) FROM sqlite_schema WHERE name = 'stolen')",
    ));
    expect(counts.rows).toEqual([[ACCOUNTS, ACCOUNTS * BALANCE_START, 0, 0]]);
    expect(existsSync("/tmp/verity-vacuumed.sqlite")).toBe(false);
  });

  it("refuses parameters that do not match the SQL or are not allowed", async () => {
    const pool = newPool({ workers: 1 });
    const missing = await failure(pool.query(request("SELECT * FROM accounts WHERE id = :id")));
    expect(missing.code).toBe(ErrorCode.INVALID_ARGUMENT);
    expect(missing.message).toMatch(/every :name/);
    const positional = await failure(pool.query(request("SELECT * FROM accounts WHERE id = ?", { id: 1 })));
    expect(positional.code).toBe(ErrorCode.INVALID_ARGUMENT);
    const colon = await failure(pool.query(request("SELECT * FROM accounts WHERE id = :id", { ":id": 1 })));
    expect(colon.code).toBe(ErrorCode.INVALID_ARGUMENT);
    expect(colon.message).toMatch(/without the leading ':'/);
    const object = await failure(pool.query(request("SELECT :id", { id: { nested: true } as unknown as string })));
    expect(object.code).toBe(ErrorCode.INVALID_ARGUMENT);
    const nan = await failure(pool.query(request("SELECT :id", { id: Number.NaN })));
    expect(nan.code).toBe(ErrorCode.INVALID_ARGUMENT);
  });
});

describe("QueryPool under slow queries, crashes, load and close", () => {
  it("stops a query over timeoutMs with DEADLINE_EXCEEDED, kills its worker and keeps answering", async () => {
    const pool = newPool({ workers: 2, timeoutMs: 300 });
    await ready(pool, 2);
    const before = pool.stats().workerPids;
    const started = performance.now();
    const error = await failure(pool.query(request(ENDLESS_SQL)));
    const elapsedMs = performance.now() - started;
    expect(error.code).toBe(ErrorCode.DEADLINE_EXCEEDED);
    expect(error.message).toBe(
      "the query ran longer than max_query_duration (300 ms): narrow it with WHERE or LIMIT, or add an index with a migration",
    );
    expect(elapsedMs).toBeGreaterThanOrEqual(290);
    expect(elapsedMs).toBeLessThan(2_000);
    const after = pool.stats().workerPids;
    const killed = before.filter((pid) => !after.includes(pid));
    expect(killed).toHaveLength(1);
    // The point of worker processes: the query really stopped (a terminated thread would still be counting).
    expect(await waitUntil(() => !processAlive(killed[0]!), 2_000)).toBe(true);
    for (let i = 0; i < 4; i++) expect((await pool.query(request("SELECT count(*) FROM numbers"))).rows).toEqual([[NUMBERS]]);
  });

  it("keeps the main thread free while a slow query runs", async () => {
    const pool = newPool({ workers: 1, timeoutMs: 1_000 });
    await ready(pool, 1);
    const intervalMs = 10;
    const ticks: number[] = [];
    const timer = setInterval(() => ticks.push(performance.now()), intervalMs);
    const error = await failure(pool.query(request(ENDLESS_SQL)));
    clearInterval(timer);
    expect(error.code).toBe(ErrorCode.DEADLINE_EXCEEDED);
    const gaps = ticks.slice(1).map((tick, i) => tick - ticks[i]!);
    expect(ticks.length).toBeGreaterThan(1_000 / intervalMs / 2);
    expect(Math.max(...gaps)).toBeLessThan(100);
  });

  it("reads consistent snapshots of a database the main thread writes at the same time (WAL)", async () => {
    const path = join(dir, "concurrent.sqlite");
    const writer = createDatabase(path);
    const pool = newPool({ workers: 2 });
    await ready(pool, 2);
    const move = writer.prepare("UPDATE accounts SET balance = balance + :delta WHERE id = :id");
    const record = writer.prepare("INSERT INTO ledger (amount) VALUES (:amount)");
    const count = writer.prepare("UPDATE meta SET ledger_count = ledger_count + 1");
    let transfers = 0;
    const transfer = writer.transaction((from: number, to: number, amount: number) => {
      move.run({ id: from, delta: -amount });
      record.run({ amount });
      move.run({ id: to, delta: amount });
      count.run();
    });
    const writing = setInterval(() => {
      for (let i = 0; i < 20; i++) {
        transfers++;
        transfer(1 + (transfers % ACCOUNTS), 1 + ((transfers * 7) % ACCOUNTS), 1 + (transfers % 13));
      }
      if (transfers % 200 === 0) writer.pragma("wal_checkpoint(PASSIVE)");
    }, 1);
    const sql = "SELECT (SELECT sum(balance) FROM accounts), (SELECT count(*) FROM ledger), (SELECT ledger_count FROM meta)";
    const seen: number[] = [];
    try {
      for (let round = 0; round < 50; round++) {
        const results = await Promise.all([1, 2, 3, 4].map(() => pool.query(request(sql, {}, 10, path))));
        for (const result of results) {
          const [total, ledgerRows, ledgerCount] = result.rows[0] as number[];
          expect(total).toBe(ACCOUNTS * BALANCE_START);
          expect(ledgerRows).toBe(ledgerCount);
          seen.push(ledgerRows!);
        }
      }
    } finally {
      clearInterval(writing);
    }
    expect(new Set(seen).size).toBeGreaterThan(5); // the readers did see the writer's progress
    const final = await pool.query(request(sql, {}, 10, path));
    expect(final.rows).toEqual([[ACCOUNTS * BALANCE_START, transfers, transfers]]);
    writer.close();
  });

  it("answers QUOTA_EXCEEDED past queueMax, and close() answers waiting and running queries UNAVAILABLE", async () => {
    const pool = newPool({ workers: 1, queueMax: 2, timeoutMs: 10_000 });
    await ready(pool, 1);
    const running = pool.query(request(ENDLESS_SQL));
    const queued = [pool.query(request("SELECT 1")), pool.query(request("SELECT 2"))];
    expect(pool.stats()).toMatchObject({ busyWorkers: 1, queuedQueries: 2 });
    const overflow = await failure(pool.query(request("SELECT 3")));
    expect(overflow.code).toBe(ErrorCode.QUOTA_EXCEEDED);
    expect(overflow.message).toMatch(/QUERY_QUEUE_MAX \(2\)/);
    const pids = pool.stats().workerPids;
    const answers = [running, ...queued].map(failure);
    await pool.close();
    for (const error of await Promise.all(answers)) {
      expect(error.code).toBe(ErrorCode.UNAVAILABLE);
      expect(error.message).toMatch(/closed/);
    }
    expect((await failure(pool.query(request("SELECT 1")))).code).toBe(ErrorCode.UNAVAILABLE);
    expect(pids.some(processAlive)).toBe(false);
  });

  it("answers INTERNAL when a worker crashes, and replaces the worker", async () => {
    const pool = newPool({ workers: 1, timeoutMs: 10_000 });
    await ready(pool, 1);
    const slow = pool.query(request(ENDLESS_SQL));
    const [pid] = pool.stats().workerPids;
    await new Promise((resolve) => setTimeout(resolve, 50));
    process.kill(pid!, "SIGKILL");
    const error = await failure(slow);
    expect(error.code).toBe(ErrorCode.INTERNAL);
    expect(error.message).toMatch(/stopped unexpectedly \(signal SIGKILL\)/);
    expect((await pool.query(request("SELECT 42"))).rows).toEqual([[42]]);
    expect(pool.stats().workerPids).not.toContain(pid);
  });

  it("answers UNAVAILABLE while workers fail to start, and recovers once they start", async () => {
    const saved = process.env.NODE_OPTIONS;
    // Workers inherit the environment: this preload does not exist, so every worker fails at start-up.
    process.env.NODE_OPTIONS = `--require ${join(dir, "no-such-preload.cjs")}`;
    let pool: QueryPool;
    try {
      pool = newPool({ workers: 1 });
      const error = await failure(pool.query(request("SELECT 1")));
      expect(error.code).toBe(ErrorCode.UNAVAILABLE);
      expect(error.message).toMatch(/query workers fail to start \(3 in a row, the last: exit code 1\): retry later/);
      expect((await failure(pool.query(request("SELECT 1")))).code).toBe(ErrorCode.UNAVAILABLE);
    } finally {
      if (saved === undefined) delete process.env.NODE_OPTIONS;
      else process.env.NODE_OPTIONS = saved;
    }
    // The next attempt (after at most QUERY_WORKER_RESPAWN_DELAY_MS_MAX) starts a worker.
    await ready(pool, 1);
    expect((await pool.query(request("SELECT 7"))).rows).toEqual([[7]]);
  });

  it("refuses options out of range", () => {
    expect(() => new QueryPool({ workers: 0, timeoutMs: 1_000, rowsMax: 10 })).toThrow(expect.objectContaining({ code: ErrorCode.INVALID_ARGUMENT }));
    expect(() => new QueryPool({ workers: 1, timeoutMs: 0, rowsMax: 10 })).toThrow(/timeoutMs/);
    expect(() => new QueryPool({ workers: 1, timeoutMs: 1_000, rowsMax: 10, queueMax: 1_000_000 })).toThrow(/queueMax/);
  });

  it("stops its workers when the server process dies (kill -9), even mid-query", async () => {
    const poolModule = new URL("../../dist/src/projections/query-pool.js", import.meta.url).href;
    const script = `
      import { QueryPool } from ${JSON.stringify(poolModule)};
      const pool = new QueryPool({ workers: 2, timeoutMs: 600000, rowsMax: 10 });
      await pool.query({ dbPath: ${JSON.stringify(dbPath)}, sql: "SELECT 1", params: {}, limit: 1 });
      void pool.query({ dbPath: ${JSON.stringify(dbPath)}, sql: ${JSON.stringify(ENDLESS_SQL)}, params: {}, limit: 1 }).catch(() => {});
      setTimeout(() => console.log(JSON.stringify(pool.stats().workerPids)), 200);
    `;
    const server = spawn(process.execPath, ["--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "inherit"] });
    const pids = await new Promise<number[]>((resolve, reject) => {
      let out = "";
      server.stdout.on("data", (chunk: Buffer) => {
        out += chunk.toString();
        if (out.includes("\n")) resolve(JSON.parse(out) as number[]);
      });
      server.once("exit", (code) => reject(new Error(`the server exited early (${code})`)));
    });
    expect(pids).toHaveLength(2);
    expect(pids.every(processAlive)).toBe(true);
    server.kill("SIGKILL");
    // The watchdog checks every QUERY_WORKER_WATCHDOG_INTERVAL_MS (1 s).
    expect(await waitUntil(() => !pids.some(processAlive), 5_000)).toBe(true);
  });

  it("measures the overhead of a point lookup through the pool", async () => {
    const pool = newPool({ workers: 2 });
    await ready(pool, 2);
    const sql = "SELECT owner, balance FROM accounts WHERE id = :id";
    for (let i = 0; i < 200; i++) await pool.query(request(sql, { id: 1 + (i % ACCOUNTS) })); // warm both workers' connections
    const sequential: number[] = [];
    for (let i = 0; i < 2_000; i++) {
      const started = performance.now();
      await pool.query(request(sql, { id: 1 + (i % ACCOUNTS) }));
      sequential.push(performance.now() - started);
    }
    sequential.sort((a, b) => a - b);
    const percentile = (p: number) => sequential[Math.min(sequential.length - 1, Math.floor(sequential.length * p))]!;
    const started = performance.now();
    const concurrent = 4_000;
    // In waves of 1000, under the queue's bound (QUERY_QUEUE_MAX, 1024).
    for (let wave = 0; wave < concurrent / 1_000; wave++) {
      await Promise.all(Array.from({ length: 1_000 }, (_, i) => pool.query(request(sql, { id: 1 + (i % ACCOUNTS) }))));
    }
    const perSecond = concurrent / ((performance.now() - started) / 1_000);
    console.log(
      `query pool point lookup: p50 ${percentile(0.5).toFixed(3)} ms, p99 ${percentile(0.99).toFixed(3)} ms, ` +
        `max ${sequential[sequential.length - 1]!.toFixed(3)} ms (sequential); ${perSecond.toFixed(0)} queries/s with 2 workers (1000 in flight)`,
    );
    expect(percentile(0.5)).toBeLessThan(5);
  });
});
