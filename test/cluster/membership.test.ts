/**
 * Membership with real processes: a new node started with --join (a new data dir) learns the
 * cluster from its peers, an admin adds it as a learner, it catches up, it is promoted to voter,
 * and removed again; the cluster keeps serving throughout.
 */
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { afterAll, describe, expect, it } from "vitest";
import { TestCa } from "../helpers/certs.js";
import { tempDir } from "../helpers/log-fixtures.js";
import { AdminClient, ProcessCluster, exited, until } from "../helpers/process-cluster.js";

const tmp = tempDir("membership");
const cluster = new ProcessCluster(tmp.path, new TestCa(join(tmp.path, "ca")));
afterAll(() => {
  cluster.killAll();
  tmp.cleanup();
});

describe("membership changes with real processes", () => {
  it("a --join node is added as a learner, catches up, is promoted, then removed", async () => {
    const founders = [await cluster.addNode(1), await cluster.addNode(2), await cluster.addNode(3)];
    for (const n of founders) cluster.start(n, { peers: founders.filter((o) => o !== n) });
    const { leader } = await until("a leader", () => cluster.leaderOf(founders));

    const fourth = await cluster.addNode(4);
    cluster.start(fourth, { peers: founders, join: true });
    await until("the new node waiting to be added", async () => (/waiting to be added/.test(fourth.output) ? true : undefined));
    const newcomer = await cluster.status(fourth);
    expect(newcomer).toMatchObject({ node_id: 4 });

    // Leadership may move meanwhile on a loaded machine: ask whichever node leads now (a refusal
    // from a node that just stopped leading is UNAVAILABLE and changes nothing).
    let current = leader;
    const added = await until("the learner added", async () => {
      current = (await cluster.leaderOf(founders))?.leader ?? current;
      return cluster.call(current, AdminClient, "addLearner", { address: `127.0.0.1:${fourth.cluster}` }).catch((e: { code?: number }) => {
        if (e.code === grpc.status.UNAVAILABLE) return undefined;
        throw e;
      });
    });
    expect(added).toMatchObject({ voters: [1, 2, 3], learners: [4] });
    const leaderCommit = ((await cluster.status(current))!.commit_index as number);
    await until("the learner caught up", async () => {
      const st = await cluster.status(fourth);
      return st !== undefined && (st.applied_index as number) >= leaderCommit ? st : undefined;
    });

    // The leader refuses a change while too few voters are caught up (FAILED_PRECONDITION, "wait for
    // the nodes to catch up"); an operator retries, and so does this test.
    const retried = (method: string, nodeId: number) =>
      until(`${method} ${nodeId}`, async () => {
        current = (await cluster.leaderOf(founders))?.leader ?? current;
        return cluster.call(current, AdminClient, method, { nodeId }).catch((e: { code?: number; details?: string }) => {
          const retry = e.code === grpc.status.UNAVAILABLE || (e.code === grpc.status.FAILED_PRECONDITION && /catch up/.test(e.details ?? ""));
          if (!retry) throw e;
          return undefined;
        });
      });
    const promoted = await retried("promoteMember", 4);
    expect(promoted).toMatchObject({ voters: [1, 2, 3, 4], learners: [] });
    const withFour = await cluster.call(current, AdminClient, "clusterStatus", {});
    expect((withFour.peers as Array<{ id: number; voter: boolean }>).find((p) => p.id === 4)).toMatchObject({ voter: true });

    const removed = await retried("removeMember", 4);
    expect(removed).toMatchObject({ voters: [1, 2, 3], learners: [] });
    // The three founders still agree on a leader.
    await until("a leader after the removal", () => cluster.leaderOf(founders));

    for (const n of [...founders, fourth]) {
      n.process!.kill("SIGTERM");
      expect(await exited(n.process!), `node ${n.id} output:\n${n.output.slice(-3000)}`).toBe(0);
    }
  });
});
