/**
 * verity-admin's commands over the Admin API: cluster status, cluster wait-healthy, node status,
 * leader transfer, member add / promote / remove. Connection settings: `--endpoints` and the TLS
 * flags, or VERITY_ENDPOINTS, VERITY_TLS_CA, VERITY_TLS_CERT, VERITY_TLS_KEY.
 */

import type { Argv } from "yargs";
import { AdminApi, AdminCallError, type ClientTlsFiles } from "../client/admin-client.js";
import { parseDuration } from "../server/setting-values.js";
import { ping } from "../client/ping.js";
import { ExitCode, run } from "./common.js";

const NAME = "verity-admin";
/** A peer the leader has not heard from for this long is reported as not seen recently. */
const RECENT_MS = 2_000;
/** How often wait-healthy asks again. */
const POLL_MS = 500;

const env = process.env;
export const connectionOptions = {
  endpoints: { type: "string", default: env.VERITY_ENDPOINTS ?? "127.0.0.1:7000", describe: "Client addresses of cluster nodes, comma-separated (env VERITY_ENDPOINTS)" },
  "tls-ca": { type: "string", default: env.VERITY_TLS_CA, describe: "CA certificate that signed the nodes' certificates (env VERITY_TLS_CA)" },
  "tls-cert": { type: "string", default: env.VERITY_TLS_CERT, describe: "Your client certificate, with an identity in [security] admins (env VERITY_TLS_CERT)" },
  "tls-key": { type: "string", default: env.VERITY_TLS_KEY, describe: "Your client certificate's private key (env VERITY_TLS_KEY)" },
  json: { type: "boolean", default: false, describe: "Print one machine-readable JSON object" },
} as const;

interface Connection {
  endpoints: string;
  "tls-ca"?: string;
  "tls-cert"?: string;
  "tls-key"?: string;
  json: boolean;
}

function tlsOf(a: Connection): ClientTlsFiles | undefined {
  const any = a["tls-ca"] ?? a["tls-cert"] ?? a["tls-key"];
  if (any === undefined) return undefined;
  if (a["tls-ca"] === undefined || a["tls-cert"] === undefined || a["tls-key"] === undefined) {
    throw new AdminCallError(3, "give --tls-ca, --tls-cert and --tls-key together (mutual TLS), or none of them for a plaintext loopback node");
  }
  return { ca: a["tls-ca"], cert: a["tls-cert"], key: a["tls-key"] };
}

function endpointsOf(a: Connection): string[] {
  return a.endpoints.split(",").map((e) => e.trim()).filter((e) => e !== "");
}

function api(a: Connection): AdminApi {
  return new AdminApi({ endpoints: endpointsOf(a), tls: tlsOf(a) });
}

/** Runs a command body; a failed call prints what every endpoint answered and exits 1. */
function command(body: (a: Connection) => Promise<number>): (args: unknown) => Promise<void> {
  return (args: unknown) => {
    const a = args as Connection;
    return run(NAME, async () => {
      try {
        return await body(a);
      } catch (e) {
        if (!(e instanceof AdminCallError)) throw e;
        if (a.json) process.stdout.write(JSON.stringify({ ok: false, error: e.message }) + "\n");
        process.stderr.write(`${NAME}: error: ${e.message}\n`);
        return ExitCode.FAILED;
      }
    });
  };
}

function ago(ms: number): string {
  if (ms === 0) return "never";
  const s = (Date.now() - ms) / 1000;
  return s < 60 ? `${s.toFixed(1)}s ago` : `${Math.round(s / 60)}m ago`;
}

type Peer = { id: number; address: string; state: string; voter: boolean; matchIndex: number; lastSeenMs: number };
type Self = { nodeId: number; state: string; view: number; commitIndex: number; appliedIndex: number; leaderId: number; clusterAddress: string };

function printCluster(self: Self, peers: Peer[]): void {
  const out = [
    `cluster: leader ${self.leaderId === 0 ? "unknown" : `node ${self.leaderId}`}, view ${self.view}; answered by node ${self.nodeId} ` +
      `(commit ${self.commitIndex}, applied ${self.appliedIndex})`,
    `  ${"id".padEnd(4)} ${"role".padEnd(10)} ${"voter".padEnd(6)} ${"address".padEnd(22)} ${"match".padEnd(8)} last seen`,
    `  ${String(self.nodeId).padEnd(4)} ${self.state.padEnd(10)} ${"yes".padEnd(6)} ${self.clusterAddress.padEnd(22)} ${"-".padEnd(8)} (answering)`,
    ...peers.map((p) =>
      `  ${String(p.id).padEnd(4)} ${p.state.padEnd(10)} ${(p.voter ? "yes" : "no").padEnd(6)} ${(p.address || "?").padEnd(22)} ` +
        `${(self.state === "leader" ? String(p.matchIndex) : "-").padEnd(8)} ${ago(p.lastSeenMs)}`),
  ];
  process.stdout.write(out.join("\n") + "\n");
}

/** What keeps the cluster, as the leader sees it, from being healthy ([] when it is). */
function unhealthy(self: Self, peers: Peer[]): string[] {
  if (self.state !== "leader") return [`node ${self.nodeId} is not the leader (leader: ${self.leaderId || "unknown"})`];
  const problems: string[] = [];
  for (const p of peers) {
    if (p.lastSeenMs === 0 || Date.now() - p.lastSeenMs > RECENT_MS) problems.push(`node ${p.id} has not been heard from ${p.lastSeenMs === 0 ? "yet" : ago(p.lastSeenMs)}`);
    else if (p.matchIndex < self.commitIndex) problems.push(`node ${p.id} is behind: it holds ${p.matchIndex} of ${self.commitIndex} committed entries`);
  }
  if (self.appliedIndex < self.commitIndex) problems.push(`the leader has applied ${self.appliedIndex} of ${self.commitIndex} committed entries`);
  return problems;
}

export function addAdminCommands(y: Argv): Argv {
  return y
    .command("cluster", "Cluster operations over the Admin API", (c) =>
      c
        .command("status", "Every member: id, role, voter, address, match index, last seen; the leader marked", (s) => s.options(connectionOptions),
          command(async (a) => {
            const { response } = await api(a).call("clusterStatus", {});
            const self = response.self as Self;
            const peers = (response.peers as Peer[]) ?? [];
            if (a.json) process.stdout.write(JSON.stringify({ self, peers }) + "\n");
            else printCluster(self, peers);
            return ExitCode.OK;
          }))
        .command("wait-healthy", "Exit 0 once a leader exists, every member is up and caught up; 1 on timeout, saying what is missing",
          (s) => s.options({ ...connectionOptions, timeout: { type: "string", default: "60s", describe: "How long to wait (e.g. 30s, 2m)" } }),
          command(async (a) => {
            const parsed = parseDuration((a as Connection & { timeout: string }).timeout);
            if (!parsed.ok) throw new AdminCallError(3, `--timeout: ${parsed.reason}`);
            const tls = tlsOf(a);
            const until = Date.now() + parsed.value;
            let missing: string[] = ["no node answered"];
            // Bounded by --timeout.
            while (Date.now() < until) {
              missing = [];
              for (const endpoint of endpointsOf(a)) {
                // Asks every endpoint: only the leader knows how far each member is.
                const one = await new AdminApi({ endpoints: [endpoint], tls }).call("clusterStatus", {}).catch(() => undefined);
                const self = one?.response.self as Self | undefined;
                if (self?.state !== "leader") continue;
                missing = unhealthy(self, (one!.response.peers as Peer[]) ?? []);
                if (missing.length === 0) {
                  if (a.json) process.stdout.write(JSON.stringify({ healthy: true, leader: self.nodeId }) + "\n");
                  else process.stdout.write(`healthy: leader node ${self.nodeId}, view ${self.view}, every member up and caught up\n`);
                  return ExitCode.OK;
                }
              }
              if (missing.length === 0) missing = ["no endpoint answered as the leader"];
              await new Promise((r) => setTimeout(r, POLL_MS));
            }
            if (a.json) process.stdout.write(JSON.stringify({ healthy: false, missing }) + "\n");
            else process.stdout.write(`not healthy after ${(a as Connection & { timeout: string }).timeout}:\n${missing.map((m) => `  - ${m}`).join("\n")}\n`);
            return ExitCode.FAILED;
          }))
        .command("ping", "Reachability, TLS handshake and round-trip time of each peer's cluster address, with the reason for each failure",
          (s) => s.options({ ...connectionOptions, peers: { type: "string", demandOption: true, describe: "Cluster addresses, comma-separated (node1:7001,node2:7001)" } }),
          command(async (a) => {
            const peers = (a as Connection & { peers: string }).peers.split(",").map((p) => p.trim()).filter((p) => p !== "");
            const results = await Promise.all(peers.map((p) => ping(p, tlsOf(a))));
            if (a.json) process.stdout.write(JSON.stringify({ ok: results.every((r) => r.ok), peers: results }) + "\n");
            else {
              for (const r of results) {
                process.stdout.write(r.ok
                  ? `  ${r.address.padEnd(24)} ok    ${r.rttMs!.toFixed(1)} ms${r.identity === undefined ? "" : `  certificate "${r.identity}"`}\n`
                  : `  ${r.address.padEnd(24)} FAIL  ${r.reason}\n`);
              }
            }
            return results.every((r) => r.ok) ? ExitCode.OK : ExitCode.FAILED;
          }))
        .demandCommand(1, "cluster needs a subcommand: status, wait-healthy or ping"))
    .command(["node", "status"], "This node's status (node status, or status)", (c) =>
      c.command("status", "This node: state, view, commit and applied index, sync mode, disk use, segments", (s) => s.options(connectionOptions), nodeStatus)
        .options(connectionOptions), nodeStatus)
    .command("metrics", "A node's Prometheus metrics (GET /metrics on its metrics address)",
      (s) => s.options({
        "metrics-endpoint": {
          type: "string", default: env.VERITY_METRICS_ENDPOINT ?? "127.0.0.1:9090",
          describe: "The node's metrics address host:port, its --metrics-address (env VERITY_METRICS_ENDPOINT)",
        },
        filter: { type: "string", describe: "Only lines containing this text (as grep would)" },
      }),
      (args: unknown) => {
        const a = args as { "metrics-endpoint": string; filter?: string };
        return run(NAME, async () => {
          const url = `http://${a["metrics-endpoint"]}/metrics`;
          let text: string;
          try {
            const res = await fetch(url, { signal: AbortSignal.timeout(5000) });
            if (!res.ok) throw new Error(`HTTP ${res.status}`);
            text = await res.text();
          } catch (e) {
            process.stderr.write(`${NAME}: error: cannot read ${url}: ${e instanceof Error ? e.message : String(e)}; is --metrics-endpoint the node's --metrics-address?\n`);
            return ExitCode.FAILED;
          }
          const lines = text.split("\n").filter((l) => l !== "" && (a.filter === undefined || l.includes(a.filter)));
          process.stdout.write(lines.join("\n") + "\n");
          return ExitCode.OK;
        });
      })
    .command("leader", "Leadership", (c) =>
      c.command("transfer", "Hand leadership to another voter (the most caught-up one unless --to)",
        (s) => s.options({ ...connectionOptions, to: { type: "number", default: 0, describe: "Node id to hand over to" } }),
        command(async (a) => {
          const { response } = await api(a).call("transferLeadership", { to: (a as Connection & { to: number }).to });
          if (a.json) process.stdout.write(JSON.stringify(response) + "\n");
          else process.stdout.write(`leadership moved to node ${String(response.newLeader)}\n`);
          return ExitCode.OK;
        }))
        .demandCommand(1, "leader needs a subcommand: transfer"))
    .command("member", "Membership changes, one at a time", (c) =>
      c
        .command("add", "Add a node as a learner, by its cluster address (start it with --join first)",
          (s) => s.options({ ...connectionOptions, address: { type: "string", demandOption: true, describe: "The new node's cluster address host:port" } }),
          membership("addLearner", (a) => ({ address: (a as Connection & { address: string }).address })))
        .command("promote", "Promote a caught-up learner to voter",
          (s) => s.options({ ...connectionOptions, "node-id": { type: "number", demandOption: true } }),
          membership("promoteMember", (a) => ({ nodeId: (a as Connection & { "node-id": number })["node-id"] })))
        .command("remove", "Remove a node from the cluster",
          (s) => s.options({ ...connectionOptions, "node-id": { type: "number", demandOption: true } }),
          membership("removeMember", (a) => ({ nodeId: (a as Connection & { "node-id": number })["node-id"] })))
        .demandCommand(1, "member needs a subcommand: add, promote or remove"));
}

const nodeStatus = command(async (a) => {
  const { response } = await api(a).call("nodeStatus", {});
  if (a.json) process.stdout.write(JSON.stringify(response) + "\n");
  else {
    const r = response as Record<string, unknown>;
    process.stdout.write(
      [
        `node ${String(r.nodeId)}: ${String(r.state)}, view ${String(r.view)}, leader ${String(r.leaderId) === "0" ? "unknown" : `node ${String(r.leaderId)}`}`,
        `  commit_index ${String(r.commitIndex)}, applied_index ${String(r.appliedIndex)}`,
        `  sync ${String(r.syncMode)}, disk ${String(r.diskBytes)} bytes in ${String(r.segments)} segments`,
        `  client ${String(r.clientAddress)}, cluster ${String(r.clusterAddress)}`,
      ].join("\n") + "\n",
    );
  }
  return ExitCode.OK;
});

function membership(method: string, request: (a: Connection) => object) {
  return command(async (a) => {
    const { response } = await api(a).call(method, request(a));
    if (a.json) process.stdout.write(JSON.stringify(response) + "\n");
    else process.stdout.write(`membership now (entry ${String(response.index)}): voters ${JSON.stringify(response.voters)}, learners ${JSON.stringify(response.learners)}\n`);
    return ExitCode.OK;
  });
}
