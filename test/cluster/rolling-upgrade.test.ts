/**
 * The guide's "Rolling Upgrade" with real processes and mutual TLS: stop a follower, start it,
 * `verity-admin cluster wait-healthy`, repeat; the leader last (it hands leadership over on
 * SIGTERM). Appends run throughout: no acknowledged write is lost, and the longest write
 * unavailability is reported.
 */
import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, describe, expect, it } from "vitest";
import { TestCa } from "../helpers/certs.js";
import { tempDir } from "../helpers/log-fixtures.js";
import { ProcessCluster, exited, until, type ProcessNode } from "../helpers/process-cluster.js";
import { VerityClient, type StoredEvent } from "../../src/client/verity-client.js";

const run = promisify(execFile);
const root = join(import.meta.dirname, "..", "..");
const tmp = tempDir("rolling");
const ca = new TestCa(join(tmp.path, "ca"));
const procs = new ProcessCluster(tmp.path, ca);
afterAll(() => {
  procs.killAll();
  tmp.cleanup();
});

describe("rolling upgrade", () => {
  it("restarts every node in turn, the leader last, with appends running: nothing acknowledged is lost", async () => {
    const nodes: ProcessNode[] = [await procs.addNode(1), await procs.addNode(2), await procs.addNode(3)];
    for (const n of nodes) procs.start(n);
    await until("a leader", () => procs.leaderOf(nodes));
    await procs.createTenants(nodes, "acme");
    const endpoints = nodes.map((n) => `127.0.0.1:${n.client}`);
    const client = new VerityClient({ endpoints, tls: { ca: ca.cert, ...procs.admin }, attempts: 50 });
    const env = { ...process.env, VERITY_ENDPOINTS: endpoints.join(","), VERITY_TLS_CA: ca.cert, VERITY_TLS_CERT: procs.admin.cert, VERITY_TLS_KEY: procs.admin.key };
    const waitHealthy = () => run(process.execPath, [join(root, "bin", "verity-admin.js"), "cluster", "wait-healthy", "--timeout", "60s"], { env });

    const acked: number[] = [];
    let failures = 0;
    let lastOk = Date.now();
    let longestGapMs = 0;
    let stop = false;
    const writers = Array.from({ length: 3 }, async (_, w) => {
      // Bounded by `stop`.
      for (let i = 0; !stop; i++) {
        try {
          const r = await client.append({ tenant: "acme", stream: `rolling-${w}`, events: [{ type: "Tick", data: { w, i } }] });
          acked.push(r.firstPosition);
          const now = Date.now();
          longestGapMs = Math.max(longestGapMs, now - lastOk);
          lastOk = now;
        } catch {
          failures++;
        }
      }
    });

    const { leader } = (await procs.leaderOf(nodes))!;
    const order = [...nodes.filter((n) => n !== leader), leader];
    for (const n of order) {
      const before = acked.length;
      n.process!.kill("SIGTERM");
      expect(await exited(n.process!), `node ${n.id}:\n${n.output.slice(-2000)}`).toBe(0);
      if (n === leader) expect(n.output).toMatch(/"transferred":true/);
      procs.start(n);
      const healthy = await waitHealthy();
      expect(healthy.stdout + healthy.stderr).toMatch(/healthy/i);
      await until("appends going on", async () => (acked.length > before ? true : undefined));
    }
    stop = true;
    await Promise.all(writers);
    process.stdout.write(`rolling upgrade: ${acked.length} appends acknowledged, ${failures} failed attempts, longest write gap ${longestGapMs} ms\n`);

    // Every acknowledged append is on every node.
    for (const n of nodes) {
      const one = new VerityClient({ endpoints: [`127.0.0.1:${n.client}`], tls: { ca: ca.cert, ...procs.admin }, attempts: 20 });
      const seen = new Set<number>();
      for (let from = 0; ; ) {
        const page: StoredEvent[] = (await one.readAll({ tenant: "acme", fromPosition: from, limit: 10_000 })).events;
        for (const e of page) seen.add(e.position);
        if (page.length < 10_000) break;
        from = page[page.length - 1]!.position + 1;
      }
      expect(acked.filter((p) => !seen.has(p)), `node ${n.id} misses acknowledged appends`).toEqual([]);
      one.close();
    }
    expect(acked.length).toBeGreaterThan(30);
    client.close();
  });
});
