/**
 * A real 3-node cluster: three verity-server processes on loopback with mutual TLS (certificates
 * made with openssl), driven the way an operator would: status over HTTPS, kill -9 of the leader,
 * restart, SIGTERM of the leader. Every process started here is stopped by its PID.
 */
import * as grpc from "@grpc/grpc-js";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { TestCa } from "../helpers/certs.js";
import { tempDir } from "../helpers/log-fixtures.js";
import { VerityClient } from "../../src/client/verity-client.js";
import { AdminClient, ProcessCluster, exited, until, type ProcessNode } from "../helpers/process-cluster.js";

const tmp = tempDir("cluster");
const ca = new TestCa(join(tmp.path, "ca"));
const procs = new ProcessCluster(tmp.path, ca);
afterAll(() => {
  procs.killAll();
  tmp.cleanup();
});

type Node = ProcessNode;
const start = (node: Node): void => procs.start(node, { peers: procs.nodes.filter((n) => n !== node) });
const status = (node: Node) => procs.status(node);
const leaderOf = (nodes: Node[]) => procs.leaderOf(nodes);
const call = (node: Node, ctor: grpc.ServiceClientConstructor, method: string, request: object, identity = procs.admin) =>
  procs.call(node, ctor, method, request, identity);

const HealthClient = grpc.makeGenericClientConstructor({
  check: {
    path: "/grpc.health.v1.Health/Check", requestStream: false, responseStream: false,
    requestSerialize: () => Buffer.alloc(0), requestDeserialize: () => ({}),
    // HealthCheckResponse: field 1, varint status (1 = SERVING).
    responseSerialize: () => Buffer.alloc(0), responseDeserialize: (b: Buffer) => ({ status: b.length >= 2 ? b[1] : 0 }),
  },
}, "Health");

describe("a 3-node cluster of real processes with mutual TLS", () => {
  it("elects a leader; admin API and health; kill -9 of the leader; rejoin; handover on SIGTERM; a wiped follower catches up", async () => {
    const nodes: Node[] = [await procs.addNode(1), await procs.addNode(2), await procs.addNode(3)];
    for (const n of nodes) start(n);
    const first: { leader: Node; view: number } = await until("a leader", () => leaderOf(nodes));
    const s = (await status(first.leader))!;
    expect(s).toMatchObject({ state: "leader", node_id: first.leader.id });
    expect((s.cluster as { peers: unknown[] }).peers).toHaveLength(2);
    // The guide's metrics, from the leader's metrics port.
    const scrape = await (await fetch(`http://127.0.0.1:${first.leader.metrics}/metrics`)).text();
    expect(scrape).toMatch(new RegExp(`^verity_consensus_view ${first.view}$`, "m"));
    expect(scrape).toMatch(new RegExp(`^verity_consensus_leader ${first.leader.id}$`, "m"));
    expect(scrape).toMatch(/^verity_log_entries_total [1-9]/m);
    expect(scrape).toMatch(/^verity_consensus_commits_total [1-9]/m);
    expect(scrape).toMatch(/^verity_projection_applied_position [1-9]/m);
    expect(scrape).toMatch(/^verity_consensus_follower_lag_entries\{peer="\d"\} \d+$/m);

    // The admin API, with the admin identity; refused for a node identity; health says SERVING.
    const cluster = await call(first.leader, AdminClient, "clusterStatus", {});
    expect(cluster).toMatchObject({ self: { nodeId: first.leader.id, state: "leader" } });
    expect((cluster.peers as unknown[]).length).toBe(2);
    await expect(call(first.leader, AdminClient, "nodeStatus", {}, ca.issue("node-9"))).rejects.toMatchObject({
      code: grpc.status.PERMISSION_DENIED, details: expect.stringMatching(/"node-9" has no admin role/),
    });
    await until("health SERVING", async () => ((await call(first.leader, HealthClient, "check", {})).status === 1 ? true : undefined));
    const follower = nodes.find((n) => n !== first.leader)!;
    await expect(call(follower, AdminClient, "transferLeadership", {})).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });
    const moved = await call(first.leader, AdminClient, "transferLeadership", {});
    expect(moved.newLeader).not.toBe(first.leader.id);
    const afterMove = await until("the moved leadership", () => leaderOf(nodes));
    expect(afterMove.leader.id).toBe(moved.newLeader);
    first.leader = afterMove.leader;
    first.view = afterMove.view;

    // kill -9 the leader: the other two elect a new one within a few seconds.
    const killedAt = Date.now();
    first.leader.process!.kill("SIGKILL");
    await exited(first.leader.process!);
    const rest = nodes.filter((n) => n !== first.leader);
    const second = await until("a new leader", () => leaderOf(rest), 10_000);
    expect(second.view).toBeGreaterThan(first.view);
    expect(Date.now() - killedAt).toBeLessThan(10_000);

    // The old leader restarts and rejoins as a follower of the new one.
    start(first.leader);
    await until("the old leader rejoining", async () => {
      const st = await status(first.leader);
      return st?.state === "follower" && st.leader_id === second.leader.id ? st : undefined;
    });

    // SIGTERM the leader: it transfers leadership first and exits 0.
    const leaving = second.leader;
    leaving.process!.kill("SIGTERM");
    expect(await exited(leaving.process!)).toBe(0);
    expect(leaving.output).toMatch(/"transferred":true/);
    const remaining = nodes.filter((n) => n !== leaving);
    const third = await until("leadership after the handover", () => leaderOf(remaining), 10_000);
    expect(third.leader).not.toBe(leaving);

    // A follower loses its disk: restarted with the same node id and an empty data dir, it
    // rejoins and catches up by itself (the guide's "Single Node Failure" procedure).
    const wiped = remaining.find((n) => n !== third.leader)!;
    // Enough entries that the leader streams them (more than CATCH_UP_LAG_ENTRIES behind).
    await procs.createTenants([third.leader], "acme");
    const writer = new VerityClient({ endpoints: [`127.0.0.1:${third.leader.client}`], tls: { ca: ca.cert, ...procs.admin }, attempts: 30 });
    for (let batch = 0; batch < 15; batch++) {
      await writer.append({ tenant: "acme", stream: "bulk", events: Array.from({ length: 100 }, (_, i) => ({ type: "Bulk", data: { i: batch * 100 + i } })) });
    }
    writer.close();
    wiped.process!.kill("SIGTERM");
    expect(await exited(wiped.process!)).toBe(0);
    rmSync(join(tmp.path, `node${wiped.id}`), { recursive: true, force: true });
    leaving.process = undefined;
    start(leaving); // bring the third node back too, so the cluster has a quorum without the wiped one
    start(wiped);
    await until("the restarted node answering", async () => (await status(leaving)) ?? undefined);
    const leaderStatus = (await status(third.leader))!;
    await until("the wiped follower caught up", async () => {
      const st = await status(wiped);
      return st?.state === "follower" && (st.applied_index as number) >= (leaderStatus.commit_index as number) ? st : undefined;
    });
    const leaderMetrics = await (await fetch(`http://127.0.0.1:${third.leader.metrics}/metrics`)).text();
    expect(leaderMetrics).toMatch(/^verity_catch_up_streams_total\{result="ok"\} [1-9]/m);
    expect(leaderMetrics).toMatch(/^verity_catch_up_entries_total [1-9]\d{3,}/m);
    const reader = new VerityClient({ endpoints: [`127.0.0.1:${wiped.client}`], tls: { ca: ca.cert, ...procs.admin }, attempts: 30 });
    const read = await reader.read({ tenant: "acme", stream: "bulk", consistency: "local", limit: 2000 });
    expect(read.events.map((e) => e.version)).toEqual(Array.from({ length: 1500 }, (_, i) => i));
    reader.close();

    for (const n of nodes) {
      n.process!.kill("SIGTERM");
      expect(await exited(n.process!), `node ${n.id} output:\n${n.output.slice(-3000)}`).toBe(0);
    }
  });
});
