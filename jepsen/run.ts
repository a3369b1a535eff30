/**
 * One jepsen-lite run: start the cluster, create the tenants and their projections, run the
 * workload while the nemeses inject faults, heal, let the cluster settle, read everything back
 * through every node, stop the nodes and read their logs from disk, check the history, and write
 * the results folder (history.jsonl, final.json, checker.json, report.html, nodes/*.log).
 */

import { crc32c } from "@node-rs/crc32";
import * as grpc from "@grpc/grpc-js";
import { existsSync, mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { NodeFileSystem } from "../src/log/node-fs.js";
import { dumpLog } from "../src/log/offline.js";
import { check, type CheckResult, type FinalNode, type FinalState, type AnomalyKey, type Anomaly, ANOMALY_KEYS } from "./checker.js";
import { JepsenCluster, type JepsenNode } from "./cluster.js";
import {
  ANOMALIES_SHOWN_MAX, DRAIN_MS_MAX, FINAL_READ_CONCURRENCY, LEADER_WAIT_MS, POLL_MS, READ_ALL_PAGE, READ_ALL_PAGES_MAX, READ_LIMIT, SETTLE_MS_MAX, TENANTS,
} from "./constants.js";
import { History, type SubEventTuple, type ReadEventTuple } from "./history.js";
import { LoopbackNetwork, NamespaceNetwork, namespacesAvailable, type Network } from "./network.js";
import { Nemesis, NEMESIS_NAMES, type NemesisName } from "./nemesis.js";
import { writeReport } from "./report.js";
import { Rng } from "./rng.js";
import { PROJECTION_DEFINITION, PROJECTION_MIGRATION, Workload, digestResult, streamKey } from "./workload.js";

export interface RunOptions {
  nodes: number;
  nemeses: NemesisName[];
  timeLimitS: number;
  rate: number;
  seed: number;
  /** The results folder (default: a new folder under $TMPDIR/verity-jepsen). */
  out?: string;
  network: "auto" | "netns" | "loopback";
  /** Progress lines (stderr by default). */
  log?: (line: string) => void;
}

/** What `--json` prints. */
export interface RunSummary {
  valid: boolean;
  ops: number;
  ok: number;
  fail: number;
  info: number;
  nemesis: Record<NemesisName, number>;
  anomalies: Record<AnomalyKey, Anomaly[]>;
  dir: string;
  network: string;
  seed: number;
}

/** Setup calls are retried while the cluster has no leader (bounded). */
const SETUP_ATTEMPTS_MAX = 60;
const SETUP_RETRY_MS = 500;
/** After healing, the workload runs on this long, so the run ends with writes going through. */
const AFTER_HEAL_MS = 5_000;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Runs a setup command until it succeeds (bounded). A retry that finds the thing already there
 * succeeded: an earlier try whose answer was lost had done it.
 */
async function retrying(what: string, body: () => Promise<unknown>): Promise<void> {
  // Bounded: SETUP_ATTEMPTS_MAX tries.
  for (let attempt = 1; ; attempt++) {
    try {
      await body();
      return;
    } catch (e) {
      const code = (e as { code?: number }).code;
      if (attempt > 1 && /exists already|already exists/.test(e instanceof Error ? e.message : "")) return;
      if (attempt >= SETUP_ATTEMPTS_MAX || (code !== grpc.status.UNAVAILABLE && code !== grpc.status.DEADLINE_EXCEEDED)) {
        throw new Error(`${what}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
      }
      await sleep(SETUP_RETRY_MS);
    }
  }
}

async function chooseNetwork(kind: RunOptions["network"], needsPartitions: boolean): Promise<Network> {
  const netns = kind === "netns" || (kind === "auto" && namespacesAvailable());
  if (!netns) {
    if (needsPartitions) throw new Error("the partition nemesis needs network namespaces: run as root (or with --network netns), or leave partition out");
    return new LoopbackNetwork();
  }
  const n = new NamespaceNetwork();
  await n.setup();
  return n;
}

/** Creates the tenants, their projection table and projection (replicated admin commands). */
async function setUpTenants(cluster: JepsenCluster): Promise<void> {
  for (const tenant of TENANTS) {
    const nodes = (): JepsenNode[] => cluster.running();
    await retrying(`create tenant ${tenant}`, () => cluster.admin(nodes(), "createTenant", { tenant }));
    await retrying(`migrate ${tenant}`, () => cluster.admin(nodes(), "migrate", { tenant, sql: PROJECTION_MIGRATION, name: "001_jepsen.sql" }));
    await retrying(`create the projection of ${tenant}`, () => cluster.admin(nodes(), "createProjection", { tenant, definition: PROJECTION_DEFINITION, fromStart: true }));
  }
}

/** Waits until every member answers, one leader, one commit index, everything applied. */
async function settle(cluster: JepsenCluster, log: (l: string) => void): Promise<{ settled: boolean; problems: string[]; commit: Map<number, number> }> {
  const end = Date.now() + SETTLE_MS_MAX;
  let last = "";
  // Bounded by the deadline.
  while (Date.now() < end) {
    const members = cluster.members();
    const statuses = await Promise.all(members.map((n) => cluster.status(n)));
    const missing = members.filter((_, i) => statuses[i] === undefined).map((n) => n.id);
    const commits = new Set(statuses.map((s) => s?.commit_index));
    const leaders = new Set(statuses.map((s) => s?.leader_id));
    const unapplied = statuses.filter((s) => s !== undefined && s.applied_index < s.commit_index).map((s) => s!.node_id);
    if (missing.length === 0 && commits.size === 1 && leaders.size === 1 && !leaders.has(0) && unapplied.length === 0) {
      return { settled: true, problems: [], commit: new Map(statuses.map((s) => [s!.node_id, s!.commit_index])) };
    }
    last = `members ${members.map((n) => n.id).join(",")}: not answering [${missing.join(",")}], commit indexes [${[...commits].join(",")}], leaders [${[...leaders].join(",")}], not applied [${unapplied.join(",")}]`;
    await sleep(POLL_MS);
  }
  log(`did not settle: ${last}`);
  const statuses = await Promise.all(cluster.members().map((n) => cluster.status(n)));
  return { settled: false, problems: [`within ${SETTLE_MS_MAX} ms: ${last}`], commit: new Map(statuses.filter((s) => s !== undefined).map((s) => [s!.node_id, s!.commit_index])) };
}

/**
 * Waits (bounded) until every member's projections of every tenant have the same digest. (Their
 * applied positions may still differ: a node's position can stop at the tenant's last event or
 * run on past entries of other tenants; the checker compares digests by the events they cover.)
 */
async function settleProjections(cluster: JepsenCluster): Promise<void> {
  const end = Date.now() + SETTLE_MS_MAX;
  // Bounded by the deadline.
  while (Date.now() < end) {
    let same = true;
    for (const tenant of TENANTS) {
      const digests = await Promise.all(cluster.members().map((n) => cluster.admin([n], "projectionStatus", { tenant }).then((r) => String(r.digest), () => "")));
      if (new Set(digests).size !== 1 || digests.includes("")) same = false;
    }
    if (same) return;
    await sleep(POLL_MS);
  }
}

async function inParallel<T>(items: readonly T[], concurrency: number, body: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    // Bounded by items.length.
    while (next < items.length) await body(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker));
}

/** Everything one node answers at the end: ReadAll per tenant, Read per stream, projections. */
async function finalReads(cluster: JepsenCluster, n: JepsenNode, streams: Map<string, string[]>): Promise<FinalNode> {
  const out: FinalNode = { node: n.id, tenants: {}, streams: {}, projections: {}, errors: [] };
  const client = cluster.clientFor(n);
  for (const tenant of TENANTS) {
    const events: SubEventTuple[] = [];
    let from = 0;
    try {
      for (let page = 0; page < READ_ALL_PAGES_MAX; page++) {
        const r = await client.readAll({ tenant, fromPosition: from, limit: READ_ALL_PAGE, consistency: "local" });
        for (const e of r.events) events.push([e.position, e.stream, e.version, e.eventId]);
        if (r.events.length === 0) break;
        from = r.events[r.events.length - 1]!.position + 1;
      }
      out.tenants[tenant] = events;
    } catch (e) {
      out.errors.push(`ReadAll ${tenant} from ${from}: ${e instanceof Error ? e.message : String(e)}`);
    }
    await inParallel(streams.get(tenant) ?? [], FINAL_READ_CONCURRENCY, async (stream) => {
      try {
        const r = await client.read({ tenant, stream, fromVersion: 0, limit: READ_LIMIT, consistency: "local" });
        const list: ReadEventTuple[] = r.events.map((e) => [e.version, e.eventId, e.position]);
        if (list.length > 0) out.streams[streamKey(tenant, stream)] = list;
      } catch (e) {
        out.errors.push(`Read ${streamKey(tenant, stream)}: ${e instanceof Error ? e.message : String(e)}`);
      }
    });
    const p: FinalNode["projections"][string] = {};
    try {
      p.digest = digestResult(await cluster.admin([n], "projectionStatus", { tenant }));
      const q = await client.query({
        tenant, consistency: "local", params: { t: tenant },
        sql: "SELECT COUNT(*), COALESCE(SUM(position), 0), COALESCE(SUM(version), 0), COALESCE(SUM(tenant <> :t), 0) FROM jepsen_seen",
      });
      const row = (q.rows[0] ?? []).map(Number);
      p.query = { appliedPosition: q.appliedPosition, count: row[0] ?? 0, positionSum: row[1] ?? 0, versionSum: row[2] ?? 0, foreign: row[3] ?? 0 };
    } catch (e) {
      out.errors.push(`projections of ${tenant}: ${e instanceof Error ? e.message : String(e)}`);
    }
    out.projections[tenant] = p;
  }
  return out;
}

/** [term, checksum of kind, tenant and payload] of every entry in a stopped node's log, from index 1. */
async function readLog(n: JepsenNode): Promise<Array<[number, number]>> {
  const entries: Array<[number, number]> = [];
  for await (const item of dumpLog(new NodeFileSystem(), join(n.dataDir, "log"), 1, Number.MAX_SAFE_INTEGER)) {
    if (!("entry" in item)) break;
    const e = item.entry;
    const body = Buffer.concat([Buffer.from([e.kind]), Buffer.from(e.tenant, "utf8"), Buffer.from([0]), e.payload]);
    entries[e.index - 1] = [e.term, crc32c(body)];
  }
  return entries;
}

export async function runJepsen(o: RunOptions): Promise<{ summary: RunSummary; result: CheckResult }> {
  const log = o.log ?? ((l: string) => process.stderr.write(`jepsen: ${l}\n`));
  const dir = o.out ?? join(tmpdir(), "verity-jepsen", `${new Date().toISOString().replace(/[:.]/g, "-")}-seed${o.seed}`);
  if (existsSync(dir) && readdirSync(dir).length > 0) throw new Error(`the results folder ${dir} is not empty: give a new one with --out`);
  mkdirSync(dir, { recursive: true });
  const rng = new Rng(o.seed);
  const network = await chooseNetwork(o.network, o.nemeses.includes("partition"));
  const history = new History(join(dir, "history.jsonl"));
  let cluster: JepsenCluster | undefined;
  const teardown = (): void => {
    cluster?.teardown();
    network.teardown();
    history.close();
  };
  const onSignal = (signal: NodeJS.Signals): void => {
    teardown();
    process.stderr.write(`jepsen: stopped by ${signal}; results so far in ${dir}\n`);
    process.exit(130);
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  process.once("exit", teardown);
  try {
    cluster = new JepsenCluster({ dir, network, history, journal: o.nemeses.includes("lose-unsynced") });
    log(`results in ${dir}; ${o.nodes} nodes on ${network.kind}; nemesis ${o.nemeses.join(",") || "none"}; ${o.timeLimitS} s at ${o.rate} ops/s; seed ${o.seed}`);
    const founders: JepsenNode[] = [];
    for (let id = 1; id <= o.nodes; id++) founders.push(await cluster.addNode(id));
    for (const n of founders) cluster.start(n, { peers: founders.filter((m) => m !== n) });
    if ((await cluster.awaitLeader(LEADER_WAIT_MS)) === undefined) throw new Error(`no leader within ${LEADER_WAIT_MS} ms; see ${dir}/nodes`);
    await setUpTenants(cluster);

    const workload = new Workload(cluster, history, rng, o.rate);
    const nemesis = new Nemesis(cluster, history, rng, o.nemeses, o.nodes);
    workload.start();
    log("workload and nemesis running");
    const endAt = Date.now() + o.timeLimitS * 1000;
    await nemesis.run(endAt);
    log("healing");
    await nemesis.heal();
    await sleep(AFTER_HEAL_MS);
    await workload.stop(DRAIN_MS_MAX);
    log("settling");
    const settled = await settle(cluster, log);
    await settleProjections(cluster);
    log("final reads");
    const streams = workload.allStreams();
    const finals: FinalNode[] = [];
    for (const n of cluster.members()) finals.push(await finalReads(cluster, n, streams));
    log("stopping nodes and reading their logs");
    for (const n of cluster.members()) await cluster.stop(n, "SIGTERM");
    for (const f of finals) {
      const n = cluster.node(f.node);
      try {
        f.log = { commitIndex: settled.commit.get(n.id) ?? 0, entries: await readLog(n) };
      } catch (e) {
        f.errors.push(`reading the log from disk: ${e instanceof Error ? e.message : String(e)}`);
      }
    }
    const final: FinalState = { nodes: finals, settled: settled.settled, problems: settled.problems };
    history.close();
    writeFileSync(join(dir, "final.json"), JSON.stringify({ ...final, nodes: final.nodes.map((n) => ({ ...n, log: n.log === undefined ? undefined : { commitIndex: n.log.commitIndex, entries: n.log.entries.length } })) }));
    log("checking");
    const result = check(history.lines, final);
    writeFileSync(join(dir, "checker.json"), JSON.stringify(result, null, 2));
    const summary: RunSummary = {
      valid: result.valid, ops: result.ops, ok: result.ok, fail: result.fail, info: result.info,
      nemesis: Object.fromEntries(NEMESIS_NAMES.map((k) => [k, nemesis.counts[k]])) as Record<NemesisName, number>,
      anomalies: Object.fromEntries(ANOMALY_KEYS.map((k) => [k, result.anomalies[k].slice(0, ANOMALIES_SHOWN_MAX)])) as Record<AnomalyKey, Anomaly[]>,
      dir, network: network.kind, seed: o.seed,
    };
    writeReport(join(dir, "report.html"), history.lines, result, summary, o);
    return { summary, result };
  } finally {
    process.removeListener("SIGINT", onSignal);
    process.removeListener("SIGTERM", onSignal);
    process.removeListener("exit", teardown);
    teardown();
  }
}
