/**
 * verity-admin's commands over the Admin API: cluster status, cluster wait-healthy, cluster ping,
 * node status, metrics, leader transfer, member add / promote / remove (tenants, schema and
 * projections: admin-tenant-commands.ts, admin-projection-commands.ts). Connection settings:
 * `--endpoints` and the TLS flags, or VERITY_ENDPOINTS, VERITY_TLS_CA, VERITY_TLS_CERT,
 * VERITY_TLS_KEY (src/cli/admin-connection.ts). Every command takes `--json` (src/cli/admin-output.ts).
 */

import type { Argv } from "yargs";
import { AdminApi } from "../client/admin-client.js";
import { parseDuration } from "../server/setting-values.js";
import { ping } from "../client/ping.js";
import { ExitCode, paint } from "./common.js";
import {
  api, connectionOptions, endpointsOf, fetchMetricsText, jsonOption, metricsEndpointOption, parseMetrics, splitList, tlsOf,
  type Connection,
} from "./admin-connection.js";
import { UsageError, printJson, runAdmin } from "./admin-output.js";

/** A peer the leader has not heard from for this long is reported as not seen recently. */
const RECENT_MS = 2_000;
/** How often wait-healthy asks again. */
const POLL_MS = 500;

/** Runs a command body with the parsed flags; failures are reported as admin-output.ts says (exit 1, or 2 for bad usage). */
export function command<A extends { json: boolean }>(body: (a: A) => Promise<number>): (args: unknown) => Promise<void> {
  return (args: unknown) => {
    const a = args as A;
    return runAdmin(a.json, () => body(a));
  };
}

function ago(ms: number): string {
  if (ms === 0) return "never";
  const s = (Date.now() - ms) / 1000;
  return s < 60 ? `${s.toFixed(1)}s ago` : `${Math.round(s / 60)}m ago`;
}

export type Peer = { id: number; address: string; state: string; voter: boolean; matchIndex: number; lastSeenMs: number };
export type Self = { nodeId: number; state: string; view: number; commitIndex: number; appliedIndex: number; leaderId: number; clusterAddress: string; clientAddress: string };

/** A role padded for the table; the leader stands out on a terminal. */
function roleCell(state: string): string {
  return state === "leader" ? paint(state.padEnd(10), "green") : state.padEnd(10);
}

function printCluster(self: Self, peers: Peer[]): void {
  const out = [
    `cluster: leader ${self.leaderId === 0 ? "unknown" : `node ${self.leaderId}`}, view ${self.view}; answered by node ${self.nodeId} ` +
      `(commit ${self.commitIndex}, applied ${self.appliedIndex})`,
    `  ${"id".padEnd(4)} ${"role".padEnd(10)} ${"voter".padEnd(6)} ${"address".padEnd(22)} ${"match".padEnd(8)} last seen`,
    `  ${String(self.nodeId).padEnd(4)} ${roleCell(self.state)} ${"yes".padEnd(6)} ${self.clusterAddress.padEnd(22)} ${"-".padEnd(8)} (answering)`,
    ...peers.map((p) =>
      `  ${String(p.id).padEnd(4)} ${roleCell(p.state)} ${(p.voter ? "yes" : "no").padEnd(6)} ${(p.address || "?").padEnd(22)} ` +
        `${(self.state === "leader" ? String(p.matchIndex) : "-").padEnd(8)} ${ago(p.lastSeenMs)}`),
  ];
  process.stdout.write(out.join("\n") + "\n");
}

/** What keeps the cluster, as the leader sees it, from being healthy ([] when it is). */
export function unhealthy(self: Self, peers: Peer[]): string[] {
  if (self.state !== "leader") return [`node ${self.nodeId} is not the leader (leader: ${self.leaderId || "unknown"})`];
  const problems: string[] = [];
  for (const p of peers) {
    if (p.lastSeenMs === 0 || Date.now() - p.lastSeenMs > RECENT_MS) problems.push(`node ${p.id} has not been heard from ${p.lastSeenMs === 0 ? "yet" : ago(p.lastSeenMs)}`);
    else if (p.matchIndex < self.commitIndex) problems.push(`node ${p.id} is behind: it holds ${p.matchIndex} of ${self.commitIndex} committed entries`);
  }
  if (self.appliedIndex < self.commitIndex) problems.push(`the leader has applied ${self.appliedIndex} of ${self.commitIndex} committed entries`);
  return problems;
}

const clusterStatus = command<Connection>(async (a) => {
  const { response } = await api(a).call("clusterStatus", {});
  const self = response.self as Self;
  const peers = (response.peers as Peer[]) ?? [];
  if (a.json) printJson({ self, peers });
  else printCluster(self, peers);
  return ExitCode.OK;
});

const waitHealthy = command<Connection & { timeout: string }>(async (a) => {
  const parsed = parseDuration(a.timeout);
  if (!parsed.ok) throw new UsageError(`--timeout ${a.timeout}: ${parsed.reason}`);
  const tls = tlsOf(a);
  const endpoints = endpointsOf(a);
  const until = Date.now() + parsed.value;
  let missing: string[] = ["no node answered"];
  // Bounded by --timeout.
  while (Date.now() < until) {
    missing = [];
    for (const endpoint of endpoints) {
      // Asks every endpoint: only the leader knows how far each member is.
      const one = await new AdminApi({ endpoints: [endpoint], tls }).call("clusterStatus", {}).catch(() => undefined);
      const self = one?.response.self as Self | undefined;
      if (self?.state !== "leader") continue;
      missing = unhealthy(self, (one!.response.peers as Peer[]) ?? []);
      if (missing.length === 0) {
        if (a.json) printJson({ healthy: true, leader: self.nodeId, view: self.view });
        else process.stdout.write(`healthy: leader node ${self.nodeId}, view ${self.view}, every member up and caught up\n`);
        return ExitCode.OK;
      }
    }
    if (missing.length === 0) missing = ["no endpoint answered as the leader"];
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
  if (a.json) printJson({ healthy: false, missing });
  else process.stdout.write(`not healthy after ${a.timeout}:\n${missing.map((m) => `  - ${m}`).join("\n")}\n`);
  return ExitCode.FAILED;
});

const clusterPing = command<Connection & { peers: string }>(async (a) => {
  const peers = splitList(a.peers);
  if (peers.length === 0) throw new UsageError("--peers is empty: give the cluster addresses host:port to ping, comma-separated");
  const tls = tlsOf(a);
  const results = await Promise.all(peers.map((p) => ping(p, tls)));
  if (a.json) printJson({ ok: results.every((r) => r.ok), peers: results });
  else {
    for (const r of results) {
      process.stdout.write(r.ok
        ? `  ${r.address.padEnd(24)} ok    ${r.rttMs!.toFixed(1)} ms${r.identity === undefined ? "" : `  certificate "${r.identity}"`}\n`
        : `  ${r.address.padEnd(24)} FAIL  ${r.reason}\n`);
    }
  }
  return results.every((r) => r.ok) ? ExitCode.OK : ExitCode.FAILED;
});

const nodeStatus = command<Connection>(async (a) => {
  const { response } = await api(a).call("nodeStatus", {});
  if (a.json) printJson(response);
  else {
    const r = response as Record<string, unknown>;
    process.stdout.write(
      [
        `node ${String(r.nodeId)}: ${String(r.state)}, view ${String(r.view)}, leader ${String(r.leaderId) === "0" ? "unknown" : `node ${String(r.leaderId)}`}`,
        `  commit_index ${String(r.commitIndex)}, applied_index ${String(r.appliedIndex)}`,
        `  sync ${String(r.syncMode)}, disk ${String(r.diskBytes)} bytes in ${String(r.segments)} segments`,
        `  client ${String(r.clientAddress)}, cluster ${String(r.clusterAddress)}`,
        `  writes ${r.readOnly === true ? `frozen: read-only${String(r.readOnlyReason) === "" ? "" : ` (${String(r.readOnlyReason)})`}` : "allowed"}`,
      ].join("\n") + "\n",
    );
  }
  return ExitCode.OK;
});

const metrics = command<{ json: boolean; "metrics-endpoint": string; filter?: string }>(async (a) => {
  const text = await fetchMetricsText(a["metrics-endpoint"]);
  const lines = text.split("\n").filter((l) => l !== "" && (a.filter === undefined || l.includes(a.filter)));
  if (a.json) printJson({ endpoint: a["metrics-endpoint"], samples: parseMetrics(lines) });
  else process.stdout.write(lines.join("\n") + "\n");
  return ExitCode.OK;
});

const readOnly = command<Connection & { mode: string; reason?: string }>(async (a) => {
  const { response } = await api(a).call("setReadOnly", { on: a.mode === "on", reason: a.reason ?? "" });
  if (a.json) printJson(response);
  else process.stdout.write(`${String(response.message)}\n`);
  return ExitCode.OK;
});

const leaderTransfer = command<Connection & { to: number }>(async (a) => {
  const { response } = await api(a).call("transferLeadership", { to: a.to });
  if (a.json) printJson(response);
  else process.stdout.write(`leadership moved to node ${String(response.newLeader)}\n`);
  return ExitCode.OK;
});

function membership<A extends Connection>(method: string, request: (a: A) => object) {
  return command<A>(async (a) => {
    const { response } = await api(a).call(method, request(a));
    if (a.json) printJson(response);
    else process.stdout.write(`membership now (entry ${String(response.index)}): voters ${JSON.stringify(response.voters)}, learners ${JSON.stringify(response.learners)}\n`);
    return ExitCode.OK;
  });
}

const nodeIdOption = { "node-id": { type: "number", demandOption: true, describe: "The member's node id (as cluster status shows it)" } } as const;

function positiveNodeId(a: { "node-id": number }): true {
  if (!Number.isSafeInteger(a["node-id"]) || a["node-id"] < 1) throw new Error("--node-id must be a positive integer");
  return true;
}

function addClusterCommands(c: Argv): Argv {
  return c
    .command("status", "Every member: id, role, voter, address, match index, last seen; the leader marked",
      (s) => s.options(connectionOptions)
        .example("$0 cluster status", "The cluster as the node on 127.0.0.1:7000 sees it")
        .example("$0 cluster status --endpoints node1:7000,node2:7000 --tls-ca ca.crt --tls-cert admin.crt --tls-key admin.key --json", "With mutual TLS, as JSON"),
      clusterStatus)
    .command("wait-healthy", "Exit 0 once a leader exists, every member is up and caught up; 1 on timeout, saying what is missing",
      (s) => s.options({ ...connectionOptions, timeout: { type: "string", default: "60s", describe: "How long to wait (e.g. 30s, 2m)" } })
        .example("$0 cluster wait-healthy --timeout 2m", "After restarting a node in a rolling upgrade"),
      waitHealthy)
    .command("ping", "Reachability, TLS handshake and round-trip time of each peer's cluster address, with the reason for each failure",
      (s) => s.options({ ...connectionOptions, peers: { type: "string", demandOption: true, describe: "Cluster addresses, comma-separated (node1:7001,node2:7001)" } })
        .example("$0 cluster ping --peers node1:7001,node2:7001,node3:7001", "When a cluster won't form"),
      clusterPing)
    .command("readonly <mode>", "A replicated write freeze for maintenance: appends get UNAVAILABLE with the reason; reads and queries go on",
      (s) => s.positional("mode", { choices: ["on", "off"], describe: "on: freeze writes; off: resume them" })
        .options({ ...connectionOptions, reason: { type: "string", describe: "Why (appends are refused with it; status shows it)" } })
        .example("$0 cluster readonly on --reason 'disk replacement on node2'", "Freeze writes")
        .example("$0 cluster readonly off", "Resume writes"),
      readOnly)
    .example("$0 cluster status", "Every member and the leader")
    .demandCommand(1, "cluster needs a subcommand: status, wait-healthy, ping or readonly");
}

function addMemberCommands(c: Argv): Argv {
  return c
    .command("add", "Add a node as a learner, by its cluster address (start it with --join first)",
      (s) => s.options({ ...connectionOptions, address: { type: "string", demandOption: true, describe: "The new node's cluster address host:port" } })
        .example("$0 member add --address node4:7001", "Add the node started with --join on node4"),
      membership<Connection & { address: string }>("addLearner", (a) => ({ address: a.address })))
    .command("promote", "Promote a caught-up learner to voter",
      (s) => s.options({ ...connectionOptions, ...nodeIdOption }).check(positiveNodeId)
        .example("$0 member promote --node-id 4", "Make learner 4 a voter once cluster status shows it caught up"),
      membership<Connection & { "node-id": number }>("promoteMember", (a) => ({ nodeId: a["node-id"] })))
    .command("remove", "Remove a node from the cluster",
      (s) => s.options({ ...connectionOptions, ...nodeIdOption }).check(positiveNodeId)
        .example("$0 member remove --node-id 3", "Take node 3 out of the cluster before retiring it"),
      membership<Connection & { "node-id": number }>("removeMember", (a) => ({ nodeId: a["node-id"] })))
    .example("$0 member add --address node4:7001", "Add a learner")
    .demandCommand(1, "member needs a subcommand: add, promote or remove");
}

export function addAdminCommands(y: Argv): Argv {
  return y
    .command("cluster", "Cluster operations over the Admin API", addClusterCommands)
    .command(["node", "status"], "This node's status (node status, or status)", (c) =>
      c.command("status", "This node: state, view, commit and applied index, sync mode, disk use, segments",
        (s) => s.options(connectionOptions).example("$0 node status --endpoints node2:7000", "Node 2's own view"), nodeStatus)
        .options(connectionOptions)
        .example("$0 status | grep -E \"(commit_index|applied_index)\"", "Projection lag, as the guide checks it")
        .example("$0 node status --json", "The node's status as JSON"), nodeStatus)
    .command("metrics", "A node's Prometheus metrics (GET /metrics on its metrics address)",
      (s) => s.options({
        ...metricsEndpointOption,
        filter: { type: "string", describe: "Only lines containing this text (as grep would)" },
        ...jsonOption,
      })
        .example("$0 metrics | grep consensus_duration", "Consensus timing, when writes are slow")
        .example("$0 metrics --metrics-endpoint node2:9090 --filter verity_consensus --json", "Node 2's consensus samples as JSON"),
      metrics)
    .command("leader", "Leadership", (c) =>
      c.command("transfer", "Hand leadership to another voter (the most caught-up one unless --to)",
        (s) => s.options({ ...connectionOptions, to: { type: "number", default: 0, describe: "Node id to hand over to (0: the most caught-up voter)" } })
          .example("$0 leader transfer", "Before stopping the leader")
          .example("$0 leader transfer --to 2", "Hand leadership to node 2"),
        leaderTransfer)
        .example("$0 leader transfer --to 2", "Hand leadership to node 2")
        .demandCommand(1, "leader needs a subcommand: transfer"))
    .command("member", "Membership changes, one at a time", addMemberCommands);
}
