/**
 * A 3-member etcd cluster on loopback for the cluster benchmark's comparison: the `etcd` binary of
 * the Debian package etcd-server, plain HTTP, default settings (etcd fsyncs its WAL on every
 * commit by default), data directories under the run's temp dir.
 */

import { spawnSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { join } from "node:path";
import { freePort, httpJson, until, type BenchChild, type ChildRegistry } from "./bench-processes.js";

export const ETCD_MEMBERS = 3;
export const ETCD_INSTALL_HINT = "apt-get update && apt-get install -y etcd-server";

export interface EtcdBenchMember {
  name: string;
  client: number;
  peer: number;
  child: BenchChild;
  /** The client URL, as the etcd3 client takes it. */
  url: string;
}

export interface EtcdBenchCluster {
  members: EtcdBenchMember[];
  leader: EtcdBenchMember;
  version: string;
}

/** `etcd --version`'s first line, or undefined when there is no etcd binary on the PATH. */
export function etcdVersion(binary = "etcd"): string | undefined {
  const r = spawnSync(binary, ["--version"], { encoding: "utf8", timeout: 10_000 });
  if (r.error !== undefined || r.status !== 0) return undefined;
  return r.stdout.split("\n")[0]?.trim();
}

/** The member every member names as leader, if they agree (etcd's /v3/maintenance/status gateway). */
async function agreedLeader(members: readonly EtcdBenchMember[]): Promise<EtcdBenchMember | undefined> {
  const views = await Promise.all(members.map((m) => httpJson(m.client, "/v3/maintenance/status", "{}")));
  const leaderIds = new Set(views.map((v) => (v === undefined ? undefined : String(v.leader ?? "0"))));
  if (leaderIds.size !== 1) return undefined;
  const [leaderId] = [...leaderIds];
  if (leaderId === undefined || leaderId === "0") return undefined;
  const index = views.findIndex((v) => String((v?.header as Record<string, unknown> | undefined)?.member_id) === leaderId);
  return index < 0 ? undefined : members[index];
}

/** Starts the members and waits until they agree on a leader. */
export async function startEtcdCluster(registry: ChildRegistry, dataRoot: string, version: string): Promise<EtcdBenchCluster> {
  const ports: { name: string; client: number; peer: number }[] = [];
  for (let i = 1; i <= ETCD_MEMBERS; i++) ports.push({ name: `m${i}`, client: await freePort(), peer: await freePort() });
  const initialCluster = ports.map((p) => `${p.name}=http://127.0.0.1:${p.peer}`).join(",");
  const token = `verity-bench-${randomUUID()}`;
  const members: EtcdBenchMember[] = ports.map((p) => {
    const child = registry.spawn(`etcd ${p.name}`, "etcd", [
      "--name", p.name, "--data-dir", join(dataRoot, `etcd-${p.name}`),
      "--listen-peer-urls", `http://127.0.0.1:${p.peer}`, "--initial-advertise-peer-urls", `http://127.0.0.1:${p.peer}`,
      "--listen-client-urls", `http://127.0.0.1:${p.client}`, "--advertise-client-urls", `http://127.0.0.1:${p.client}`,
      "--initial-cluster", initialCluster, "--initial-cluster-token", token, "--initial-cluster-state", "new",
      "--logger", "zap", "--log-level", "warn",
    ], process.env);
    return { ...p, child, url: `http://127.0.0.1:${p.client}` };
  });
  const leader = await until("the 3 etcd members to agree on a leader", async () => {
    const dead = members.find((m) => m.child.process.exitCode !== null);
    if (dead !== undefined) throw new Error(`etcd ${dead.name} exited with code ${dead.child.process.exitCode}:\n${dead.child.output()}`);
    return agreedLeader(members);
  });
  return { members, leader, version };
}
