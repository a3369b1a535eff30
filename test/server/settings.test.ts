/**
 * The settings of verity-server: defaults, precedence (flag > environment > file > default), every
 * kind of parse error, the rules between keys, "did you mean", and that every problem is collected.
 */
import { chmodSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import {
  BATCH_BYTES_MAX_DEFAULT, BIND_ADDRESS_DEFAULT, CLUSTER_ADDRESS_DEFAULT, ENTRIES_PER_RPC_MAX_DEFAULT, METRICS_ADDRESS_DEFAULT,
  RECORD_BYTES_MAX_DEFAULT, SEGMENT_BYTES_DEFAULT, TENANTS_MAX_DEFAULT, Units,
} from "../../src/limits.js";
import {
  SETTINGS, envNameOf, loadSettings, refusalsOfThisBuild, settingsNotDefault, type Settings, type SettingsInputs,
} from "../../src/server/settings.js";
import {
  formatDuration, formatSize, isLoopback, parseDuration, parseHostPort, parseSize, suggest,
} from "../../src/server/setting-values.js";
import { tempDir } from "../helpers/log-fixtures.js";

const tmp = tempDir("settings");
afterAll(() => tmp.cleanup());
const CWD = "/srv/verity";

function file(text: string): SettingsInputs["configFile"] {
  return { path: "/etc/verity/config.toml", text };
}

function ok(inputs: SettingsInputs): Settings {
  const r = loadSettings({ cwd: CWD, ...inputs });
  if (!r.ok) throw new Error(`expected valid settings, got:\n${r.problems.join("\n")}`);
  return r.settings;
}

function problems(inputs: SettingsInputs): readonly string[] {
  const r = loadSettings({ cwd: CWD, ...inputs });
  expect(r.ok, "expected problems").toBe(false);
  return r.ok ? [] : r.problems;
}

/** Exactly one problem, matching `pattern`. */
function oneProblem(inputs: SettingsInputs, pattern: RegExp | string): void {
  const list = problems(inputs);
  expect(list, list.join("\n")).toHaveLength(1);
  expect(list[0]).toMatch(pattern);
}

function tlsFiles(): { cert: string; key: string; ca: string } {
  const out = { cert: join(tmp.path, "server.crt"), key: join(tmp.path, "server.key"), ca: join(tmp.path, "ca.crt") };
  for (const p of Object.values(out)) writeFileSync(p, "-----BEGIN TEST-----\n");
  return out;
}

describe("defaults", () => {
  it("a bare start: loopback, ./data under the working directory, the guide's values", () => {
    const s = ok({});
    expect(s.shown["server.bind_address"]).toBe(BIND_ADDRESS_DEFAULT);
    expect(s.shown["server.cluster_address"]).toBe(CLUSTER_ADDRESS_DEFAULT);
    expect(s.shown["telemetry.metrics_address"]).toBe(METRICS_ADDRESS_DEFAULT);
    expect(BIND_ADDRESS_DEFAULT).toBe("127.0.0.1:7000");
    expect(s.storage).toEqual({ dataDir: "/srv/verity/data", segmentBytes: SEGMENT_BYTES_DEFAULT, syncMode: "fsync" });
    expect(s.consensus).toEqual({ heartbeatIntervalMs: 100, electionTimeoutMsMin: 150, electionTimeoutMsMax: 300, entriesPerRpcMax: ENTRIES_PER_RPC_MAX_DEFAULT });
    expect(s.projections).toEqual({ cacheBytes: Units.GiB, checkpointIntervalEntries: 10_000 });
    expect(s.limits).toEqual({ tenantsMax: TENANTS_MAX_DEFAULT, streamsPerTenantMax: 100, recordBytesMax: RECORD_BYTES_MAX_DEFAULT, batchBytesMax: BATCH_BYTES_MAX_DEFAULT, queryMsMax: 30_000, queryRowsMax: 10_000 });
    expect(s.shown["storage.segment_size"]).toBe("64MB");
    expect(s.shown["limits.max_batch_size"]).toBe("10MB");
    expect(s.server.nodeId).toBeUndefined();
    expect(s.security).toMatchObject({ tlsCert: undefined, requireClientCert: true, admins: [], clients: [] });
    expect(s.encryption).toEqual({ enabled: false, kmsProvider: "local", kmsKeyId: undefined, kmsEndpoint: undefined, region: undefined, kmsPreviousKeyIds: [] });
    expect(s).toMatchObject({ logLevel: "info", clusterPeers: [], insecure: false, forceRecover: false, configPath: undefined });
    expect(settingsNotDefault(s)).toEqual({});
    expect(refusalsOfThisBuild(s)).toEqual([]);
  });

  it("every key has VERITY_ + its dotted path as an environment variable, except those that cannot", () => {
    for (const spec of Object.values(SETTINGS)) {
      if (spec.path === "security.clients" || spec.path === "force_recover") expect(spec.env).toEqual([]);
      else expect(spec.env[0]).toBe(envNameOf(spec.path));
    }
    expect(envNameOf("storage.segment_size")).toBe("VERITY_STORAGE_SEGMENT_SIZE");
    expect(SETTINGS.nodeId.env).toContain("VERITY_NODE_ID");
    expect(SETTINGS.bindAddress.env).toContain("VERITY_BIND_ADDRESS");
    expect(SETTINGS.dataDir.env).toContain("VERITY_DATA_DIR");
    expect(SETTINGS.logLevel.env).toEqual(["VERITY_LOG_LEVEL"]);
  });
});

describe("precedence: flag > environment > file > default", () => {
  const fileText = `
log_level = "debug"
[server]
bind_address = "127.0.0.3:7000"
node_id = 3
[storage]
data_dir = "/var/lib/verity"
segment_size = "128MB"
`;

  it("each source wins over the weaker ones, key by key, and origins say which", () => {
    const all = ok({
      configFile: file(fileText),
      env: { VERITY_BIND_ADDRESS: "127.0.0.2:7000", VERITY_DATA_DIR: "env-data", VERITY_STORAGE_SEGMENT_SIZE: "32MB", VERITY_LOG_LEVEL: "warn" },
      flags: { bind: "127.0.0.1:7100", "data-dir": "flag-data" },
    });
    expect(all.shown["server.bind_address"]).toBe("127.0.0.1:7100"); // flag over env and file
    expect(all.storage.dataDir).toBe("/srv/verity/flag-data"); // flag, relative to the working directory
    expect(all.storage.segmentBytes).toBe(32 * Units.MiB); // env over file
    expect(all.logLevel).toBe("warn"); // env over file
    expect(all.server.nodeId).toBe(3); // file over default
    expect(all.consensus.heartbeatIntervalMs).toBe(100); // default
    expect(settingsNotDefault(all)).toEqual({
      "server.bind_address": "flag --bind",
      "server.node_id": "config file",
      "storage.data_dir": "flag --data-dir",
      "storage.segment_size": "env VERITY_STORAGE_SEGMENT_SIZE",
      log_level: "env VERITY_LOG_LEVEL",
    });
    expect(all.configPath).toBe("/etc/verity/config.toml");

    const noFlags = ok({ configFile: file(fileText), env: { VERITY_BIND_ADDRESS: "127.0.0.2:7000", VERITY_DATA_DIR: "env-data" } });
    expect(noFlags.shown["server.bind_address"]).toBe("127.0.0.2:7000");
    expect(noFlags.storage.dataDir).toBe("/srv/verity/env-data");
    const fileOnly = ok({ configFile: file(fileText) });
    expect(fileOnly.shown["server.bind_address"]).toBe("127.0.0.3:7000");
    expect(fileOnly.storage.dataDir).toBe("/var/lib/verity");
    expect(fileOnly.logLevel).toBe("debug");
    expect(fileOnly.storage.segmentBytes).toBe(128 * Units.MiB);
  });

  it("the canonical and the guide's short variable are the same key; disagreeing is a problem", () => {
    expect(ok({ env: { VERITY_SERVER_NODE_ID: "4" } }).server.nodeId).toBe(4);
    expect(ok({ env: { VERITY_NODE_ID: "4", VERITY_SERVER_NODE_ID: "4" } }).server.nodeId).toBe(4);
    oneProblem({ env: { VERITY_NODE_ID: "4", VERITY_SERVER_NODE_ID: "5" } }, /VERITY_SERVER_NODE_ID="5" and VERITY_NODE_ID="4" both set server.node_id and disagree: set only one of them/);
  });

  it("an empty environment variable counts as unset", () => {
    expect(ok({ env: { VERITY_LOG_LEVEL: "", VERITY_NODE_ID: "" } }).logLevel).toBe("info");
  });

  it("a bad value is reported even when a stronger source overrides it", () => {
    oneProblem({ configFile: file('[storage]\nsegment_size = "1KB"'), flags: {}, env: { VERITY_STORAGE_SEGMENT_SIZE: "2MB" } }, 'storage.segment_size = "1KB": must be between 1MB and 1GB');
  });

  it("switch flags (booleans) override the file both ways", () => {
    expect(ok({ configFile: file("insecure = true"), flags: { insecure: false } }).insecure).toBe(false);
    expect(ok({ flags: { insecure: true } }).insecure).toBe(true);
    expect(ok({ env: { VERITY_INSECURE: "yes" } }).insecure).toBe(true);
    expect(ok({ flags: { "force-recover": true } }).forceRecover).toBe(true);
  });
});

describe("value kinds", () => {
  it("sizes: units, binary multiples, errors", () => {
    expect(parseSize("64MB")).toEqual({ ok: true, value: 64 * Units.MiB });
    expect(parseSize("1GB")).toEqual({ ok: true, value: Units.GiB });
    expect(parseSize("1.5 GiB")).toEqual({ ok: true, value: 1.5 * Units.GiB });
    expect(parseSize("512kb")).toEqual({ ok: true, value: 512 * Units.KiB });
    expect(parseSize(4096)).toEqual({ ok: true, value: 4096 });
    expect(parseSize("4096")).toEqual({ ok: true, value: 4096 });
    for (const bad of ["", "MB", "64XB", "-1MB", "1.5B", "sixty", "1e3MB"]) expect(parseSize(bad).ok, bad).toBe(false);
    expect(parseSize(true)).toMatchObject({ ok: false, reason: 'must be a size like "64MB", not a boolean' });
    expect([formatSize(64 * Units.MiB), formatSize(Units.GiB), formatSize(1000), formatSize(3 * Units.KiB)]).toEqual(["64MB", "1GB", "1000B", "3KB"]);
  });

  it("durations: units, whole milliseconds, a bare number is refused", () => {
    expect(parseDuration("100ms")).toEqual({ ok: true, value: 100 });
    expect(parseDuration("2s")).toEqual({ ok: true, value: 2000 });
    expect(parseDuration("1.5s")).toEqual({ ok: true, value: 1500 });
    expect(parseDuration("1m")).toEqual({ ok: true, value: 60_000 });
    expect(parseDuration(150)).toMatchObject({ ok: false, reason: 'needs a unit: write "150ms" or "150s"' });
    expect(parseDuration("150")).toMatchObject({ ok: false, reason: 'needs a unit: write "150ms" or "150s"' });
    for (const bad of ["0.5ms", "10 parsecs", "ms", "-5ms"]) expect(parseDuration(bad).ok, bad).toBe(false);
    expect([formatDuration(150), formatDuration(2000), formatDuration(1500), formatDuration(60_000)]).toEqual(["150ms", "2s", "1500ms", "1m"]);
  });

  it("addresses: host:port, IPv6 in brackets, port 0, loopback", () => {
    expect(parseHostPort("127.0.0.1:7000")).toEqual({ ok: true, value: { host: "127.0.0.1", port: 7000 } });
    expect(parseHostPort("Node2.example:7001")).toEqual({ ok: true, value: { host: "node2.example", port: 7001 } });
    expect(parseHostPort("[::1]:0")).toEqual({ ok: true, value: { host: "::1", port: 0 } });
    for (const bad of ["7000", "host", "host:", ":7000", "host:65536", "host:-1", "::1:7000", "300.1.1.1:7000", "bad_host:7000", "a b:1"]) {
      expect(parseHostPort(bad).ok, bad).toBe(false);
    }
    const loop = (s: string) => isLoopback((parseHostPort(s) as { value: { host: string; port: number } }).value);
    expect([loop("127.0.0.1:1"), loop("127.9.9.9:1"), loop("localhost:1"), loop("[::1]:1")]).toEqual([true, true, true, true]);
    expect([loop("0.0.0.0:1"), loop("10.0.0.1:1"), loop("node1:1"), loop("[::]:1")]).toEqual([false, false, false, false]);
  });

  it("suggestions only for likely typos", () => {
    expect(suggest("segmnt_size", ["segment_size", "sync_mode"])).toBe("segment_size");
    expect(suggest("zzz", ["segment_size", "sync_mode"])).toBeUndefined();
  });
});

describe("every parse error names the key, the value and the rule", () => {
  const cases: [string, SettingsInputs, RegExp | string][] = [
    ["size format", { configFile: file('[storage]\nsegment_size = "lots"') }, 'storage.segment_size = "lots": is not a size: write a number and a unit, like "512KB", "64MB" or "1GB"'],
    ["size range", { configFile: file('[storage]\nsegment_size = "100KB"') }, 'storage.segment_size = "100KB": must be between 1MB and 1GB'],
    ["size range (env)", { env: { VERITY_LIMITS_MAX_RECORD_SIZE: "32MB" } }, 'VERITY_LIMITS_MAX_RECORD_SIZE="32MB" (limits.max_record_size): must be between 1B and 16MB'],
    ["duration without unit", { configFile: file("[consensus]\nheartbeat_interval = 100") }, 'consensus.heartbeat_interval = 100: needs a unit: write "100ms" or "100s"'],
    ["duration range", { configFile: file('[consensus]\nelection_timeout_max = "2m"') }, 'consensus.election_timeout_max = "2m": must be between 10ms and 1m'],
    ["duration format", { env: { VERITY_CONSENSUS_HEARTBEAT_INTERVAL: "fast" } }, /VERITY_CONSENSUS_HEARTBEAT_INTERVAL="fast" \(consensus.heartbeat_interval\): is not a duration/],
    ["integer as a string in the file", { configFile: file('[server]\nnode_id = "1"') }, 'server.node_id = "1": must be an integer, not a string: write 1 without quotes'],
    ["integer range (flag)", { flags: { "node-id": "0" } }, '--node-id "0" (server.node_id): must be an integer from 1 to 4294967295'],
    ["integer not a number (flag)", { flags: { "node-id": "one" } }, '--node-id "one" (server.node_id): must be an integer from 1 to 4294967295, not text'],
    ["integer range (file)", { configFile: file("[consensus]\nmax_entries_per_rpc = 0") }, "consensus.max_entries_per_rpc = 0: must be an integer from 1 to 10000"],
    ["float for an integer", { configFile: file("[limits]\nmax_tenants = 1.5") }, "limits.max_tenants = 1.5: must be an integer from 1 to 100000"],
    ["boolean", { configFile: file('[security]\nrequire_client_cert = "true"') }, 'security.require_client_cert = "true": must be true or false (without quotes)'],
    ["boolean (env)", { env: { VERITY_INSECURE: "maybe" } }, 'VERITY_INSECURE="maybe" (insecure): must be true or false'],
    ["choice with suggestion", { configFile: file('[storage]\nsync_mode = "fsnc"') }, 'storage.sync_mode = "fsnc": must be one of "fsync", "async": did you mean "fsync"?'],
    ["choice (flag)", { flags: { "log-level": "verbose" } }, '--log-level "verbose" (log_level): must be one of "trace", "debug", "info", "warn", "error"'],
    ["kms provider", { configFile: file('[encryption]\nkms_provider = "aws"') }, /encryption.kms_provider = "aws": must be one of "local", "aws-kms", "gcp-kms", "azure-keyvault"/],
    ["address", { flags: { bind: "localhost" } }, '--bind "localhost" (server.bind_address): is not an address: write "host:port", like "127.0.0.1:7000"'],
    ["port", { configFile: file('[telemetry]\nmetrics_address = "127.0.0.1:99999"') }, /telemetry.metrics_address = "127.0.0.1:99999": has no valid port: the port must be 0 to 65535/],
    ["IPv6 without brackets", { flags: { "cluster-address": "::1:7001" } }, /has an IPv6 host without brackets/],
    ["relative data_dir in the file", { configFile: file('[storage]\ndata_dir = "data"') }, 'storage.data_dir = "data": must be an absolute path in the config file (a relative path is allowed only in a flag or environment variable)'],
    ["empty text", { configFile: file('[encryption]\nkms_key_id = ""') }, 'encryption.kms_key_id = "": must not be empty'],
    ["cluster name", { configFile: file('[server]\ncluster_name = "my cluster"') }, /server.cluster_name = "my cluster": must be 1 to 64 characters from \[A-Za-z0-9_.-\]/],
    ["url", { configFile: file('[telemetry]\ntracing_endpoint = "jaeger:14268"') }, 'telemetry.tracing_endpoint = "jaeger:14268": must be an http:// or https:// URL'],
    ["unreadable TLS file", { configFile: file('[security]\ntls_ca = "/nonexistent/ca.crt"') }, 'security.tls_ca = "/nonexistent/ca.crt": cannot be read: ENOENT (no such file)'],
    ["peers: duplicate", { flags: { "cluster-peers": "node2:7001, node2:7001" } }, /--cluster-peers "node2:7001, node2:7001" \(cluster_peers\): lists node2:7001 more than once/],
    ["peers: empty entry", { flags: { "cluster-peers": "node2:7001,,node3:7001" } }, /has an empty entry/],
    ["peers: bad entry", { configFile: file('cluster_peers = ["node2:7001", "node3"]') }, /cluster_peers = \["node2:7001", "node3"\]: entry "node3" is not an address/],
    ["peers: port 0", { flags: { "cluster-peers": "node2:0" } }, /entry "node2:0" has port 0/],
    ["peers: wrong type", { configFile: file("cluster_peers = 5") }, "cluster_peers = 5: must be an array of strings, not an integer"],
    ["identities: duplicate", { configFile: file('[security]\nadmins = ["ops", "ops"]') }, 'security.admins = ["ops", "ops"]: lists "ops" more than once'],
    ["clients: bad tenant", { configFile: file('[[security.clients]]\nidentity = "app"\ntenants = ["acme", "bad id"]') }, /^security.clients\[0\].tenants\[1\] = "bad id" is not a tenant id/],
    ["clients: unknown key", { configFile: file('[[security.clients]]\nidentity = "app"\ntenant = ["acme"]') }, 'security.clients[0] has an unknown key "tenant": did you mean "tenants"? (keys: identity, tenants)'],
    ["clients: missing identity", { configFile: file('[[security.clients]]\ntenants = ["acme"]') }, "security.clients[0].identity is missing"],
    ["flag given twice", { flags: { bind: ["127.0.0.1:1", "127.0.0.1:2"] } }, '--bind was given more than once ("127.0.0.1:1", "127.0.0.1:2"): give it once'],
  ];
  for (const [name, inputs, expected] of cases) {
    it(name, () => oneProblem(inputs, typeof expected === "string" ? new RegExp(`^${escape(expected)}$`) : expected));
  }
});

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

describe("the config file itself", () => {
  it("a TOML syntax error gives line and column", () => {
    oneProblem({ configFile: file('[server]\nnode_id = \n') }, /^--config \/etc\/verity\/config.toml: not valid TOML at line 2, column \d+: /);
  });

  it("a missing or unreadable file is a problem, not a crash", () => {
    oneProblem({ configFile: { path: join(tmp.path, "missing.toml") } }, /cannot read the file: ENOENT \(no such file\)/);
    oneProblem({ configFile: { path: tmp.path } }, /cannot read the file: EISDIR/);
  });

  it("reads a real file, relative to the working directory", () => {
    writeFileSync(join(tmp.path, "real.toml"), '[server]\ncluster_name = "production"\n');
    const s = ok({ configFile: { path: "real.toml" }, cwd: tmp.path });
    expect(s.server.clusterName).toBe("production");
    expect(s.configPath).toBe(join(tmp.path, "real.toml"));
  });

  it("unknown keys and sections, with did-you-mean", () => {
    oneProblem({ configFile: file('[storage]\nsegmnt_size = "64MB"') }, "unknown key storage.segmnt_size: did you mean storage.segment_size?");
    oneProblem({ configFile: file("[strage]\nx = 1") }, /^unknown section \[strage\]: did you mean \[storage\]\? \(sections: \[server\], \[storage\]/);
    oneProblem({ configFile: file('[server]\ndata_dir = "/x"') }, "unknown key server.data_dir: did you mean storage.data_dir? (it belongs in [storage])");
    oneProblem({ configFile: file('[telemetry]\nlog_level = "info"') }, "unknown key telemetry.log_level: did you mean log_level? (it belongs at the top, before any section)");
    oneProblem({ configFile: file("[server]\nwhatever = 1") }, "unknown key server.whatever (see docs/configuration.md for every key)");
    oneProblem({ configFile: file("server = 1") }, "server = 1: must be the section [server], not an integer");
    oneProblem({ configFile: file("[storage.extra]\nx = 1") }, /^unknown key storage.extra/);
  });

  it("force_recover is a flag only", () => {
    oneProblem({ configFile: file("force_recover = true") }, "force_recover cannot be set in the config file: it is a one-time step, given only as --force-recover on the command line");
    oneProblem({ env: { VERITY_FORCE_RECOVER: "true" } }, /VERITY_FORCE_RECOVER is not read: force_recover is a one-time step/);
  });

  it("prototype-looking keys are just unknown keys", () => {
    const list = problems({ configFile: file('__proto__ = 1\nconstructor = 2\n[server]\ntoString = "x"') });
    expect(list).toEqual(["unknown key __proto__ (see docs/configuration.md for every key)", expect.stringMatching(/^unknown key constructor/), expect.stringMatching(/^unknown key server.toString/)]);
  });

  it("the guide's example file is valid once its TLS files exist, and this build refuses its encryption", () => {
    const tls = tlsFiles();
    const guide = `
[server]
bind_address = "0.0.0.0:7000"
cluster_address = "0.0.0.0:7001"
node_id = 1
cluster_name = "production"
[storage]
data_dir = "/var/lib/verity"
segment_size = "64MB"
sync_mode = "fsync"
[consensus]
heartbeat_interval = "100ms"
election_timeout_min = "150ms"
election_timeout_max = "300ms"
max_entries_per_rpc = 100
[projections]
cache_size = "1GB"
checkpoint_interval = 10000
[security]
tls_cert = "${tls.cert}"
tls_key = "${tls.key}"
tls_ca = "${tls.ca}"
require_client_cert = true
admins = ["ops@example.com"]
nodes = ["node1", "node2", "node3"]
[[security.clients]]
identity = "billing-service"
tenants = ["acme", "globex"]
[encryption]
enabled = true
kms_provider = "aws-kms"
kms_key_id = "arn:aws:kms:us-east-1:123456789:key/abc123"
[limits]
max_tenants = 1000
max_streams_per_tenant = 100
max_record_size = "1MB"
max_batch_size = "10MB"
[telemetry]
metrics_address = "0.0.0.0:9090"
tracing_enabled = true
tracing_endpoint = "http://jaeger:14268/api/traces"
`;
    const s = ok({ configFile: file(guide), flags: { "cluster-peers": "node2:7001,node3:7001" } });
    expect(s.server).toEqual({ bindAddress: { host: "0.0.0.0", port: 7000 }, clusterAddress: { host: "0.0.0.0", port: 7001 }, nodeId: 1, clusterName: "production" });
    expect(s.security.clients).toEqual([{ identity: "billing-service", tenants: ["acme", "globex"] }]);
    expect(s.shown["cluster_peers"]).toEqual(["node2:7001", "node3:7001"]);
    expect(s.telemetry.tracingEndpoint).toBe("http://jaeger:14268/api/traces");
    // At-rest encryption is built (issue 9): no longer refused; the region comes from the key ARN.
    expect(refusalsOfThisBuild(s)).toEqual([]);
    expect(s.encryption).toMatchObject({ enabled: true, kmsProvider: "aws-kms", region: undefined, kmsPreviousKeyIds: [] });
  });
});

describe("rules between keys", () => {
  it("election_timeout_min < election_timeout_max, heartbeat_interval < election_timeout_min", () => {
    oneProblem(
      { configFile: file('[consensus]\nelection_timeout_min = "300ms"\nelection_timeout_max = "200ms"') },
      "consensus.election_timeout_min = 300ms (from the config file) must be less than consensus.election_timeout_max = 200ms (from the config file): the election timeout is drawn from between them",
    );
    oneProblem(
      { env: { VERITY_CONSENSUS_HEARTBEAT_INTERVAL: "150ms" } },
      "consensus.heartbeat_interval = 150ms (from VERITY_CONSENSUS_HEARTBEAT_INTERVAL) must be less than consensus.election_timeout_min = 150ms (the default), or followers start elections against a healthy leader",
    );
  });

  it("a record must fit in a batch", () => {
    oneProblem({ configFile: file('[limits]\nmax_record_size = "8MB"\nmax_batch_size = "4MB"') }, /limits.max_record_size = 8MB \(from the config file\) must not be larger than limits.max_batch_size = 4MB/);
  });

  it("TLS: cert and key together; require_client_cert needs tls_ca", () => {
    const tls = tlsFiles();
    oneProblem({ env: { VERITY_SECURITY_TLS_CERT: tls.cert } }, /security.tls_cert = .*server.crt \(from VERITY_SECURITY_TLS_CERT\) needs security.tls_key/);
    oneProblem({ env: { VERITY_SECURITY_TLS_KEY: tls.key } }, /needs security.tls_cert/);
    // An unreadable certificate without a key: both problems, and the second does not repeat the bad value.
    expect(problems({ env: { VERITY_SECURITY_TLS_CERT: "/nonexistent.crt" } })).toEqual([
      expect.stringMatching(/VERITY_SECURITY_TLS_CERT="\/nonexistent.crt" \(security.tls_cert\): cannot be read: ENOENT/),
      "security.tls_cert (given, but invalid as reported) needs security.tls_key: give the certificate and its private key together",
    ]);
    oneProblem(
      { env: { VERITY_SECURITY_TLS_CERT: tls.cert, VERITY_SECURITY_TLS_KEY: tls.key } },
      "security.require_client_cert = true (the default) needs security.tls_ca: the CA that client certificates must be signed by (or set require_client_cert = false)",
    );
    oneProblem({ configFile: file("[security]\nrequire_client_cert = true") }, /security.require_client_cert = true \(from the config file\) needs security.tls_ca/);
    expect(ok({ env: { VERITY_SECURITY_TLS_CERT: tls.cert, VERITY_SECURITY_TLS_KEY: tls.key, VERITY_SECURITY_REQUIRE_CLIENT_CERT: "false" } }).security.requireClientCert).toBe(false);
    expect(ok({ env: { VERITY_SECURITY_TLS_CERT: tls.cert, VERITY_SECURITY_TLS_KEY: tls.key, VERITY_SECURITY_TLS_CA: tls.ca } }).security.tlsCa).toBe(tls.ca);
  });

  it.runIf(process.getuid?.() !== 0)("TLS: a file that exists but cannot be read", () => {
    const secret = join(tmp.path, "secret.key");
    writeFileSync(secret, "x");
    chmodSync(secret, 0o000);
    oneProblem({ env: { VERITY_SECURITY_TLS_CA: secret } }, /cannot be read: EACCES/);
  });

  it("plaintext off loopback is refused unless insecure; TLS makes it fine", () => {
    oneProblem(
      { flags: { bind: "0.0.0.0:7000" } },
      "server.bind_address = 0.0.0.0:7000 (from --bind) is not a loopback address and TLS is off: refusing plaintext traffic off this machine. Set security.tls_cert and security.tls_key, bind to 127.0.0.1, or pass --insecure to accept plaintext",
    );
    expect(problems({ flags: { "cluster-address": "10.0.0.5:7001", "metrics-address": "node1:9090" } })).toHaveLength(2);
    expect(ok({ flags: { bind: "0.0.0.0:7000", insecure: true } }).insecure).toBe(true);
    expect(ok({ configFile: file('insecure = true\n[server]\nbind_address = "10.1.1.1:7000"') }).shown["server.bind_address"]).toBe("10.1.1.1:7000");
    const tls = tlsFiles();
    const withTls = { VERITY_SECURITY_TLS_CERT: tls.cert, VERITY_SECURITY_TLS_KEY: tls.key, VERITY_SECURITY_TLS_CA: tls.ca };
    expect(ok({ env: withTls, flags: { bind: "0.0.0.0:7000" } }).server.bindAddress.host).toBe("0.0.0.0");
    expect(ok({ flags: { bind: "localhost:7000" } }).server.bindAddress.host).toBe("localhost");
  });

  it("ports: 0 picks one, and services may not share a port", () => {
    expect(ok({ flags: { bind: "127.0.0.1:0", "cluster-address": "127.0.0.1:0", "metrics-address": "127.0.0.1:0" } }).server.bindAddress.port).toBe(0);
    oneProblem({ flags: { "metrics-address": "127.0.0.1:7000" } }, /server.bind_address = 127.0.0.1:7000 \(the default\) and telemetry.metrics_address = 127.0.0.1:7000 \(from --metrics-address\) use the same port/);
  });

  it("with TLS and peers, security.nodes must name the node identities", () => {
    const tls = tlsFiles();
    const env = { VERITY_SECURITY_TLS_CERT: tls.cert, VERITY_SECURITY_TLS_KEY: tls.key, VERITY_SECURITY_TLS_CA: tls.ca };
    oneProblem({ env, flags: { "cluster-peers": "node2:7001" } }, /security.nodes is empty, but TLS is on and cluster_peers .* lists peers/);
    expect(ok({ env: { ...env, VERITY_SECURITY_NODES: "node-1,node-2" }, flags: { "cluster-peers": "node2:7001" } }).security.nodes).toEqual(["node-1", "node-2"]);
    expect(ok({ env }).security.nodes).toEqual([]); // a single node needs no node identities
  });

  it("cluster_peers must not list this node", () => {
    oneProblem({ flags: { "cluster-peers": "127.0.0.1:7001,node2:7001" } }, /cluster_peers = \["127.0.0.1:7001","node2:7001"\] \(from --cluster-peers\) lists this node's own server.cluster_address = 127.0.0.1:7001 \(the default\)/);
    expect(ok({ flags: { "cluster-peers": "node2:7001,node3:7001" } }).clusterPeers).toHaveLength(2);
  });

  it("encryption needs a key id, tracing needs an endpoint", () => {
    oneProblem({ configFile: file("[encryption]\nenabled = true") }, /encryption.enabled = true \(from the config file\) needs encryption.kms_key_id/);
    oneProblem({ env: { VERITY_TELEMETRY_TRACING_ENABLED: "true" } }, /telemetry.tracing_enabled = true \(from VERITY_TELEMETRY_TRACING_ENABLED\) needs telemetry.tracing_endpoint/);
  });

  it("an identity has one role", () => {
    oneProblem(
      { configFile: file('[security]\nadmins = ["ops"]\nnodes = ["node1"]\n[[security.clients]]\nidentity = "ops"\ntenants = ["acme"]') },
      'security: identity "ops" is listed as an admin (security.admins) and as a tenant client ([[security.clients]]): a certificate identity has one role',
    );
    expect(ok({ env: { VERITY_SECURITY_ADMINS: "ops, sre", VERITY_SECURITY_NODES: "node1" } }).security.admins).toEqual(["ops", "sre"]);
  });
});

describe("environment variables", () => {
  it("an unknown variable named after a section is a problem, with a suggestion; others are warnings", () => {
    oneProblem({ env: { VERITY_STORAGE_SEGMNT_SIZE: "64MB" } }, "unknown environment variable VERITY_STORAGE_SEGMNT_SIZE: did you mean VERITY_STORAGE_SEGMENT_SIZE?");
    const r = loadSettings({ cwd: CWD, env: { VERITY_LOGLEVEL: "debug", VERITY_CLIENT_TOKEN: "x", PATH: "/bin" } });
    expect(r.ok).toBe(true);
    expect(r.warnings).toEqual([
      "ignoring environment variable VERITY_CLIENT_TOKEN, which is not a verity-server setting",
      "ignoring environment variable VERITY_LOGLEVEL, which is not a verity-server setting: did you mean VERITY_LOG_LEVEL?",
    ]);
  });

  it("every key that has a variable can be set through it", () => {
    const s = ok({
      env: {
        VERITY_SERVER_CLUSTER_NAME: "staging", VERITY_STORAGE_SYNC_MODE: "async", VERITY_CONSENSUS_MAX_ENTRIES_PER_RPC: "50",
        VERITY_PROJECTIONS_CACHE_SIZE: "256MB", VERITY_PROJECTIONS_CHECKPOINT_INTERVAL: "500", VERITY_LIMITS_MAX_TENANTS: "5",
        VERITY_LIMITS_MAX_STREAMS_PER_TENANT: "7", VERITY_LIMITS_MAX_BATCH_SIZE: "20MB", VERITY_ENCRYPTION_KMS_PROVIDER: "gcp-kms",
        VERITY_CLUSTER_PEERS: "node2:7001", VERITY_TELEMETRY_TRACING_ENDPOINT: "https://otel:4318/v1/traces",
      },
    });
    expect(s.server.clusterName).toBe("staging");
    expect(s.storage.syncMode).toBe("async");
    expect(s.consensus.entriesPerRpcMax).toBe(50);
    expect(s.projections).toEqual({ cacheBytes: 256 * Units.MiB, checkpointIntervalEntries: 500 });
    expect(s.limits).toMatchObject({ tenantsMax: 5, streamsPerTenantMax: 7, batchBytesMax: 20 * Units.MiB });
    expect(s.encryption.kmsProvider).toBe("gcp-kms");
    expect(s.clusterPeers).toEqual([{ host: "node2", port: 7001 }]);
  });
});

describe("all problems are collected, not just the first", () => {
  it("file, environment and flag problems, and the rules between keys, in one report", () => {
    const list = problems({
      configFile: file(`
log_level = "loud"
[server]
bind_address = "0.0.0.0:7000"
[storage]
segment_size = "100KB"
sync_mode = "sometimes"
[consensus]
election_timeout_min = "500ms"
election_timeout_max = "400ms"
[limits]
max_tenants = -1
[strage]
x = 1
`),
      env: { VERITY_NODE_ID: "zero", VERITY_STORAGE_SEGMNT: "1" },
      flags: { "cluster-peers": "a:1,a:1" },
    });
    expect(list).toHaveLength(10);
    for (const expected of [
      /^unknown section \[strage\]/, /^unknown environment variable VERITY_STORAGE_SEGMNT/, /^VERITY_NODE_ID="zero"/,
      /^storage.segment_size = "100KB"/, /^storage.sync_mode = "sometimes"/, /^limits.max_tenants = -1/, /^log_level = "loud"/,
      /^--cluster-peers "a:1,a:1"/, /^consensus.election_timeout_min = 500ms .* must be less than consensus.election_timeout_max = 400ms/,
      /^server.bind_address = 0.0.0.0:7000 \(from the config file\) is not a loopback address/,
    ]) {
      expect(list.some((p) => expected.test(p)), `${expected} in:\n${list.join("\n")}`).toBe(true);
    }
  });
});

describe("property: random TOML-ish input never throws, only returns settings or problems", () => {
  const sectionNames = ["server", "storage", "consensus", "projections", "security", "encryption", "limits", "telemetry", "strage", "security.clients"];
  const keyNames = Object.values(SETTINGS).map((s) => s.path.split(".").pop()!).concat(["x", "__proto__", "constructor", "data dir", "tenants", "identity"]);
  const scalar = fc.oneof(
    fc.constantFrom('"64MB"', '"100KB"', '"150ms"', '"2s"', '"0.0.0.0:7000"', '"127.0.0.1:0"', '"fsync"', '""', '"/tmp"', '"a:1,a:1"', "true", "false", "0", "-1", "1e9", "1.5", "nan", "inf", "1979-05-27T07:32:00Z"),
    fc.integer().map(String),
    fc.string({ maxLength: 12 }).map((s) => JSON.stringify(s)),
  );
  const value = fc.oneof(scalar, fc.array(scalar, { maxLength: 4 }).map((a) => `[${a.join(", ")}]`), fc.array(fc.tuple(fc.constantFrom(...keyNames), scalar), { maxLength: 3 }).map((kv) => `{ ${kv.map(([k, v]) => `${JSON.stringify(k)} = ${v}`).join(", ")} }`));
  const line = fc.oneof(
    fc.constantFrom(...sectionNames).map((s) => (s === "security.clients" ? "[[security.clients]]" : `[${s}]`)),
    fc.tuple(fc.constantFrom(...keyNames), value).map(([k, v]) => `${/^[a-z_]+$/.test(k) ? k : JSON.stringify(k)} = ${v}`),
    fc.string({ maxLength: 20 }),
  );
  const text = fc.oneof(fc.array(line, { maxLength: 15 }).map((lines) => lines.join("\n")), fc.string({ maxLength: 200 }));
  const env = fc.dictionary(fc.constantFrom(...Object.values(SETTINGS).flatMap((s) => s.env), "VERITY_STORAGE_X", "VERITY_Y"), fc.string({ maxLength: 12 }), { maxKeys: 4 });
  const flags = fc.dictionary(fc.constantFrom("bind", "data-dir", "node-id", "cluster-peers", "log-level", "insecure"), fc.oneof(fc.string({ maxLength: 12 }), fc.boolean()), { maxKeys: 3 });

  it("holds for 500 random inputs", () => {
    fc.assert(
      fc.property(text, env, flags, (t, e, f) => {
        const r = loadSettings({ cwd: CWD, configFile: file(t), env: e, flags: f });
        if (r.ok) {
          expect(r.settings.consensus.heartbeatIntervalMs).toBeLessThan(r.settings.consensus.electionTimeoutMsMin);
          expect(r.settings.limits.recordBytesMax).toBeLessThanOrEqual(r.settings.limits.batchBytesMax);
        } else {
          expect(r.problems.length).toBeGreaterThan(0);
          for (const p of r.problems) expect(typeof p === "string" && p.length > 0 && !p.includes("\n")).toBe(true);
        }
      }),
      { numRuns: 500 },
    );
  });
});
