/**
 * A 3-node VerityDB cluster of real `verity-server` processes on loopback for the cluster
 * benchmark: plaintext (no TLS flags), default settings (so `storage.sync_mode = "fsync"`), data
 * directories under the run's temp dir.
 */

import { join } from "node:path";
import { freePort, httpJson, until, type BenchChild, type ChildRegistry } from "./bench-processes.js";

const root = join(import.meta.dirname, "..", "..");

export const VERITY_NODES = 3;

export interface VerityBenchNode {
  id: number;
  /** Client gRPC and HTTP /status port. */
  client: number;
  cluster: number;
  metrics: number;
  child: BenchChild;
}

export interface VerityBenchCluster {
  nodes: VerityBenchNode[];
  leader: VerityBenchNode;
}

/** The environment of a node: the benchmark's own, less any VERITY_* setting that would change the node. */
function nodeEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("VERITY_")));
}

/** The one leader every node agrees on, if there is one. */
async function agreedLeader(nodes: readonly VerityBenchNode[]): Promise<VerityBenchNode | undefined> {
  const views = await Promise.all(nodes.map((n) => httpJson(n.client, "/status")));
  const leaders = views.filter((s) => s?.state === "leader");
  if (leaders.length !== 1) return undefined;
  const id = leaders[0]!.node_id as number;
  if (!views.every((s) => s !== undefined && s.leader_id === id)) return undefined;
  return nodes.find((n) => n.id === id);
}

/**
 * Starts the nodes and waits until all of them name the same leader. With `cpuProfileDir`, each
 * node runs with --cpu-prof and writes its profile there when it stops (SIGTERM).
 */
export async function startVerityCluster(registry: ChildRegistry, dataRoot: string, cpuProfileDir: string | undefined): Promise<VerityBenchCluster> {
  const ports: { id: number; client: number; cluster: number; metrics: number }[] = [];
  for (let id = 1; id <= VERITY_NODES; id++) ports.push({ id, client: await freePort(), cluster: await freePort(), metrics: await freePort() });
  const nodes: VerityBenchNode[] = ports.map((p) => {
    const peers = ports.filter((q) => q !== p).map((q) => `127.0.0.1:${q.cluster}`).join(",");
    const profile = cpuProfileDir === undefined ? [] : ["--cpu-prof", `--cpu-prof-dir=${cpuProfileDir}`, `--cpu-prof-name=verity-node${p.id}.cpuprofile`];
    const child = registry.spawn(`verity node ${p.id}`, process.execPath, [
      ...profile, join(root, "bin", "verity-server.js"),
      "--node-id", String(p.id), "--data-dir", join(dataRoot, `verity-node${p.id}`),
      "--bind", `127.0.0.1:${p.client}`, "--cluster-address", `127.0.0.1:${p.cluster}`, "--cluster-peers", peers,
      "--metrics-address", `127.0.0.1:${p.metrics}`,
    ], nodeEnv());
    return { ...p, child };
  });
  const leader = await until("the 3 VerityDB nodes to agree on a leader", async () => {
    const dead = nodes.find((n) => n.child.process.exitCode !== null);
    if (dead !== undefined) throw new Error(`verity node ${dead.id} exited with code ${dead.child.process.exitCode}:\n${dead.child.output()}`);
    return agreedLeader(nodes);
  });
  return { nodes, leader };
}
