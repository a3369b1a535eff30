/**
 * Raft traffic over real gRPC with mutual TLS on loopback: two transports exchange messages, a
 * certificate from another CA or a node of another cluster is refused, and three production
 * drivers (core + driver + log on the in-memory file system) elect a leader and replicate.
 */
import { join } from "node:path";
import { readFileSync } from "node:fs";
import { afterAll, describe, expect, it } from "vitest";
import { PeerTransport } from "../../src/server/peer-transport.js";
import type { Message } from "../../src/consensus/types.js";
import { Role } from "../../src/consensus/types.js";
import { RaftCore } from "../../src/consensus/raft.js";
import { RaftDriver } from "../../src/consensus/driver.js";
import { startStateFromDisk } from "../../src/consensus/driver-start.js";
import { Xoshiro128StarStar } from "../../src/consensus/prng.js";
import { DataDir } from "../../src/log/data-dir.js";
import { MemoryFileSystem } from "../../src/log/memory-fs.js";
import { RecordKind, type LogEntry, type NodeId, type Term } from "../../src/log/types.js";
import { APPEND_RPC_BYTES_MAX, INFLIGHT_BYTES_MAX, INFLIGHT_MESSAGES_MAX } from "../../src/limits.js";
import { TestCa } from "../helpers/certs.js";
import { tempDir } from "../helpers/log-fixtures.js";

const tmp = tempDir("peer");
const ca = new TestCa(join(tmp.path, "ca"));
const otherCa = new TestCa(join(tmp.path, "other-ca"), "other-ca");
const CLUSTER = "11111111-2222-4333-8444-555555555555";
const open: PeerTransport[] = [];
afterAll(async () => {
  for (const t of open) await t.stop();
  tmp.cleanup();
});

function tlsFor(issuer: TestCa, identity: string) {
  const files = issuer.issue(identity);
  return { cert: readFileSync(files.cert), key: readFileSync(files.key), ca: issuer.pem() };
}

/** The identities with the node role in these tests. */
const NODES = ["node-1", "node-2", "node-3", "node-5", "node-6", "node-7"];

async function transport(
  id: number, peers: string[], onMessages: (m: Message[]) => void,
  options: { issuer?: TestCa; cluster?: string; identity?: string } = {},
) {
  const t = new PeerTransport({
    nodeId: id as NodeId, clusterId: options.cluster ?? CLUSTER, listen: "127.0.0.1:0", peers,
    tls: tlsFor(options.issuer ?? ca, options.identity ?? `node-${id}`), nodeIdentities: NODES, onMessages,
  });
  await t.start();
  open.push(t);
  return t;
}

async function until(what: string, check: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  // Bounded by the deadline.
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const timeoutNow = (from: number, to: number): Message => ({ type: "TIMEOUT_NOW", from: from as NodeId, to: to as NodeId, term: 3 as Term });

describe("PeerTransport", () => {
  it("learns node ids with Hello and delivers batches both ways over mutual TLS", async () => {
    const gotA: Message[] = [];
    const gotB: Message[] = [];
    const b = await transport(2, [], (m) => gotB.push(...m));
    const a = await transport(1, [b.address], (m) => gotA.push(...m));
    await until("link 1->2", () => a.connectedPeers().includes(2 as NodeId));
    a.send([timeoutNow(1, 2)]);
    await until("delivery to 2", () => gotB.length === 1);
    expect(gotB[0]).toEqual(timeoutNow(1, 2));
    // B learned A's address from the Hello and dials back.
    await until("link 2->1", () => b.connectedPeers().includes(1 as NodeId));
    b.send([timeoutNow(2, 1)]);
    await until("delivery to 1", () => gotA.length === 1);
    // Messages for a node with no link are dropped and counted, not queued without bound.
    a.send([timeoutNow(1, 9)]);
    expect(a.stats.droppedNoLink).toBe(1);
  });

  it("never links to a node whose certificate comes from another CA, or that is in another cluster", async () => {
    const got: Message[] = [];
    const target = await transport(5, [], (m) => got.push(...m));
    const stranger = await transport(6, [target.address], () => {}, { issuer: otherCa });
    const foreign = await transport(7, [target.address], () => {}, { cluster: "99999999-2222-4333-8444-555555555555" });
    await new Promise((r) => setTimeout(r, 600));
    expect(stranger.connectedPeers()).toEqual([]);
    expect(foreign.connectedPeers()).toEqual([]);
    stranger.send([timeoutNow(6, 5)]);
    foreign.send([timeoutNow(7, 5)]);
    await new Promise((r) => setTimeout(r, 200));
    expect(got).toEqual([]);
  });
});

describe("the node role", () => {
  it("refuses a certificate from the right CA whose identity is not in [security] nodes, and counts it", async () => {
    const got: Message[] = [];
    const target = await transport(1, [], (m) => got.push(...m));
    const intruder = await transport(8, [target.address], () => {}, { identity: "intruder" });
    await until("a refused call", () => target.stats.authFailures > 0);
    await new Promise((r) => setTimeout(r, 300));
    expect(intruder.connectedPeers()).toEqual([]);
    intruder.send([timeoutNow(8, 1)]);
    await new Promise((r) => setTimeout(r, 100));
    expect(got).toEqual([]);
  });
});

describe("three nodes over gRPC", () => {
  it("elect a leader, replicate and apply proposals on every node", async () => {
    const fs = new MemoryFileSystem();
    const voters = [1, 2, 3].map((i) => i as NodeId);
    const applied = new Map<number, LogEntry[]>();
    const drivers = new Map<number, RaftDriver>();
    const transports: PeerTransport[] = [];
    for (const id of [1, 2, 3]) {
      applied.set(id, []);
      const t = await transport(id, transports.map((x) => x.address), (m) => {
        const d = drivers.get(id);
        for (const msg of m) d?.step(msg);
      });
      transports.push(t);
      const dir = await DataDir.open({ path: `/node${id}`, fs, nodeId: id, clusterId: CLUSTER });
      const core = new RaftCore(
        {
          id: id as NodeId, electionTicks: 10, heartbeatTicks: 2, preVote: true, checkQuorum: true, entriesPerRpcMax: 100,
          appendRpcBytesMax: APPEND_RPC_BYTES_MAX, inflightMessagesMax: INFLIGHT_MESSAGES_MAX, inflightBytesMax: INFLIGHT_BYTES_MAX,
          prng: new Xoshiro128StarStar(id),
        },
        await startStateFromDisk(dir, { voters, learners: [] }),
      );
      drivers.set(id, new RaftDriver(core, {
        log: dir.log, hardState: dir, transport: t,
        stateMachine: { apply: (entries) => void applied.get(id)!.push(...entries) },
      }));
    }
    const ticker = setInterval(() => {
      for (const d of drivers.values()) d.tick();
    }, 10);
    try {
      await until("full mesh", () => transports.every((t) => t.connectedPeers().length === 2));
      let leader: RaftDriver | undefined;
      await until("a leader", () => {
        leader = [...drivers.values()].find((d) => d.raft.softState().role === Role.LEADER);
        return leader !== undefined;
      });
      await until("the leader's term committed", () => leader!.raft.status().commit >= 1);
      const result = leader!.input((core) =>
        core.propose(["a", "b", "c"].map((x) => ({ kind: RecordKind.EVENTS, tenant: "acme", payload: Buffer.from(x) }))),
      );
      expect(result.ok).toBe(true);
      const events = (id: number) => applied.get(id)!.filter((e) => e.kind === RecordKind.EVENTS).map((e) => Buffer.from(e.payload).toString());
      await until("every node applied the proposals", () => [1, 2, 3].every((id) => events(id).length === 3));
      for (const id of [1, 2, 3]) expect(events(id)).toEqual(["a", "b", "c"]);
    } finally {
      clearInterval(ticker);
      for (const d of drivers.values()) await d.stop();
    }
  });
});
