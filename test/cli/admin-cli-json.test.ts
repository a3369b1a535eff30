/**
 * verity-admin as scripts and people use it, without a cluster: every command's --help has an
 * example; --json gives one JSON object (errors as {"error": {"code", "message"}}) with exit codes
 * 0 / 1 / 2; `doctor` reports a node that is down as FAIL "not reachable" and checks config, data
 * directory and log offline; `diagnostics export` writes a .tar.gz the system tar extracts, with
 * secrets redacted and every item it could not collect named with the reason.
 */
import { spawn } from "node:child_process";
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DataDir } from "../../src/log/data-dir.js";
import { SEGMENT_BYTES_MIN } from "../../src/limits.js";
import { TestCa } from "../helpers/certs.js";
import { appendMany, tempDir } from "../helpers/log-fixtures.js";

const root = join(import.meta.dirname, "..", "..");
const tmp = tempDir("admin-json");
/** The environment without VERITY_* variables, so nothing from the caller's shell changes a default. */
const ENV = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith("VERITY_")));

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs verity-admin without blocking this process (the fake servers below answer it). */
function admin(args: string[], cwd = tmp.path): Promise<Ran> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [join(root, "bin", "verity-admin.js"), ...args], { cwd, env: ENV, stdio: ["ignore", "pipe", "pipe"] });
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

/** One JSON object on stdout, and nothing else. */
function onlyJson(r: Ran): Record<string, unknown> {
  const lines = r.stdout.trim().split("\n");
  expect(lines, r.stdout + r.stderr).toHaveLength(1);
  return JSON.parse(lines[0]!) as Record<string, unknown>;
}

let metricsServer: http.Server;
let metricsEndpoint: string;
beforeAll(async () => {
  metricsServer = http.createServer((_req, res) => {
    res.setHeader("content-type", "text/plain");
    res.end([
      "# HELP verity_consensus_view Current consensus view (Raft term)",
      "# TYPE verity_consensus_view gauge",
      "verity_consensus_view 7",
      'verity_consensus_duration_seconds_bucket{le="+Inf",phase="persist"} 12',
      'verity_consensus_duration_seconds_count{phase="persist"} 12',
      "verity_log_entries_total 1200",
      "",
    ].join("\n"));
  });
  await new Promise<void>((r) => metricsServer.listen(0, "127.0.0.1", r));
  metricsEndpoint = `127.0.0.1:${(metricsServer.address() as AddressInfo).port}`;
});
afterAll(async () => {
  await new Promise((r) => metricsServer.close(r));
  tmp.cleanup();
});

async function makeDataDir(name: string): Promise<string> {
  const path = join(tmp.path, name);
  const dir = await DataDir.open({ path, segmentBytes: SEGMENT_BYTES_MIN });
  await appendMany(dir.log, 300, 1, 3000);
  await dir.close();
  return path;
}

const COMMANDS = [
  [], ["log"], ["log", "verify"], ["log", "dump"], ["verify"], ["cluster"], ["cluster", "status"], ["cluster", "wait-healthy"], ["cluster", "ping"],
  ["node"], ["node", "status"], ["status"], ["metrics"], ["leader"], ["leader", "transfer"], ["member"], ["member", "add"], ["member", "promote"],
  ["member", "remove"], ["doctor"], ["diagnostics"], ["diagnostics", "export"],
];
const LEAVES = COMMANDS.filter((c) => c.length > 0 && !["log", "cluster", "leader", "member", "diagnostics"].includes(c.join(" ")));

describe("--help", () => {
  it("every command has an example, and every command that runs takes --json", async () => {
    const results = await Promise.all(COMMANDS.map((c) => admin([...c, "--help"])));
    for (const [i, r] of results.entries()) {
      const name = COMMANDS[i]!.join(" ") || "(top)";
      expect(r.code, name).toBe(0);
      expect(r.stdout, name).toMatch(/Examples:\n\s+verity-admin /);
      if (LEAVES.includes(COMMANDS[i]!)) expect(r.stdout, name).toMatch(/--json/);
    }
    expect(results[0]!.stdout).toMatch(/Exit codes: 0 ok, 1 a check failed or the operation was refused, 2 bad usage/);
  });
});

describe("--json and exit codes", () => {
  it("bad usage: exit 2 with an INVALID_ARGUMENT error object", async () => {
    for (const args of [
      ["log", "verify", "--json"],
      ["log", "dump", "--data-dir", tmp.path, "--from", "0", "--json"],
      ["member", "promote", "--node-id", "0", "--json"],
      ["cluster", "status", "--tls-ca", "ca.crt", "--json"],
      ["cluster", "wait-healthy", "--timeout", "soon", "--json"],
      ["diagnostics", "export", "--output", "x.tar.gz", "--log-lines", "0", "--json"],
      ["no-such-command", "--json"],
    ]) {
      const r = await admin(args);
      expect(r.code, args.join(" ")).toBe(2);
      const error = onlyJson(r).error as { code: string; message: string };
      expect(error.code, args.join(" ")).toBe("INVALID_ARGUMENT");
      expect(error.message.length).toBeGreaterThan(10);
    }
    const text = await admin(["member", "promote", "--node-id", "0"]);
    expect(text.code).toBe(2);
    expect(text.stderr).toMatch(/--node-id must be a positive integer\nRun 'verity-admin --help' for usage/);
  });

  it("a node that does not answer: exit 1 with an UNAVAILABLE error object, for every Admin API command", async () => {
    for (const args of [["cluster", "status"], ["status"], ["node", "status"], ["leader", "transfer"], ["member", "add", "--address", "127.0.0.1:2"],
      ["member", "promote", "--node-id", "2"], ["member", "remove", "--node-id", "2"]]) {
      const r = await admin([...args, "--endpoints", "127.0.0.1:1", "--json"]);
      expect(r.code, args.join(" ")).toBe(1);
      expect(onlyJson(r), args.join(" ")).toEqual({ error: { code: "UNAVAILABLE", message: expect.stringMatching(/^127\.0\.0\.1:1: .*ECONNREFUSED/) } });
    }
    const metrics = await admin(["metrics", "--metrics-endpoint", "127.0.0.1:1", "--json"]);
    expect(metrics.code).toBe(1);
    expect(onlyJson(metrics)).toEqual({ error: { code: "UNAVAILABLE", message: expect.stringMatching(/cannot read http:\/\/127\.0\.0\.1:1\/metrics: ECONNREFUSED/) } });
    const waited = await admin(["cluster", "wait-healthy", "--endpoints", "127.0.0.1:1", "--timeout", "1s", "--json"]);
    expect(waited.code).toBe(1);
    expect(onlyJson(waited)).toEqual({ healthy: false, missing: ["no endpoint answered as the leader"] });
    const pinged = await admin(["cluster", "ping", "--peers", "127.0.0.1:1", "--json"]);
    expect(pinged.code).toBe(1);
    expect(onlyJson(pinged)).toMatchObject({ ok: false, peers: [{ address: "127.0.0.1:1", ok: false, reason: expect.stringMatching(/^refused/) }] });
  });

  it("offline commands: log verify, verify and a missing data directory", async () => {
    const dd = await makeDataDir("healthy");
    for (const args of [["log", "verify"], ["verify"]]) {
      const r = await admin([...args, "--data-dir", dd, "--json"]);
      expect(r.code).toBe(0);
      expect(onlyJson(r)).toMatchObject({ ok: true, records: 300 });
    }
    const missing = await admin(["verify", "--data-dir", join(tmp.path, "nope"), "--json"]);
    expect(missing.code).toBe(1);
    expect(onlyJson(missing)).toEqual({ error: { code: "FAILED_PRECONDITION", message: expect.stringMatching(/is not a directory: pass the node's data directory/) } });
  });

  it("metrics: the samples as JSON, --filter as grep would", async () => {
    const r = await admin(["metrics", "--metrics-endpoint", metricsEndpoint, "--filter", "consensus", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    expect(onlyJson(r)).toEqual({
      endpoint: metricsEndpoint,
      samples: [
        { name: "verity_consensus_view", labels: {}, value: 7 },
        { name: "verity_consensus_duration_seconds_bucket", labels: { le: "+Inf", phase: "persist" }, value: 12 },
        { name: "verity_consensus_duration_seconds_count", labels: { phase: "persist" }, value: 12 },
      ],
    });
    const text = await admin(["metrics", "--metrics-endpoint", metricsEndpoint]);
    expect(text.stdout.split("\n").filter((l) => l.includes("consensus_duration"))).toHaveLength(2);
  });
});

type Check = { name: string; status: string; found: string; fix?: string; details?: string[] };

describe("doctor without a running node", () => {
  it("checks config, data dir, disk and log offline, and reports the node, cluster and clocks as FAIL not reachable", async () => {
    const dd = await makeDataDir("doctor-offline");
    const r = await admin(["doctor", "--data-dir", dd, "--endpoints", "127.0.0.1:1", "--json"]);
    expect(r.code).toBe(1);
    const report = onlyJson(r) as { ok: boolean; checks: Check[]; counts: Record<string, number> };
    expect(report.ok).toBe(false);
    const by = Object.fromEntries(report.checks.map((c) => [c.name, c]));
    expect(report.checks.map((c) => c.name)).toEqual(["config", "data-dir", "disk-space", "log", "node", "cluster", "clock-skew", "peers", "tls-cert", "tls-ca"]);
    expect(by.config).toMatchObject({ status: "PASS", found: expect.stringMatching(/valid/) });
    expect(by["data-dir"]).toMatchObject({ status: "PASS", found: expect.stringMatching(/is readable and writable/) });
    expect(by["disk-space"]!.found).toMatch(/free of .* inodes free; segment_size 64MB/);
    expect(by.log).toMatchObject({ status: "PASS", found: expect.stringMatching(/300 records \(indexes 1\.\.300\)/) });
    for (const name of ["node", "cluster", "clock-skew"]) {
      expect(by[name], name).toMatchObject({ status: "FAIL", found: expect.stringMatching(/not reachable/), fix: expect.stringMatching(/start the node/) });
    }
    expect(by.node!.found).toMatch(/127\.0\.0\.1:1 \(--endpoints\)/);
    expect(report.counts).toEqual({ pass: 7, warn: 0, fail: 3 });

    const text = await admin(["doctor", "--data-dir", dd, "--endpoints", "127.0.0.1:1"]);
    expect(text.code).toBe(1);
    expect(text.stdout).toMatch(/^PASS {2}config {6}/m);
    expect(text.stdout).toMatch(/^FAIL {2}node {8}not reachable at 127\.0\.0\.1:1/m);
    expect(text.stdout).toMatch(/^ +fix: start the node/m);
    expect(text.stdout).toMatch(/^doctor: 7 passed, 0 warnings, 3 failed$/m);
  });

  it("fails the config with every problem listed, and damaged logs with where and what to do", async () => {
    const bad = join(tmp.path, "bad.toml");
    writeFileSync(bad, '[server]\nnode_id = "one"\n[storagee]\n');
    const r = await admin(["doctor", "--config", bad, "--endpoints", "127.0.0.1:1", "--json"]);
    const by = Object.fromEntries((onlyJson(r).checks as Check[]).map((c) => [c.name, c]));
    expect(by.config).toMatchObject({ status: "FAIL", found: expect.stringMatching(/2 problems; the node would refuse to start/), fix: expect.stringMatching(/--validate/) });
    expect(by.config!.details).toEqual([expect.stringMatching(/unknown section \[storagee\]: did you mean \[storage\]/), expect.stringMatching(/server\.node_id = "one"/)]);
    expect(by["data-dir"]).toMatchObject({ status: "WARN", found: "not checked: the configuration did not load" });

    const dd = await makeDataDir("doctor-damaged");
    const file = join(dd, "log", readdirSync(join(dd, "log")).find((f) => f.endsWith(".segment"))!);
    const bytes = readFileSync(file);
    bytes[5_000]! ^= 0x10;
    writeFileSync(file, bytes);
    const damaged = await admin(["doctor", "--data-dir", dd, "--endpoints", "127.0.0.1:1", "--json"]);
    const log = (onlyJson(damaged).checks as Check[]).find((c) => c.name === "log")!;
    expect(log).toMatchObject({ status: "FAIL", found: expect.stringMatching(/1 damaged place$/), fix: expect.stringMatching(/verity-admin log verify --data-dir .*restore/) });
    expect(log.details![0]).toMatch(/^log\/(\d+|current)\.segment at byte offset \d+ \(index \d+\): checksum mismatch/);
  });
});

describe("diagnostics export", () => {
  it("writes a .tar.gz with what it could collect, secrets redacted, and names what it could not", async () => {
    const ca = new TestCa(join(tmp.path, "ca"));
    const node = ca.issue("node-1");
    const dd = await makeDataDir("diag");
    const config = join(tmp.path, "node1.toml");
    writeFileSync(config, [
      "[server]", 'bind_address = "127.0.0.1:1"', "node_id = 1",
      "[storage]", `data_dir = "${dd}"`,
      "[security]", `tls_cert = "${node.cert}"`, `tls_key = "${node.key}"`, `tls_ca = "${ca.cert}"`, 'admins = ["admin"]',
      "[encryption]", "enabled = false", 'kms_provider = "aws-kms"', 'kms_key_id = "arn:aws:kms:us-east-1:123456789:key/SECRET-abc123"',
      "[telemetry]", `metrics_address = "${metricsEndpoint}"`, "tracing_enabled = true", 'tracing_endpoint = "http://user:hunter2@jaeger:14268/api/traces"',
    ].join("\n") + "\n");
    const logFile = join(tmp.path, "verity.log");
    const lines = Array.from({ length: 50 }, (_, i) => JSON.stringify({ level: "INFO", message: `line ${i}`, fields: i === 45 ? { settings: { "encryption.kms_key_id": "arn:SECRET-in-log" } } : {} }));
    writeFileSync(logFile, lines.join("\n") + "\n");
    const output = join(tmp.path, "verity-diag.tar.gz");

    const r = await admin(["diagnostics", "export", "--output", output, "--config", config, "--log-file", logFile, "--log-lines", "10", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    // stdout is a pipe here, not a TTY: a progress line per item on stderr.
    expect(r.stderr.match(/^diagnostics: \[\d\/6\] /gm)).toHaveLength(6);
    const result = onlyJson(r) as { output: string; bytes: number; directory: string; collected: Array<{ file: string; bytes: number }>; not_collected: Array<{ item: string; reason: string }> };
    expect(result.output).toBe(output);
    const names = result.collected.map((c) => c.file.slice(result.directory.length + 1));
    expect(names).toEqual(["versions.json", "config.redacted.toml", "settings.json", "environment.json", "logs/verity.log.tail.txt", "metrics.txt", "log-verify.json", "summary.txt"]);
    expect(result.not_collected).toEqual([{ item: "cluster status", reason: expect.stringMatching(/no endpoint answered \(127\.0\.0\.1:1: .*ECONNREFUSED/) }]);

    const into = join(tmp.path, "extracted");
    mkdirSync(into);
    const untar = await new Promise<number | null>((resolve) => spawn("tar", ["-xzf", output, "-C", into]).on("close", resolve));
    expect(untar).toBe(0);
    const dir = join(into, result.directory);
    for (const c of result.collected) expect(readFileSync(join(into, c.file)).length, c.file).toBe(c.bytes);
    const read = (name: string) => readFileSync(join(dir, name), "utf8");
    const everything = readdirSync(dir, { recursive: true }).filter((n) => !String(n).endsWith("logs")).map((n) => read(String(n))).join("\n");
    expect(everything).not.toMatch(/SECRET|hunter2|PRIVATE KEY/);
    expect(everything).not.toContain(readFileSync(node.key, "utf8").split("\n")[1]);

    const redacted = read("config.redacted.toml");
    expect(redacted).toContain(`tls_key = "${node.key}"`);
    expect(redacted).toMatch(/kms_key_id = "\[REDACTED\]"/);
    expect(redacted).toContain('tracing_endpoint = "http://[REDACTED]@jaeger:14268/api/traces"');
    expect(JSON.parse(read("settings.json")).settings["encryption.kms_key_id"]).toBe("[REDACTED]");
    const tail = read("logs/verity.log.tail.txt").trim().split("\n");
    expect(tail).toHaveLength(10);
    expect(JSON.parse(tail[0]!).message).toBe("line 40");
    expect(JSON.parse(tail[5]!).fields.settings["encryption.kms_key_id"]).toBe("[REDACTED]");
    expect(read("metrics.txt")).toContain("verity_consensus_view 7");
    expect(JSON.parse(read("log-verify.json"))).toMatchObject({ ok: true, records: 300, summary: expect.stringMatching(/^OK: \d+ segments, 300 records/) });
    expect(JSON.parse(read("versions.json"))).toMatchObject({ verity: expect.stringMatching(/^\d+\.\d+\.\d+/), node: process.version, os: { platform: process.platform } });
    expect(read("summary.txt")).toMatch(/not collected:\n {2}cluster status: no endpoint answered/);
  });

  it("works as the guide writes it, with nothing but --output, and says what it could not collect", async () => {
    const output = join(tmp.path, "guide-diag.tar.gz");
    const r = await admin(["diagnostics", "export", "--output", output]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^wrote .*guide-diag\.tar\.gz \([\d.]+ (B|KiB), a gzip'd tar/);
    expect(r.stdout).toMatch(/^ {2}versions\.json +\d+ B$/m);
    expect(r.stdout).toMatch(/^ {2}logs: no --log-file given/m);
    expect(r.stdout).toMatch(/^ {2}log verify: no --data-dir given/m);
    expect(r.stdout).toMatch(/^ {2}config file: no --config given/m);
    const bad = await admin(["diagnostics", "export", "--output", join(tmp.path, "no-such-dir", "x.tar.gz"), "--json"]);
    expect(bad.code).toBe(1);
    expect(onlyJson(bad)).toEqual({ error: { code: "FAILED_PRECONDITION", message: expect.stringMatching(/the directory .*no-such-dir does not exist; create it/) } });
  });
});
