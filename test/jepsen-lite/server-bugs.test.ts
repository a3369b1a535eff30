/**
 * Focused reproductions of the server bugs jepsen-lite found (docs/jepsen.md, "Bugs found"), on
 * real processes, each in well under a minute. A fixed bug's test is a plain `it`: its regression
 * test. An open bug's test is `it.fails`: it passes while the bug is there; when a fix lands it
 * starts failing ("expected to fail"): turn it into `it`, and delete the bug's line from
 * KNOWN_SERVER_BUGS in nemeses.test.ts.
 */
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { JepsenCluster, type JepsenNode } from "../../jepsen/cluster.js";
import { History } from "../../jepsen/history.js";
import { LoopbackNetwork, NamespaceNetwork, namespacesAvailable, type Network } from "../../jepsen/network.js";
import { PROJECTION_DEFINITION, PROJECTION_MIGRATION } from "../../jepsen/workload.js";

/** How long a node restarted empty gets to catch up (a healthy one takes a second or two). */
const CATCH_UP_MS = 15_000;
const TEST_TIMEOUT_MS = 120_000;
const POLL_MS = 200;
const TENANT = "jepsen-a";
/** Members added and removed before the one that must still be added (more than CLUSTER_NODES_MAX). */
const MEMBERSHIP_CYCLES = 16;
/** Concurrent appenders in the query test. */
const WRITERS = 8;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

let teardown: (() => void) | undefined;
afterEach(() => {
  teardown?.();
  teardown = undefined;
});

async function cluster(size: number): Promise<{ c: JepsenCluster; nodes: JepsenNode[]; dir: string }> {
  const dir = mkdtempSync(join(tmpdir(), "verity-jepsen-bug-"));
  let network: Network;
  if (namespacesAvailable()) {
    const ns = new NamespaceNetwork();
    await ns.setup();
    network = ns;
  } else network = new LoopbackNetwork();
  const history = new History();
  const c = new JepsenCluster({ dir, network, history, journal: false });
  teardown = () => {
    c.teardown();
    network.teardown();
    if (existsSync(dir)) rmSync(dir, { recursive: true, force: true });
  };
  const nodes: JepsenNode[] = [];
  for (let id = 1; id <= size; id++) nodes.push(await c.addNode(id));
  for (const n of nodes) c.start(n, { peers: nodes.filter((m) => m !== n) });
  expect(await c.awaitLeader(30_000)).toBeDefined();
  await retry(() => c.admin(c.running(), "createTenant", { tenant: TENANT }));
  return { c, nodes, dir };
}

async function retry<T>(body: () => Promise<T>, tries = 50): Promise<T> {
  for (let i = 1; ; i++) {
    try {
      return await body();
    } catch (e) {
      if (i >= tries) throw e;
      await sleep(POLL_MS);
    }
  }
}

async function write(c: JepsenCluster, count: number): Promise<void> {
  const client = c.clientFor(c.running()[0]!);
  for (let i = 0; i < count; i++) await retry(() => client.append({ tenant: TENANT, stream: `s${i % 5}`, events: [{ type: "JepsenEvent", data: { i } }] }));
}

/** True when `n` applied what the leader had committed, within `ms`. */
async function caughtUp(c: JepsenCluster, n: JepsenNode, ms: number): Promise<boolean> {
  const leader = await c.awaitLeader(10_000);
  const target = leader === undefined ? undefined : (await c.status(leader))?.commit_index;
  if (target === undefined) return false;
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const s = await c.status(n);
    if (s !== undefined && s.applied_index >= target) return true;
    await sleep(POLL_MS);
  }
  return false;
}

describe("server bugs found by jepsen-lite (it.fails: passing means the bug is still there)", () => {
  /** Kills a follower (not the leader), wipes its data directory and starts it again with its old id. */
  async function wipeFollower(c: JepsenCluster): Promise<JepsenNode> {
    const leader = (await c.awaitLeader(10_000))!;
    const follower = c.running().find((n) => n !== leader)!;
    await c.stop(follower, "SIGKILL");
    c.wipe(follower, "Single Node Failure");
    c.start(follower);
    return follower;
  }

  it("bug 2 (fixed): a follower restarted empty with its old id catches up while the leader stays and writes go on", async () => {
    const { c } = await cluster(3);
    await write(c, 30);
    const follower = await wipeFollower(c);
    let writing = true;
    const writer = (async () => {
      // Bounded by the flag, which the check below clears within CATCH_UP_MS.
      while (writing) await write(c, 1);
    })();
    // Before the fix the leader probed at the follower's old match index forever ("rejects APPEND
    // ... at prev T/I: log ends at 0"): the follower never caught up while the leader stayed.
    const ok = await caughtUp(c, follower, CATCH_UP_MS);
    writing = false;
    await writer;
    expect(ok).toBe(true);
  }, TEST_TIMEOUT_MS);

  it("bug 2b (fixed): on an idle cluster, a follower restarted empty with its old id catches up without waiting for a write", async () => {
    const { c } = await cluster(3);
    await write(c, 30);
    const follower = await wipeFollower(c);
    // No writes: the leader believes the follower holds its old match index, which equals its own
    // last index, so it sends heartbeats only and the empty follower stays at commit index 0.
    expect(await caughtUp(c, follower, CATCH_UP_MS)).toBe(true);
  }, TEST_TIMEOUT_MS);

  it("bug 3 (fixed): a member added after the cluster formed can be restarted empty with its old id (Single Node Failure)", async () => {
    const { c, nodes } = await cluster(3);
    await write(c, 20);
    const fourth = await c.addNode(4);
    c.start(fourth, { join: true, peers: nodes });
    await retry(() => c.admin(c.running(), "addLearner", { address: c.clusterAddress(fourth) }), 20);
    expect(await caughtUp(c, fourth, CATCH_UP_MS)).toBe(true);
    await retry(() => c.admin(c.running(), "promoteMember", { nodeId: 4 }), 50);
    await c.stop(fourth, "SIGKILL");
    c.wipe(fourth, "Single Node Failure");
    // Started as the guide says: same id, empty data directory, the members as --cluster-peers.
    // Today it derives a cluster id from its own settings, which differs from the cluster's; its
    // peers refuse it ("this node is in cluster X, not Y") and it waits for them forever.
    c.start(fourth, { peers: nodes });
    expect(await caughtUp(c, fourth, CATCH_UP_MS)).toBe(true);
  }, TEST_TIMEOUT_MS);

  it("bug 3b (fixed): a member restarted empty while every peer is unreachable joins their cluster once they answer", async () => {
    const { c, nodes } = await cluster(3);
    await write(c, 20);
    const fourth = await c.addNode(4);
    c.start(fourth, { join: true, peers: nodes });
    await retry(() => c.admin(c.running(), "addLearner", { address: c.clusterAddress(fourth) }), 20);
    expect(await caughtUp(c, fourth, CATCH_UP_MS)).toBe(true);
    await c.stop(fourth, "SIGKILL");
    c.wipe(fourth, "Single Node Failure");
    for (const n of nodes) await c.stop(n, "SIGTERM");
    // No peer answers: it can only derive a cluster id from its own settings, which is not the
    // cluster's (it joined later). Before the fix it kept that id and was refused forever.
    c.start(fourth, { peers: nodes });
    await sleep(3_000);
    for (const n of nodes) c.start(n, { peers: [...nodes.filter((m) => m !== n), fourth] });
    expect(await c.awaitLeader(30_000)).toBeDefined();
    expect(await caughtUp(c, fourth, CATCH_UP_MS)).toBe(true);
  }, TEST_TIMEOUT_MS);

  it("bug 4 (fixed): members can still be added after many membership changes (links to removed members are dropped)", async () => {
    const { c, nodes } = await cluster(3);
    // Before the fix each member added gave every founder one more peer link, never dropped; at
    // CLUSTER_NODES_MAX links a founder refused to dial the next one ("not dialing ...: this node
    // already has 15 peer links, the most a cluster has"), so that node was never replicated to.
    let id = 4;
    for (; id < 4 + MEMBERSHIP_CYCLES; id++) {
      const n = await c.addNode(id);
      c.start(n, { join: true, peers: nodes });
      await retry(() => c.admin(nodes, "addLearner", { address: c.clusterAddress(n) }), 50);
      await retry(() => c.admin(nodes, "removeMember", { nodeId: id }), 50);
      await c.stop(n, "SIGKILL", "removed");
    }
    const last = await c.addNode(id);
    c.start(last, { join: true, peers: nodes });
    const added = await c.admin(nodes, "addLearner", { address: c.clusterAddress(last) }).then(() => true, () => false);
    expect(added && (await caughtUp(c, last, CATCH_UP_MS))).toBe(true);
  }, TEST_TIMEOUT_MS);

  it("bug 1 (fixed): a projection query reports the position its rows stand for", async () => {
    const { c } = await cluster(1);
    const [node] = c.running();
    await retry(() => c.admin([node!], "migrate", { tenant: TENANT, sql: PROJECTION_MIGRATION, name: "001.sql" }));
    await retry(() => c.admin([node!], "createProjection", { tenant: TENANT, definition: PROJECTION_DEFINITION, fromStart: true }));
    const client = c.clientFor(node!);
    const answers: Array<{ applied: number; rows: number }> = [];
    let writing = true;
    // Several writers, so the projector commits while queries run.
    const writers = Array.from({ length: WRITERS }, (_, w) => (async () => {
      for (let i = 0; writing && i < 2_000; i++) {
        const id = `e${w}-${i}`;
        await client.append({ tenant: TENANT, stream: `s${w}`, events: [{ type: "JepsenEvent", eventId: id, data: { id, tenant: TENANT } }] });
      }
    })());
    for (let i = 0; i < 300; i++) {
      const q = await client.query({ tenant: TENANT, sql: "SELECT COUNT(*) FROM jepsen_seen", consistency: "local" });
      answers.push({ applied: q.appliedPosition, rows: Number(q.rows[0]![0]) });
    }
    writing = false;
    await Promise.all(writers);
    const positions = (await client.readAll({ tenant: TENANT, limit: 10_000, consistency: "local" })).events.map((e) => e.position);
    // Every answer's rows must be exactly the events at or before the position it reports.
    const ahead = answers.filter((a) => a.rows !== positions.filter((p) => p <= a.applied).length);
    expect(ahead).toEqual([]);
  }, TEST_TIMEOUT_MS);
});
