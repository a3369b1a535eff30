/**
 * The guide's "Majority Failure" procedure with real processes: two of three nodes are lost, the
 * survivor with the highest commit index starts with --force-recover and serves alone, then the
 * other two are started again one at a time and become voters once caught up. Nothing the
 * survivor held is lost.
 */
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { TestCa } from "../helpers/certs.js";
import { tempDir } from "../helpers/log-fixtures.js";
import { ProcessCluster, exited, until, type ProcessNode } from "../helpers/process-cluster.js";
import { VerityClient } from "../../src/client/verity-client.js";

const tmp = tempDir("force-recover");
const ca = new TestCa(join(tmp.path, "ca"));
const procs = new ProcessCluster(tmp.path, ca);
afterAll(() => {
  procs.killAll();
  tmp.cleanup();
});

const clientOf = (nodes: ProcessNode[]) =>
  new VerityClient({ endpoints: nodes.map((n) => `127.0.0.1:${n.client}`), tls: { ca: ca.cert, ...procs.admin }, attempts: 40 });

describe("majority failure", () => {
  it("--force-recover continues the cluster from the survivor; the others rejoin as learners and become voters", async () => {
    const nodes = [await procs.addNode(1), await procs.addNode(2), await procs.addNode(3)];
    for (const n of nodes) procs.start(n);
    const { leader } = (await until("a leader", () => procs.leaderOf(nodes)))!;
    await procs.createTenants([leader], "acme");
    const c = clientOf([leader]);
    for (let i = 0; i < 5; i++) await c.append({ tenant: "acme", stream: "before", events: [{ type: "E", data: { i } }] });
    c.close();
    // Every node has applied everything; then two are lost.
    const commit = (await procs.status(leader))!.commit_index as number;
    await until("all caught up", async () => ((await Promise.all(nodes.map((n) => procs.status(n)))).every((s) => (s?.applied_index as number) >= commit) ? true : undefined));
    const survivor = nodes.find((n) => n !== leader)!;
    const lost = nodes.filter((n) => n !== survivor);
    for (const n of lost) {
      n.process!.kill("SIGKILL");
      await exited(n.process!);
    }
    // Alone, the survivor cannot lead (no quorum); restarted with --force-recover, it can.
    survivor.process!.kill("SIGTERM");
    expect(await exited(survivor.process!)).toBe(0);
    procs.start(survivor, { args: ["--force-recover"] });
    await until("the survivor leading alone", async () => ((await procs.status(survivor))?.state === "leader" ? true : undefined));
    expect(survivor.output).toMatch(/force-recover: this node continues the cluster as its only voter/);
    const alone = clientOf([survivor]);
    expect((await alone.read({ tenant: "acme", stream: "before" })).events).toHaveLength(5);
    await alone.append({ tenant: "acme", stream: "after", events: [{ type: "Recovered", data: {} }] });

    // The others come back one at a time with their old data, as learners, and are promoted.
    for (const n of lost) {
      procs.start(n, { peers: nodes.filter((o) => o !== n) });
      await until(`node ${n.id} a voter again`, async () => {
        const s = await procs.status(survivor);
        const peer = (s?.cluster as { peers: { id: number; state: string }[] } | undefined)?.peers.find((p) => p.id === n.id);
        return peer?.state === "follower" ? true : undefined;
      }, 30_000);
    }
    expect(survivor.output).toMatch(/a returning member caught up and is a voter again/);
    // A quorum of the restored cluster serves, and every node has everything.
    await alone.append({ tenant: "acme", stream: "after", events: [{ type: "Whole", data: {} }] });
    for (const n of nodes) {
      const nc = clientOf([n]);
      expect((await nc.read({ tenant: "acme", stream: "before" })).events).toHaveLength(5);
      expect((await nc.read({ tenant: "acme", stream: "after" })).events.map((e) => e.type)).toEqual(["Recovered", "Whole"]);
      nc.close();
    }
    alone.close();
    for (const n of nodes) {
      n.process!.kill("SIGTERM");
      expect(await exited(n.process!), `node ${n.id}:\n${n.output.slice(-2000)}`).toBe(0);
    }
  });
});
