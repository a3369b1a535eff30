/**
 * `verity-admin doctor` and `diagnostics export` against a real 3-node cluster with mutual TLS:
 * a healthy cluster passes (its 2-day test certificates warn), the node's own certificate is refused
 * by the Admin API with the fix, the bundle holds every member's status, metrics and a log verify,
 * and nodes going down turn into FAIL "not reachable" and unreachable peers, never a thrown error.
 */
import { spawn } from "node:child_process";
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { TestCa } from "../helpers/certs.js";
import { tempDir } from "../helpers/log-fixtures.js";
import { ProcessCluster, exited, until, type ProcessNode } from "../helpers/process-cluster.js";

const root = join(import.meta.dirname, "..", "..");
const tmp = tempDir("admin-doctor");
const ca = new TestCa(join(tmp.path, "ca"));
const cluster = new ProcessCluster(tmp.path, ca);
afterAll(() => {
  cluster.killAll();
  tmp.cleanup();
});
const ENV = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith("VERITY_")));

function admin(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [join(root, "bin", "verity-admin.js"), ...args], { env: ENV, stdio: ["ignore", "pipe", "pipe"] });
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

type Check = { name: string; status: string; found: string; fix?: string; details?: string[] };

async function doctor(args: string[]): Promise<{ code: number; checks: Record<string, Check> }> {
  const r = await admin(["doctor", ...args, "--json"]);
  const report = JSON.parse(r.stdout) as { checks: Check[] };
  return { code: r.code, checks: Object.fromEntries(report.checks.map((c) => [c.name, c])) };
}

/** The config file node 1 runs with, as flags and environment give it in ProcessCluster.start. */
function configOf(node: ProcessNode, peers: ProcessNode[]): string {
  const path = join(tmp.path, `node${node.id}.toml`);
  const q = (s: string) => JSON.stringify(s);
  writeFileSync(path, [
    `cluster_peers = [${peers.map((p) => q(`127.0.0.1:${p.cluster}`)).join(", ")}]`,
    "[server]", `bind_address = "127.0.0.1:${node.client}"`, `cluster_address = "127.0.0.1:${node.cluster}"`, `node_id = ${node.id}`,
    "[storage]", `data_dir = ${q(join(tmp.path, `node${node.id}`))}`,
    "[security]", `tls_cert = ${q(join(ca.dir, `node-${node.id}.crt`))}`, `tls_key = ${q(join(ca.dir, `node-${node.id}.key`))}`, `tls_ca = ${q(ca.cert)}`,
    `nodes = ["node-1", "node-2", "node-3", "node-4", "node-5"]`, `admins = ["admin"]`,
    "[telemetry]", `metrics_address = "127.0.0.1:${node.metrics}"`,
  ].join("\n") + "\n");
  return path;
}

describe("verity-admin doctor and diagnostics export on a 3-node TLS cluster", () => {
  it("passes a healthy cluster, bundles it, and reports nodes going down", async () => {
    const nodes = [await cluster.addNode(1), await cluster.addNode(2), await cluster.addNode(3)];
    for (const n of nodes) cluster.start(n, { peers: nodes.filter((o) => o !== n) });
    await until("a leader", () => cluster.leaderOf(nodes));
    const config = configOf(nodes[0]!, nodes.slice(1));
    const endpoints = nodes.map((n) => `127.0.0.1:${n.client}`).join(",");
    const adminTls = ["--tls-ca", ca.cert, "--tls-cert", cluster.admin.cert, "--tls-key", cluster.admin.key];
    const asAdmin = ["--config", config, "--endpoints", endpoints, ...adminTls];
    const healthy = await admin(["cluster", "wait-healthy", "--timeout", "30s", "--endpoints", endpoints, ...adminTls]);
    expect(healthy.code, healthy.stdout + healthy.stderr).toBe(0);

    const good = await doctor(asAdmin);
    expect(good.code, JSON.stringify(good.checks, null, 2)).toBe(0);
    const c = good.checks;
    expect(c.config).toMatchObject({ status: "PASS", found: expect.stringMatching(/valid; node_id 1, .* 2 peers, TLS on/) });
    expect(c["data-dir"]!.status).toBe("PASS");
    expect(c.log!.found).toMatch(/\d+ records? \(indexes 1\.\.\d+\)/);
    expect(c.node).toMatchObject({ status: "PASS", found: "3 endpoints answered" });
    expect(c.cluster).toMatchObject({ status: "PASS", found: expect.stringMatching(/leader node \d, view \d+, 3 members, every one up and caught up/) });
    expect(c["clock-skew"]).toMatchObject({ status: "PASS", found: expect.stringMatching(/clocks agree .*\(3 members and this machine\)/) });
    expect(c["clock-skew"]!.details).toHaveLength(3);
    expect(c.peers).toMatchObject({ status: "PASS", found: "2 of 2 reachable on their cluster port" });
    expect(c.peers!.details!.join("\n")).toMatch(/certificate "node-2"[\s\S]*certificate "node-3"|certificate "node-3"[\s\S]*certificate "node-2"/);
    // TestCa certificates are valid for 2 days: inside the 30-day warning.
    expect(c["tls-cert"]).toMatchObject({ status: "WARN", found: expect.stringMatching(/CN=node-1: expires on .*, in [01] days?/), fix: expect.stringMatching(/issue a new certificate/) });
    expect(c["tls-ca"]).toMatchObject({ status: "WARN", found: expect.stringMatching(/CN=verity-test-ca: expires on/) });

    // Without an admin certificate, doctor uses the node's own: the Admin API refuses it, and says which fix.
    const asNode = await doctor(["--config", config]);
    expect(asNode.code).toBe(1);
    expect(asNode.checks.node).toMatchObject({
      status: "FAIL", found: expect.stringMatching(/refused: .*"node-1" has no admin role/), fix: expect.stringMatching(/--tls-cert and --tls-key \(an identity in \[security\] admins\)/),
    });
    expect(asNode.checks["clock-skew"]).toMatchObject({ status: "FAIL", found: expect.stringMatching(/^not checked: the Admin API refused this certificate/) });
    expect(asNode.checks.peers!.status).toBe("PASS");

    // The bundle: every member's status, the metrics of node 1's metrics address, its log verified, no key material.
    const output = join(tmp.path, "diag.tar.gz");
    const exported = await admin(["diagnostics", "export", "--output", output, ...asAdmin, "--json"]);
    expect(exported.code, exported.stderr).toBe(0);
    const result = JSON.parse(exported.stdout) as { directory: string; not_collected: Array<{ item: string }> };
    expect(result.not_collected.map((m) => m.item)).toEqual(["logs"]);
    const into = join(tmp.path, "extracted");
    mkdirSync(into);
    expect(await new Promise((resolve) => spawn("tar", ["-xzf", output, "-C", into]).on("close", resolve))).toBe(0);
    const dir = join(into, result.directory);
    const status = JSON.parse(readFileSync(join(dir, "cluster-status.json"), "utf8")) as { endpoints: Array<{ self: { nodeId: number }; peers: unknown[] }> };
    expect(status.endpoints.map((e) => e.self.nodeId).sort()).toEqual([1, 2, 3]);
    expect(status.endpoints.every((e) => e.peers.length === 2)).toBe(true);
    expect(readFileSync(join(dir, "metrics.txt"), "utf8")).toMatch(/^verity_consensus_duration_seconds_count\{phase="persist"\} [1-9]/m);
    expect(JSON.parse(readFileSync(join(dir, "log-verify.json"), "utf8"))).toMatchObject({ summary: expect.stringMatching(/^OK: /) });
    for (const name of readdirSync(dir, { recursive: true })) {
      const path = join(dir, String(name));
      if (String(name) !== "logs") expect(readFileSync(path, "utf8"), String(name)).not.toMatch(/PRIVATE KEY/);
    }

    // Node 3 stops: its peer address is refused, and only two endpoints answer.
    nodes[2]!.process!.kill("SIGTERM");
    expect(await exited(nodes[2]!.process!)).toBe(0);
    const degraded = await doctor(asAdmin);
    expect(degraded.code).toBe(1);
    expect(degraded.checks.node).toMatchObject({ status: "WARN", found: "2 of 3 endpoints answered" });
    expect(degraded.checks.peers).toMatchObject({ status: "FAIL", found: `1 of 2 not reachable: 127.0.0.1:${nodes[2]!.cluster}`, fix: expect.stringMatching(/start the nodes named/) });
    expect(degraded.checks.peers!.details!.join("\n")).toMatch(new RegExp(`127\\.0\\.0\\.1:${nodes[2]!.cluster}: refused`));

    // Every node stops: the checks that need one say "not reachable", with the fix.
    for (const n of nodes.slice(0, 2)) {
      n.process!.kill("SIGTERM");
      expect(await exited(n.process!)).toBe(0);
    }
    const down = await doctor(asAdmin);
    expect(down.code).toBe(1);
    for (const name of ["node", "cluster", "clock-skew"]) {
      expect(down.checks[name], name).toMatchObject({ status: "FAIL", found: expect.stringMatching(/not reachable/), fix: expect.stringMatching(/start the node/) });
    }
    expect(down.checks.log!.status).toBe("PASS");
  });
});
