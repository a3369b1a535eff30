/**
 * verity-server's settings as an operator meets them: real processes from bin/, real config files.
 * (`npm test` builds dist/ first.)
 */
import { spawn, spawnSync } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { tempDir } from "../helpers/log-fixtures.js";

const root = join(import.meta.dirname, "..", "..");
const server = join(root, "bin", "verity-server.js");
const tmp = tempDir("server-config");
afterAll(() => tmp.cleanup());

/** The environment without any VERITY_* variable of the machine running the tests, plus `extra`. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("VERITY_")) env[k] = v;
  return { ...env, ...extra };
}

function runServer(args: string[], extraEnv: Record<string, string> = {}): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [server, ...args], { encoding: "utf8", timeout: 60_000, cwd: tmp.path, env: cleanEnv(extraEnv) });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

function writeConfig(name: string, text: string): string {
  const path = join(tmp.path, name);
  writeFileSync(path, text);
  return path;
}

describe("verity-server --validate", () => {
  it("a good file: exit 0, 'configuration OK' and a summary; nothing is opened", () => {
    const dataDir = join(tmp.path, "good-data");
    const config = writeConfig("good.toml", `
log_level = "debug"
[server]
node_id = 2
cluster_name = "staging"
[storage]
data_dir = "${dataDir}"
segment_size = "16MB"
[consensus]
heartbeat_interval = "50ms"
election_timeout_min = "500ms"
election_timeout_max = "1s"
`);
    const r = runServer(["--validate", "--config", config, "--cluster-peers", "node2:7001,node3:7001"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^configuration OK\n/);
    expect(r.stdout).toContain(`config file     ${config}`);
    expect(r.stdout).toContain("node_id 2; cluster_name staging");
    expect(r.stdout).toContain(`data_dir        ${dataDir} (segment_size 16MB, sync_mode fsync)`);
    expect(r.stdout).toContain("cluster_peers   node2:7001, node3:7001 (3 nodes)");
    expect(r.stdout).toMatch(/not default .*cluster_peers \(flag --cluster-peers\)/);
    expect(existsSync(dataDir)).toBe(false);
  });

  it("a file with three different mistakes: exit 1, all three named, one per line", () => {
    const config = writeConfig("three-mistakes.toml", `
[storage]
segment_size = "100KB"
[consensus]
heartbeat_intervl = "100ms"
election_timeout_min = "400ms"
election_timeout_max = "300ms"
`);
    const r = runServer(["--validate", "--config", config]);
    expect(r.code).toBe(1);
    const lines = r.stderr.trim().split("\n");
    expect(lines).toEqual([
      "verity-server: unknown key consensus.heartbeat_intervl: did you mean consensus.heartbeat_interval?",
      'verity-server: storage.segment_size = "100KB": must be between 1MB and 1GB',
      "verity-server: consensus.election_timeout_min = 400ms (from the config file) must be less than consensus.election_timeout_max = 300ms (from the config file): the election timeout is drawn from between them",
      `verity-server: configuration invalid (config file ${config}): 3 problems; see docs/configuration.md`,
    ]);
    expect(r.stdout).toBe("");
  });

  it("a bare --validate: the built-in defaults are valid, on loopback, with ./data", () => {
    const r = runServer(["--validate"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^configuration OK\n/);
    expect(r.stdout).toContain(`data_dir        ${join(tmp.path, "data")} (segment_size 64MB, sync_mode fsync)`);
    expect(r.stdout).toContain("addresses       client 127.0.0.1:7000, cluster 127.0.0.1:7001, metrics 127.0.0.1:9090");
    expect(r.stdout).toContain("not default     nothing");
    expect(existsSync(join(tmp.path, "data"))).toBe(false);
  });

  it("a missing config file and a TOML syntax error are problems with exit 1", () => {
    const missing = runServer(["--validate", "--config", "nope.toml"]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain(`--config ${join(tmp.path, "nope.toml")}: cannot read the file: ENOENT (no such file)`);
    const broken = runServer(["--validate", "--config", writeConfig("broken.toml", "[server\nnode_id = 1\n")]);
    expect(broken.code).toBe(1);
    expect(broken.stderr).toMatch(/not valid TOML at line 1, column \d+/);
  });
});

describe("verity-server refuses a bad configuration before touching the data directory", () => {
  it("a non-loopback bind without TLS is refused; --insecure accepts it", () => {
    const dataDir = join(tmp.path, "refused-data");
    const r = runServer(["--bind", "0.0.0.0:7000", "--data-dir", dataDir]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(
      "verity-server: server.bind_address = 0.0.0.0:7000 (from --bind) is not a loopback address and TLS is off: refusing plaintext traffic off this machine. " +
        "Set security.tls_cert and security.tls_key, bind to 127.0.0.1, or pass --insecure to accept plaintext",
    );
    expect(r.stderr).toContain("verity-server: refusing to start: 1 problem; see docs/configuration.md");
    expect(existsSync(dataDir)).toBe(false);
    const fromEnv = runServer(["--validate"], { VERITY_BIND_ADDRESS: "10.0.0.7:7000" });
    expect(fromEnv.code).toBe(1);
    expect(fromEnv.stderr).toContain("server.bind_address = 10.0.0.7:7000 (from VERITY_BIND_ADDRESS) is not a loopback address");
    const insecure = runServer(["--validate", "--bind", "0.0.0.0:7000", "--insecure"]);
    expect(insecure.code, insecure.stderr).toBe(0);
    expect(insecure.stdout).toContain("tls             off (--insecure: plaintext allowed off loopback)");
  });

  it("at-rest encryption validates: aws-kms needs a region (or a key ARN naming one)", () => {
    const ok = writeConfig("encrypted.toml", '[encryption]\nenabled = true\nkms_provider = "aws-kms"\nkms_key_id = "arn:aws:kms:us-east-1:1:key/x"\n');
    expect(runServer(["--validate", "--config", ok]).code).toBe(0);
    const noRegion = writeConfig("encrypted-alias.toml", '[encryption]\nenabled = true\nkms_provider = "aws-kms"\nkms_key_id = "alias/verity"\n');
    const r = runServer(["--validate", "--config", noRegion]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/needs encryption.region/);
  });

  it("bad flag values get the same messages", () => {
    const r = runServer(["--validate", "--node-id", "-3", "--log-level", "loud"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('--node-id "-3" (server.node_id): must be an integer from 1 to 4294967295');
    expect(r.stderr).toContain('--log-level "loud" (log_level): must be one of "trace", "debug", "info", "warn", "error"');
  });
});

describe("verity-server startup log line", () => {
  it("shows the settings, with environment overrides and where each came from", async () => {
    const dataDir = join(tmp.path, "env-data");
    const config = writeConfig("startup.toml", '[storage]\nsegment_size = "8MB"\n[limits]\nmax_record_size = "2MB"\n');
    const child = spawn(process.execPath, [server, "--config", config, "--log-level", "info"], {
      stdio: ["ignore", "pipe", "pipe"],
      cwd: tmp.path,
      env: cleanEnv({
        VERITY_DATA_DIR: dataDir, VERITY_BIND_ADDRESS: "127.0.0.2:0", VERITY_SERVER_CLUSTER_ADDRESS: "127.0.0.1:0", VERITY_TELEMETRY_METRICS_ADDRESS: "127.0.0.1:0", VERITY_STORAGE_SEGMENT_SIZE: "2MB",
        VERITY_LOG_LEVEL: "error", VERITY_NODE_ID: "5", VERITY_STORAGE_SYNC_MODE: "async",
      }),
    });
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    const exit = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
    // Bounded: 200 polls of 50 ms.
    for (let i = 0; i < 200 && !out.includes("log recovered"); i++) await new Promise((r) => setTimeout(r, 50));
    child.kill("SIGTERM");
    expect(await exit, err).toBe(0);
    const lines = out.trim().split("\n").map((l) => JSON.parse(l) as { level: string; message: string; fields: Record<string, unknown> });
    // The log itself warns about async mode first: the setting reached the log, not only this line.
    expect(lines.some((l) => l.level === "WARN" && /sync_mode is "async"/.test(l.message))).toBe(true);
    const line = lines.find((l) => l.message === "data directory open; log recovered")!;
    expect(line).toMatchObject({ level: "INFO", target: "verity_server", message: "data directory open; log recovered" });
    // sync_mode here is read back from the opened log.
    expect(line.fields).toMatchObject({ node_id: 5, data_dir: dataDir, config_file: config, sync_mode: "async" });
    expect(line.fields.settings).toMatchObject({
      "server.bind_address": "127.0.0.2:0", // env over default
      "storage.segment_size": "2MB", // env over file
      "limits.max_record_size": "2MB", // file over default
      "server.node_id": 5,
      log_level: "info", // flag over env: the info line is printed at all
      "server.cluster_address": "127.0.0.1:0",
      cluster_peers: [],
    });
    expect(line.fields.settings_from).toEqual({
      "server.bind_address": "env VERITY_BIND_ADDRESS",
      "server.cluster_address": "env VERITY_SERVER_CLUSTER_ADDRESS",
      "telemetry.metrics_address": "env VERITY_TELEMETRY_METRICS_ADDRESS",
      "server.node_id": "env VERITY_NODE_ID",
      "storage.data_dir": "env VERITY_DATA_DIR",
      "storage.segment_size": "env VERITY_STORAGE_SEGMENT_SIZE",
      "storage.sync_mode": "env VERITY_STORAGE_SYNC_MODE",
      "limits.max_record_size": "config file",
      log_level: "flag --log-level",
    });
  });
});
