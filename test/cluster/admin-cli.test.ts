/**
 * verity-admin against a real 3-node cluster with mutual TLS: the guide's `cluster status`,
 * `cluster wait-healthy`, `status`, `leader transfer`, and a refusal for an identity without the
 * admin role.
 */
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { TestCa } from "../helpers/certs.js";
import { tempDir } from "../helpers/log-fixtures.js";
import { ProcessCluster, exited, until } from "../helpers/process-cluster.js";

const root = join(import.meta.dirname, "..", "..");
const tmp = tempDir("admin-cli");
const ca = new TestCa(join(tmp.path, "ca"));
const cluster = new ProcessCluster(tmp.path, ca);
afterAll(() => {
  cluster.killAll();
  tmp.cleanup();
});

function admin(args: string[], identity = cluster.admin): { code: number; stdout: string; stderr: string } {
  const endpoints = cluster.nodes.map((n) => `127.0.0.1:${n.client}`).join(",");
  const r = spawnSync(process.execPath, [join(root, "bin", "verity-admin.js"), ...args, "--endpoints", endpoints,
    "--tls-ca", ca.cert, "--tls-cert", identity.cert, "--tls-key", identity.key], { encoding: "utf8", timeout: 60_000 });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

describe("verity-admin over the Admin API", () => {
  it("shows the cluster, waits for health, moves leadership, and refuses a non-admin", async () => {
    const nodes = [await cluster.addNode(1), await cluster.addNode(2), await cluster.addNode(3)];
    for (const n of nodes) cluster.start(n, { peers: nodes.filter((o) => o !== n) });
    const { leader } = await until("a leader", () => cluster.leaderOf(nodes));

    const healthy = admin(["cluster", "wait-healthy", "--timeout", "20s"]);
    expect(healthy.code, healthy.stderr + healthy.stdout).toBe(0);
    expect(healthy.stdout).toMatch(/^healthy: leader node \d/);

    const status = admin(["cluster", "status", "--json"]);
    expect(status.code, status.stderr).toBe(0);
    const parsed = JSON.parse(status.stdout) as { self: { nodeId: number }; peers: Array<{ id: number }> };
    expect(parsed.peers).toHaveLength(2);
    const table = admin(["cluster", "status"]);
    expect(table.stdout).toMatch(new RegExp(`cluster: leader node ${leader.id}, view \\d+`));

    // The guide's line: verity-admin status | grep -E "(commit_index|applied_index)"
    const self = admin(["status"]);
    expect(self.stdout).toMatch(/commit_index \d+, applied_index \d+/);

    const moved = admin(["leader", "transfer"]);
    expect(moved.code, moved.stderr).toBe(0);
    expect(moved.stdout).toMatch(/^leadership moved to node (\d)/);
    expect(moved.stdout).not.toMatch(new RegExp(`node ${leader.id}\\n`));

    // The guide's line: verity-admin metrics | grep consensus_duration
    const metrics = spawnSync(process.execPath, [join(root, "bin", "verity-admin.js"), "metrics", "--metrics-endpoint", `127.0.0.1:${leader.metrics}`], { encoding: "utf8" });
    expect(metrics.status).toBe(0);
    expect(metrics.stdout.split("\n").filter((l) => l.includes("consensus_duration"))).not.toHaveLength(0);
    expect(metrics.stdout).toMatch(/^verity_consensus_duration_seconds_count\{phase="persist"\} [1-9]/m);

    // The guide's line: verity-admin cluster ping --peers node1:7001,node2:7001,node3:7001 (plus one that is down)
    const pinged = admin(["cluster", "ping", "--peers", [...nodes.map((n) => `127.0.0.1:${n.cluster}`), "127.0.0.1:1"].join(",")]);
    expect(pinged.code).toBe(1);
    expect(pinged.stdout.match(/ ok +[\d.]+ ms {2}certificate "node-\d"/g)).toHaveLength(3);
    expect(pinged.stdout).toMatch(/127\.0\.0\.1:1 +FAIL {2}refused/);

    const stranger = admin(["cluster", "status"], ca.issue("node-2"));
    expect(stranger.code).toBe(1);
    expect(stranger.stderr).toMatch(/"node-2" has no admin role: add it to \[security\] admins/);

    for (const n of nodes) {
      n.process!.kill("SIGTERM");
      expect(await exited(n.process!), `node ${n.id} output:\n${n.output.slice(-3000)}`).toBe(0);
    }
  });
});
