/**
 * `npm run bench -- cluster`: a 3-node VerityDB cluster on loopback (fsync on, plaintext), loaded
 * by `clients` concurrent append loops of single 256-byte events for `seconds`, then of 100-event
 * batches; then, in the same run, the same single-event load as puts of 256-byte values on a
 * 3-member etcd cluster through the `etcd3` client. Prints a table and writes
 * bench/results/cluster.json with events/s, p50 and p99 of each phase and the ratio to etcd.
 *
 * The phases run one after another and each system runs alone: the VerityDB cluster is stopped
 * before etcd starts, so neither takes CPU or disk from the other. Each phase is warmed up for
 * WARMUP_SECONDS first. Every process started is stopped by its PID, also on error and SIGINT.
 */

import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { cpus, loadavg, totalmem, tmpdir, type as osType, release } from "node:os";
import { join } from "node:path";
import { randomFillSync, randomUUID } from "node:crypto";
import { Etcd3 } from "etcd3";
import { VerityClient } from "../src/client/verity-client.js";
import { compare, round, verdict, TARGETS, type Comparison, type PhaseSummary } from "./bench-stats.js";
import { ChildRegistry } from "./bench-processes.js";
import { runPhase, type LoadCall, type PhaseResult } from "./load-loops.js";
import { startVerityCluster, VERITY_NODES, type VerityBenchCluster } from "./verity-bench-cluster.js";
import { etcdVersion, startEtcdCluster, ETCD_INSTALL_HINT, ETCD_MEMBERS } from "./etcd-bench-cluster.js";
import { summarizeCpuProfile } from "./cpu-profile-summary.js";
import { pipelineBetween, scrape, type LeaderPipeline } from "./leader-pipeline.js";
import { createTenants } from "./verity-tenants.js";

const root = join(import.meta.dirname, "..", "..");

/** Bytes of each event's data (VerityDB) and of each value (etcd). */
export const EVENT_BYTES = 256;
/** Events per append in the batch phase. */
export const BATCH_EVENTS = 100;
/** Load before each measured phase, discarded. */
export const WARMUP_SECONDS = 1;
/** One tenant per phase, so each phase's streams start empty (64 streams each, under max_streams_per_tenant). */
const TENANT_SINGLE = "bench-single";
const TENANT_BATCH = "bench-batch";

/** How the append loops reach the cluster. */
export type ClientMode = "shared" | "per-loop";
/** Which endpoints the etcd client is given: the leader's only, or every member's (it spreads calls over them). */
export type EndpointChoice = "leader" | "all";

export interface ClusterBenchOptions {
  seconds: number;
  clients: number;
  skipEtcd: boolean;
  resultsDir: string;
  /** One VerityClient for every loop, or one per loop. */
  clientMode: ClientMode;
  etcdEndpoints: EndpointChoice;
  /** When set, every VerityDB node runs with --cpu-prof and writes its profile here. */
  cpuProfileDir: string | undefined;
}

interface PhaseReport {
  label: string;
  result: PhaseResult;
  /** The VerityDB leader's consensus loop during the phase (null when its metrics could not be read). */
  pipeline?: LeaderPipeline | null;
}

const progress = (line: string): void => void process.stderr.write(`  ${line}\n`);

function describe(label: string, r: PhaseResult): string {
  const s = r.summary;
  const cpu = Object.entries(r.cpu).map(([name, u]) => `${name} ${u.cpu_pct ?? "?"}/${u.run_queue_wait_pct ?? "?"}`).join(", ");
  return `${label}: ${s.events_per_s} events/s, ${s.ops_per_s} calls/s, p50 ${s.p50_ms} ms, p99 ${s.p99_ms} ms${s.errors > 0 ? `, ${s.errors} errors` : ""}\n    % CPU / % run-queue wait: ${cpu}`;
}

function describePipeline(p: LeaderPipeline): string {
  return `${p.log_writes_per_s} log writes/s of ${p.entries_per_log_write} entries (${p.log_write_ms} ms each), ` +
    `persist ${p.persist_per_s}/s x ${p.persist_ms} ms, apply ${p.apply_per_s}/s x ${p.apply_ms} ms, busy ${p.loop_busy_pct}%, server-side append ${p.server_append_ms} ms`;
}

/** Builds the append call of one phase: loop i appends to its own stream, with no expected version. */
function verityCall(clients: (loop: number) => VerityClient, tenant: string, eventsPerCall: number): LoadCall {
  const data = randomFillSync(new Uint8Array(EVENT_BYTES));
  const events = Array.from({ length: eventsPerCall }, () => ({ type: "bench", data }));
  return async (loop) => {
    await clients(loop).append({ tenant, stream: `s-${loop}`, events });
  };
}

interface VerityPhases {
  single: PhaseReport;
  batch: PhaseReport;
  leader: number;
}

async function verityPhases(registry: ChildRegistry, dataRoot: string, o: ClusterBenchOptions): Promise<VerityPhases> {
  const cluster: VerityBenchCluster = await startVerityCluster(registry, dataRoot, o.cpuProfileDir);
  progress(`verity: ${VERITY_NODES} nodes up, leader node ${cluster.leader.id} (127.0.0.1:${cluster.leader.client})`);
  // The leader's endpoint only: a follower would forward every append to it (one more hop).
  const endpoints = [`127.0.0.1:${cluster.leader.client}`];
  const tenantsCreated = await createTenants(endpoints[0]!, [TENANT_SINGLE, TENANT_BATCH]);
  progress(tenantsCreated ? `verity: tenants ${TENANT_SINGLE} and ${TENANT_BATCH} created` : "verity: this server has no CreateTenant; any tenant is accepted");
  const made = Array.from({ length: o.clientMode === "shared" ? 1 : o.clients }, () => new VerityClient({ endpoints }));
  const clientOf = (loop: number): VerityClient => made[o.clientMode === "shared" ? 0 : loop]!;
  try {
    const processes = Object.fromEntries(cluster.nodes.map((n) => [n === cluster.leader ? `leader (node ${n.id})` : `follower (node ${n.id})`, n.child.process.pid]));
    const phase = async (label: string, tenant: string, eventsPerCall: number): Promise<PhaseReport> => {
      const result = await runPhase({
        concurrency: o.clients, seconds: o.seconds, warmupSeconds: WARMUP_SECONDS, eventsPerCall, call: verityCall(clientOf, tenant, eventsPerCall), processes,
        sample: () => scrape(cluster.leader.metrics),
      });
      const s = result.samples;
      const pipeline = s?.before === undefined || s.after === undefined ? null : pipelineBetween(s.before, s.after, result.summary.seconds);
      progress(describe(label, result));
      if (pipeline !== null) progress(`  leader loop: ${describePipeline(pipeline)}`);
      return { label, result, pipeline };
    };
    const single = await phase("verity", TENANT_SINGLE, 1);
    const batch = await phase(`verity_batch${BATCH_EVENTS}`, TENANT_BATCH, BATCH_EVENTS);
    return { single, batch, leader: cluster.leader.id };
  } finally {
    for (const c of made) c.close();
  }
}

async function etcdPhase(registry: ChildRegistry, dataRoot: string, version: string, o: ClusterBenchOptions): Promise<PhaseReport> {
  const cluster = await startEtcdCluster(registry, dataRoot, version);
  progress(`etcd: ${ETCD_MEMBERS} members up (${version}), leader ${cluster.leader.name} (${cluster.leader.url})`);
  const hosts = o.etcdEndpoints === "leader" ? [cluster.leader.url] : cluster.members.map((m) => m.url);
  const client = new Etcd3({ hosts });
  try {
    const value = randomFillSync(Buffer.alloc(EVENT_BYTES));
    const result = await runPhase({
      concurrency: o.clients, seconds: o.seconds, warmupSeconds: WARMUP_SECONDS, eventsPerCall: 1,
      processes: Object.fromEntries(cluster.members.map((m) => [m === cluster.leader ? `leader (${m.name})` : `follower (${m.name})`, m.child.process.pid])),
      call: async (loop, seq) => {
        await client.put(`bench/${loop}/${seq}`).value(value);
      },
    });
    progress(describe("etcd", result));
    return { label: "etcd", result };
  } finally {
    client.close();
  }
}

function table(rows: { label: string; s: PhaseSummary | null }[]): string[] {
  const cell = (v: string, w: number): string => v.padStart(w);
  const lines = [
    "| phase             |  events/s |   calls/s |  p50 ms |  p99 ms | errors |",
    "|-------------------|----------:|----------:|--------:|--------:|-------:|",
  ];
  for (const { label, s } of rows) {
    lines.push(s === null
      ? `| ${label.padEnd(17)} | ${cell("-", 9)} | ${cell("-", 9)} | ${cell("-", 7)} | ${cell("-", 7)} | ${cell("-", 6)} |`
      : `| ${label.padEnd(17)} | ${cell(String(s.events_per_s), 9)} | ${cell(String(s.ops_per_s), 9)} | ${cell(s.p50_ms.toFixed(2), 7)} | ${cell(s.p99_ms.toFixed(2), 7)} | ${cell(String(s.errors), 6)} |`);
  }
  return lines;
}

function report(o: ClusterBenchOptions, verity: PhaseSummary, batch: PhaseSummary, etcd: PhaseSummary | null, c: Comparison, etcdNote: string): string {
  const lines = [
    "",
    `cluster benchmark: ${VERITY_NODES} nodes on loopback, fsync on, ${o.clients} concurrent clients, ${EVENT_BYTES}-byte events, ${o.seconds} s per phase` +
      (diagnostic(o) ? " (diagnostic run: --cpu-prof-dir)" : ""),
    ...table([
      { label: "verity single", s: verity },
      { label: `verity batch ${BATCH_EVENTS}`, s: batch },
      { label: "etcd put", s: etcd },
    ]),
    "",
    c.ratio_vs_etcd === null
      ? `verity / etcd events/s: n/a (${etcdNote})`
      : `verity / etcd events/s: ${c.ratio_vs_etcd} (target >= ${TARGETS.ratio_vs_etcd_min}: ${verdict(c.met.ratio_vs_etcd)})`,
    c.p99_ratio_vs_etcd === null
      ? "verity / etcd p99: n/a"
      : `verity / etcd p99: ${c.p99_ratio_vs_etcd} (target <= ${TARGETS.p99_ratio_vs_etcd_max}, no worse than etcd: ${verdict(c.met.p99_vs_etcd)})`,
    `verity batch ${BATCH_EVENTS}: ${batch.events_per_s} events/s (target >= ${TARGETS.batch100_events_per_s_min}: ${verdict(c.met.batch100_events_per_s)})`,
    `results: ${resultsFile(o)}`,
  ];
  return lines.join("\n") + "\n";
}

/** A profiled run is slower: not a reference figure. */
function diagnostic(o: ClusterBenchOptions): boolean {
  return o.cpuProfileDir !== undefined;
}

/** cluster.json for reference runs; diagnostic runs go to cluster-diagnostic.json so they never replace it. */
function resultsFile(o: ClusterBenchOptions): string {
  return join(o.resultsDir, diagnostic(o) ? "cluster-diagnostic.json" : "cluster.json");
}

function printProfiles(dir: string): void {
  for (const file of readdirSync(dir).filter((f) => f.endsWith(".cpuprofile")).sort()) {
    process.stdout.write(`\n${summarizeCpuProfile(join(dir, file))}`);
  }
}

/** The commit the build came from, and whether src/ had changes not committed (the figures are of the working tree). */
function sourceState(): { commit: string | null; src_changed: boolean | null } {
  const git = (args: string[]): string | undefined => {
    const r = spawnSync("git", args, { cwd: root, encoding: "utf8", timeout: 10_000 });
    return r.status === 0 ? r.stdout.trim() : undefined;
  };
  const commit = git(["rev-parse", "HEAD"]);
  const changed = git(["status", "--porcelain", "--", "src", "proto"]);
  return { commit: commit ?? null, src_changed: changed === undefined ? null : changed !== "" };
}

/** What cluster.json holds: the specification's fields first, then context and diagnostics. */
function resultOf(o: ClusterBenchOptions, verity: VerityPhases, etcd: PhaseReport | null, version: string | undefined, etcdNote: string, loadAtStart: number): Record<string, unknown> {
  const c = compare(verity.single.result.summary, verity.batch.result.summary, etcd?.result.summary ?? null);
  const phases = [verity.single, verity.batch, ...(etcd === null ? [] : [etcd])];
  return {
    verity: verity.single.result.summary,
    [verity.batch.label]: verity.batch.result.summary,
    etcd: etcd?.result.summary ?? null,
    ratio_vs_etcd: c.ratio_vs_etcd,
    p99_ratio_vs_etcd: c.p99_ratio_vs_etcd,
    targets: TARGETS,
    met: c.met,
    benchmark: "cluster",
    run_id: randomUUID(),
    date: new Date().toISOString(),
    node: process.version,
    source: sourceState(),
    machine: {
      cpus: cpus().length, cpu_model: cpus()[0]?.model ?? "unknown", memory_gb: round(totalmem() / 2 ** 30, 1), os: `${osType()} ${release()}`,
      // Other work on the machine: a load above 0 before the run means shared CPUs (see the run-queue waits under "cpu").
      load_average_1m_at_start: round(loadAtStart, 2),
    },
    settings: {
      seconds: o.seconds, warmup_seconds: WARMUP_SECONDS, clients: o.clients, event_bytes: EVENT_BYTES, batch_events: BATCH_EVENTS,
      verity_nodes: VERITY_NODES, verity_sync_mode: "fsync", verity_tls: false, verity_endpoints: "leader",
      verity_leader_node: verity.leader, verity_client_mode: o.clientMode,
      etcd_members: ETCD_MEMBERS, etcd_version: version ?? null, etcd_endpoints: o.etcdEndpoints, etcd_note: etcdNote === "" ? undefined : etcdNote,
    },
    // The VerityDB leader's consensus loop per phase, from its /metrics (bench/leader-pipeline.ts).
    verity_leader_loop: Object.fromEntries([verity.single, verity.batch].map((p) => [p.label, p.pipeline ?? null])),
    // Per phase and process: % of one core used, and % of the time its main thread waited for a CPU.
    cpu: Object.fromEntries(phases.map((p) => [p.label, p.result.cpu])),
    errors: phaseErrors(phases),
  };
}

interface PhaseErrors {
  phase: string;
  errors: number;
  first: string;
}

function phaseErrors(phases: readonly PhaseReport[]): PhaseErrors[] {
  return phases.flatMap((p) => (p.result.firstError === undefined ? [] : [{ phase: p.label, errors: p.result.summary.errors, first: p.result.firstError }]));
}

/** The etcd phase, or null with the reason in `note` when etcd is skipped, missing or fails. */
async function etcdOrNull(registry: ChildRegistry, dataRoot: string, version: string | undefined, o: ClusterBenchOptions, note: { text: string }): Promise<PhaseReport | null> {
  if (version === undefined) return null;
  try {
    return await etcdPhase(registry, dataRoot, version, o);
  } catch (e) {
    // VerityDB's figures are still worth writing down.
    note.text = `etcd failed: ${e instanceof Error ? e.message.split("\n")[0] : String(e)}`;
    process.stderr.write(`${note.text}\n`);
    return null;
  } finally {
    await registry.stopAll();
  }
}

export async function clusterBench(o: ClusterBenchOptions): Promise<void> {
  const loadAtStart = loadavg()[0] ?? 0;
  if (loadAtStart > 0.5) progress(`note: the 1-minute load average is ${loadAtStart.toFixed(2)} before the run: other work shares these ${cpus().length} CPUs`);
  const dataRoot = mkdtempSync(join(tmpdir(), "verity-cluster-bench-"));
  const removeData = (): void => rmSync(dataRoot, { recursive: true, force: true });
  const registry = new ChildRegistry(removeData);
  const version = o.skipEtcd ? undefined : etcdVersion();
  const note = { text: o.skipEtcd ? "--skip-etcd" : "" };
  if (!o.skipEtcd && version === undefined) {
    note.text = "no etcd binary";
    process.stderr.write(`etcd is not installed (no \`etcd\` on the PATH): install it with \`${ETCD_INSTALL_HINT}\`; reporting VerityDB's figures only.\n`);
  }
  if (o.cpuProfileDir !== undefined) mkdirSync(o.cpuProfileDir, { recursive: true });
  let verity: VerityPhases;
  let etcd: PhaseReport | null;
  try {
    try {
      verity = await verityPhases(registry, dataRoot, o);
    } finally {
      // etcd runs alone; SIGTERM lets profiled nodes write their profiles.
      await registry.stopAll();
    }
    etcd = await etcdOrNull(registry, dataRoot, version, o, note);
  } finally {
    registry.dispose();
    removeData();
  }
  const result = resultOf(o, verity, etcd, version, note.text, loadAtStart);
  mkdirSync(o.resultsDir, { recursive: true });
  writeFileSync(resultsFile(o), JSON.stringify(result, null, 2) + "\n");
  const c = compare(verity.single.result.summary, verity.batch.result.summary, etcd?.result.summary ?? null);
  process.stdout.write(report(o, verity.single.result.summary, verity.batch.result.summary, etcd?.result.summary ?? null, c, note.text));
  for (const e of phaseErrors([verity.single, verity.batch, ...(etcd === null ? [] : [etcd])])) {
    process.stdout.write(`${e.phase}: ${e.errors} failed calls; first: ${e.first}\n`);
    // Figures with failed calls are not a clean measurement: say so in the exit code.
    process.exitCode = 1;
  }
  if (o.cpuProfileDir !== undefined) printProfiles(o.cpuProfileDir);
}
