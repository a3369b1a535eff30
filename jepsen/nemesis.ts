/**
 * The nemeses: faults injected into the running cluster, one at a time with quiet time between
 * them (with `--nemesis all`, sometimes a second one laid over the first), and membership changes
 * in a loop of their own. Every fault heals itself at the end of its hold time; `heal` ends the
 * loops early and brings everything back (network, paused and stopped nodes).
 *
 * - kill: SIGKILL of a random node or of the leader; restarted after DOWN_MS.
 * - pause: SIGSTOP of a random node or of the leader for PAUSE_MS (longer than an election
 *   timeout), then SIGCONT.
 * - partition: isolate one node, isolate the leader, majority/minority, bridge, ring (4 nodes or
 *   more), asymmetric (a node that can only send, or only receive); see network.ts for how.
 * - lose-unsynced: SIGKILL, then the data directory is cut back to what was durable with a torn
 *   last write (lose-unsynced.ts), and SQLite databases may go back to an earlier consistent copy
 *   (sqlite-rollback.ts); one node, or every node at once (a power loss of the cluster).
 * - corrupt: a node that is not the leader, while every other member is healthy (so it is a
 *   minority of one), is stopped, its segment files damaged (corrupt.ts), and restarted. It must
 *   refuse damaged data; the repair is the guide's Single Node Failure procedure: its data
 *   directory is moved aside and it starts empty with the same id, rejoins, and catches up.
 * - membership: a new node joins (--join, AddLearner, catch up, PromoteMember), or a voter is
 *   removed (RemoveMember, then its process stopped), keeping between the starting size and
 *   EXTRA_VOTERS_MAX more voters.
 *
 * A node that refuses to start after a crash is recorded (the checker reports it) and repaired
 * the same way, so the run goes on.
 */

import * as grpc from "@grpc/grpc-js";
import {
  CATCH_UP_MS_MAX, MEMBERSHIP_PAUSE_MS_MAX, MEMBERSHIP_PAUSE_MS_MIN, DOWN_MS_MAX, DOWN_MS_MIN, EXTRA_VOTERS_MAX, FAULT_HOLD_MS_MAX, FAULT_HOLD_MS_MIN, FAULTS_MAX, MEMBERSHIP_STEP_MS_MAX,
  NEMESIS_QUIET_MS_MAX, NEMESIS_QUIET_MS_MIN, NODE_IDS_MAX, NODE_UP_WAIT_MS, OVERLAY_PROBABILITY, PAUSE_MS_MAX, PAUSE_MS_MIN, POLL_MS,
  POWER_LOSS_ALL_PROBABILITY, REJOIN_CATCH_UP_MS_MAX, SQLITE_COPY_MS_MAX, SQLITE_COPY_MS_MIN, START_REFUSAL_WAIT_MS,
} from "./constants.js";
import type { JepsenCluster, JepsenNode } from "./cluster.js";
import { damageSegments } from "./corrupt.js";
import type { History } from "./history.js";
import { loseUnsynced } from "./lose-unsynced.js";
import { rollBackDatabases, snapshotDatabases } from "./sqlite-rollback.js";
import type { Link } from "./network.js";
import type { Rng } from "./rng.js";

/** How often, and how many times, a removal whose answer was lost asks the cluster for its configuration. */
const CONFIG_RETRY_MS = 500;
const CONFIG_TRIES_MAX = 20;

export const NEMESIS_NAMES = ["kill", "pause", "partition", "lose-unsynced", "corrupt", "membership"] as const;
export type NemesisName = (typeof NEMESIS_NAMES)[number];

export type PartitionShape = "isolate-one" | "isolate-leader" | "majority-minority" | "bridge" | "ring" | "asymmetric-out" | "asymmetric-in";

/** The directed links to cut for a shape, over `ids` (leader first when known). */
export function partitionLinks(shape: PartitionShape, ids: readonly number[], leader: number | undefined, rng: Rng): { links: Link[]; detail: Record<string, unknown> } {
  const both = (xs: readonly number[], ys: readonly number[]): Link[] => xs.flatMap((x) => ys.flatMap((y): Link[] => (x === y ? [] : [[x, y], [y, x]])));
  const others = (x: number): number[] => ids.filter((y) => y !== x);
  switch (shape) {
    case "isolate-one":
    case "isolate-leader": {
      const x = shape === "isolate-leader" && leader !== undefined ? leader : rng.pick(ids);
      return { links: both([x], others(x)), detail: { isolated: x } };
    }
    case "majority-minority": {
      const shuffled = rng.shuffle(ids);
      const minority = shuffled.slice(0, Math.floor(ids.length / 2));
      const majority = shuffled.slice(minority.length);
      return { links: both(minority, majority), detail: { minority, majority } };
    }
    case "bridge": {
      // Two halves that see each other only through one node.
      const shuffled = rng.shuffle(ids);
      const bridge = shuffled[0]!;
      const rest = shuffled.slice(1);
      const left = rest.slice(0, Math.ceil(rest.length / 2));
      const right = rest.slice(left.length);
      return { links: both(left, right), detail: { bridge, left, right } };
    }
    case "ring": {
      // Each node sees its two neighbours: a majority of 5 each, no two the same majority.
      const ring = rng.shuffle(ids);
      const n = ring.length;
      const links: Link[] = [];
      for (let i = 0; i < n; i++) {
        for (let j = 0; j < n; j++) {
          const d = Math.min((i - j + n) % n, (j - i + n) % n);
          if (d > 1) links.push([ring[i]!, ring[j]!]);
        }
      }
      return { links, detail: { ring } };
    }
    case "asymmetric-out":
    case "asymmetric-in": {
      const x = leader !== undefined && rng.chance(0.5) ? leader : rng.pick(ids);
      const links: Link[] = others(x).map((y): Link => (shape === "asymmetric-out" ? [x, y] : [y, x]));
      return { links, detail: { node: x, direction: shape === "asymmetric-out" ? "cannot send" : "cannot receive" } };
    }
  }
}

export class Nemesis {
  readonly counts = Object.fromEntries(NEMESIS_NAMES.map((n) => [n, 0])) as Record<NemesisName, number>;
  /** Nodes a fault or a membership change is working on. */
  private readonly busy = new Set<number>();
  /** Nodes wiped and not yet caught up: the cluster tolerates one failure less meanwhile. */
  private readonly recovering = new Set<number>();
  private readonly stopping = new AbortController();
  private faults = 0;

  constructor(
    private readonly cluster: JepsenCluster,
    private readonly history: History,
    private readonly rng: Rng,
    private readonly enabled: readonly NemesisName[],
    private readonly startingSize: number,
  ) {}

  /** Sleeps `ms`, or less when the nemesis is told to stop. */
  private sleep(ms: number): Promise<void> {
    const signal = this.stopping.signal;
    if (signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done(): void {
        clearTimeout(timer);
        signal.removeEventListener("abort", done);
        resolve();
      }
      signal.addEventListener("abort", done, { once: true });
    });
  }

  private get stopped(): boolean {
    return this.stopping.signal.aborted;
  }

  /** Runs faults until `endAt` (Date.now() milliseconds) or `stop`. */
  async run(endAt: number): Promise<void> {
    const loops: Promise<void>[] = [this.faultLoop(endAt)];
    if (this.enabled.includes("membership")) loops.push(this.membershipLoop(endAt));
    if (this.enabled.includes("lose-unsynced")) loops.push(this.sqliteCopyLoop(endAt));
    await Promise.all(loops);
    // Without faults (or when they end early) the workload still runs for the whole time limit.
    await this.sleep(Math.max(0, endAt - Date.now()));
  }

  /** Ends the loops early; the fault under way heals itself at once. */
  stop(): void {
    this.stopping.abort();
  }

  /** Keeps a recent consistent copy of every running node's SQLite databases (sqlite-rollback.ts). */
  private async sqliteCopyLoop(endAt: number): Promise<void> {
    // Bounded by the deadline.
    while (!this.stopped && Date.now() < endAt) {
      await this.sleep(this.rng.between(SQLITE_COPY_MS_MIN, SQLITE_COPY_MS_MAX));
      for (const n of this.cluster.running()) if (!this.busy.has(n.id)) snapshotDatabases(n.dataDir, n.sqliteCopies);
    }
  }

  private async faultLoop(endAt: number): Promise<void> {
    const kinds = this.enabled.filter((n) => n !== "membership");
    if (kinds.length === 0) return;
    // Bounded by FAULTS_MAX and by the deadline.
    while (!this.stopped && Date.now() < endAt && this.faults < FAULTS_MAX) {
      await this.sleep(this.rng.between(NEMESIS_QUIET_MS_MIN, NEMESIS_QUIET_MS_MAX));
      if (this.stopped || Date.now() >= endAt) break;
      await this.restartCrashed();
      const first = this.rng.pick(kinds);
      const rest = kinds.filter((k) => k !== first);
      if (this.enabled.length === NEMESIS_NAMES.length && rest.length > 0 && this.rng.chance(OVERLAY_PROBABILITY)) {
        const second = this.rng.pick(rest);
        const one = this.fault(first);
        await this.sleep(this.rng.between(0, FAULT_HOLD_MS_MIN));
        await Promise.all([one, this.fault(second)]);
      } else {
        await this.fault(first);
      }
    }
  }

  /** What a supervisor (systemd) does: members that exited on their own are started again. */
  private async restartCrashed(): Promise<void> {
    for (const n of this.cluster.members()) {
      if (n.state === "stopped" && !this.busy.has(n.id)) {
        this.busy.add(n.id);
        try {
          this.history.node(n.id, "supervisor-restart");
          await this.restart(n, "an exit of its own");
        } finally {
          this.busy.delete(n.id);
        }
      }
    }
  }

  private async fault(kind: NemesisName): Promise<void> {
    this.faults++;
    try {
      switch (kind) {
        case "kill":
          return await this.kill();
        case "pause":
          return await this.pause();
        case "partition":
          return await this.partition();
        case "lose-unsynced":
          return await this.loseUnsynced();
        case "corrupt":
          return await this.corrupt();
        case "membership":
          return await this.membershipStep();
      }
    } catch (e) {
      this.history.node(0, "nemesis-error", { kind, error: e instanceof Error ? e.stack ?? e.message : String(e) });
    }
  }

  /** A running, idle member: the leader (when `preferLeader` comes up) or a random one. */
  private async target(preferLeader: number): Promise<{ node: JepsenNode; leader: boolean } | undefined> {
    const idle = this.cluster.running().filter((n) => !this.busy.has(n.id));
    if (idle.length === 0) return undefined;
    if (this.rng.chance(preferLeader)) {
      const l = await this.cluster.leader();
      if (l !== undefined && idle.includes(l)) return { node: l, leader: true };
    }
    return { node: this.rng.pick(idle), leader: false };
  }

  private async kill(): Promise<void> {
    const t = await this.target(0.5);
    if (t === undefined) return;
    const n = t.node;
    this.busy.add(n.id);
    this.counts.kill++;
    const fault = this.history.faultStart("kill", { node: n.id, leader: t.leader });
    try {
      await this.cluster.stop(n, "SIGKILL");
      await this.sleep(this.rng.between(DOWN_MS_MIN, DOWN_MS_MAX));
      const restarted = await this.restart(n, "kill");
      this.history.faultEnd(fault, "kill", { node: n.id, ...restarted });
    } finally {
      this.busy.delete(n.id);
    }
  }

  private async pause(): Promise<void> {
    const t = await this.target(0.5);
    if (t === undefined) return;
    const n = t.node;
    this.busy.add(n.id);
    this.counts.pause++;
    const ms = this.rng.between(PAUSE_MS_MIN, PAUSE_MS_MAX);
    const fault = this.history.faultStart("pause", { node: n.id, leader: t.leader, ms });
    try {
      this.cluster.pause(n);
      await this.sleep(ms);
      this.cluster.resume(n);
      this.history.faultEnd(fault, "pause", { node: n.id });
    } finally {
      this.busy.delete(n.id);
    }
  }

  private async partition(): Promise<void> {
    if (!this.cluster.network.canPartition) return;
    const ids = this.cluster.members().map((n) => n.id);
    if (ids.length < 2) return;
    const shapes: PartitionShape[] = ["isolate-one", "isolate-leader", "majority-minority", "bridge", "asymmetric-out", "asymmetric-in"];
    if (ids.length >= 4) shapes.push("ring");
    const shape = this.rng.pick(shapes);
    const leader = (await this.cluster.leader())?.id;
    const { links, detail } = partitionLinks(shape, ids, leader, this.rng);
    this.counts.partition++;
    const ms = this.rng.between(FAULT_HOLD_MS_MIN, FAULT_HOLD_MS_MAX);
    const fault = this.history.faultStart("partition", { shape, leader: leader ?? null, ...detail, ms, links });
    try {
      await this.cluster.network.setBlocked(links);
      await this.sleep(ms);
    } finally {
      await this.cluster.network.setBlocked([]);
      this.history.faultEnd(fault, "partition", { shape });
    }
  }

  private async loseUnsynced(): Promise<void> {
    const all = this.rng.chance(POWER_LOSS_ALL_PROBABILITY);
    let targets: JepsenNode[];
    let leader = false;
    if (all) targets = this.cluster.running().filter((n) => !this.busy.has(n.id));
    else {
      const t = await this.target(0.5);
      targets = t === undefined ? [] : [t.node];
      leader = t?.leader ?? false;
    }
    if (targets.length === 0) return;
    for (const n of targets) this.busy.add(n.id);
    this.counts["lose-unsynced"]++;
    const fault = this.history.faultStart("lose-unsynced", { nodes: targets.map((n) => n.id), all, leader });
    try {
      // Simultaneously, as a power loss would.
      await Promise.all(targets.map((n) => this.cluster.stop(n, "SIGKILL")));
      const cuts: Record<string, unknown> = {};
      const rolledBack: Record<string, unknown> = {};
      for (const n of targets) {
        if (n.journal === undefined || n.baseline === undefined) continue;
        cuts[`node${n.id}`] = loseUnsynced(n.dataDir, n.baseline, n.journal, this.rng).map((c) => ({ ...c, file: c.file.slice(n.dataDir.length + 1) }));
        const back = rollBackDatabases(n.dataDir, n.sqliteCopies, this.rng);
        rolledBack[`node${n.id}`] = back;
        // A node whose databases went back may answer LOCAL reads from further back than before the
        // crash, legitimately: a new generation, so the checker does not hold it to its old reads.
        if (back.length > 0) this.cluster.newGeneration(n, "SQLite rolled back to an earlier copy");
      }
      await this.sleep(this.rng.between(DOWN_MS_MIN, DOWN_MS_MAX));
      const restarts: Record<string, unknown> = {};
      for (const n of targets) restarts[`node${n.id}`] = await this.restart(n, "lose-unsynced");
      this.history.faultEnd(fault, "lose-unsynced", { cuts, sqliteRolledBack: rolledBack, restarts });
    } finally {
      for (const n of targets) this.busy.delete(n.id);
    }
  }

  /**
   * Starts a stopped node again and watches it for START_REFUSAL_WAIT_MS. One that exits has
   * refused to start: recorded, then repaired by starting it empty (Single Node Failure).
   */
  private async restart(n: JepsenNode, after: string): Promise<Record<string, unknown>> {
    this.cluster.start(n);
    const up = await this.watchStart(n);
    if (up) return { refusedToStart: false };
    const output = n.output.slice(-2000);
    this.history.node(n.id, "refused-to-start", { after, exit: n.lastExit, output });
    return { refusedToStart: true, output, ...(await this.repairByWipe(n, `refused to start after ${after}`)) };
  }

  /**
   * The guide's Single Node Failure procedure: the data directory moved aside, the node started
   * empty with the same id; it must rejoin and catch up. If it does not within
   * REJOIN_CATCH_UP_MS_MAX, that is recorded (the checker reports it) and the node is replaced
   * the way etcd documents: removed, and a new member with a new id added, so the run goes on.
   */
  private async repairByWipe(n: JepsenNode, why: string): Promise<Record<string, unknown>> {
    this.cluster.wipe(n, why);
    this.cluster.start(n);
    this.recovering.add(n.id);
    if (await this.awaitCaughtUp(n, REJOIN_CATCH_UP_MS_MAX)) return { repaired: "rejoined empty and caught up" };
    const s = await this.cluster.status(n);
    this.history.node(n.id, "rejoin-stuck", { why, status: s ?? null, output: n.output.slice(-1500) });
    return { repaired: "replaced", ...(await this.replace(n)) };
  }

  /** Removes `n` from the cluster and adds a new member with a new id in its place. */
  private async replace(n: JepsenNode): Promise<Record<string, unknown>> {
    const removed = await this.changeMembership("removeMember", { nodeId: n.id }).catch((e: Error) => e);
    await this.cluster.stop(n, "SIGKILL", "removed");
    this.recovering.delete(n.id);
    const spare = this.spareId();
    const out: Record<string, unknown> = { removeMember: removed instanceof Error ? `failed: ${removed.message}` : removed };
    if (spare !== undefined) out.replacement = await this.join(spare);
    return out;
  }

  /** True when the node is still running START_REFUSAL_WAIT_MS after its start (or answers /status before). */
  private async watchStart(n: JepsenNode): Promise<boolean> {
    const end = Date.now() + START_REFUSAL_WAIT_MS;
    // Bounded by the deadline.
    while (Date.now() < end) {
      if (n.state !== "running") return false;
      const s = await this.cluster.status(n);
      if (s !== undefined && s.state !== "starting") return true;
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
    return n.state === "running";
  }

  /** Waits (bounded) until a wiped or new node has applied what the leader had committed when it started. */
  private async awaitCaughtUp(n: JepsenNode, ms: number = CATCH_UP_MS_MAX): Promise<boolean> {
    const end = Date.now() + ms;
    let target: number | undefined;
    // Bounded by the deadline.
    while (Date.now() < end) {
      if (target === undefined) {
        const l = await this.cluster.leader();
        if (l !== undefined && l !== n) target = (await this.cluster.status(l))?.commit_index;
      }
      const s = await this.cluster.status(n);
      if (target !== undefined && s !== undefined && s.applied_index >= target) {
        this.recovering.delete(n.id);
        return true;
      }
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
    return false;
  }

  private async corrupt(): Promise<void> {
    // A minority of one: every other member up and whole, no other node recovering.
    if (this.recovering.size > 0) return;
    const members = this.cluster.members();
    if (members.some((m) => m.state !== "running" || this.busy.has(m.id))) return;
    const leader = await this.cluster.leader();
    if (leader === undefined) return;
    const candidates = members.filter((m) => m !== leader);
    if (candidates.length === 0) return;
    const n = this.rng.pick(candidates);
    this.busy.add(n.id);
    this.counts.corrupt++;
    const fault = this.history.faultStart("corrupt", { node: n.id });
    try {
      await this.cluster.stop(n, "SIGKILL");
      const damage = await damageSegments(n.dataDir, this.rng);
      this.cluster.start(n);
      const up = await this.watchStart(n);
      const detected = !up;
      const detail: Record<string, unknown> = { node: n.id, ...(damage ?? { damage: "none: no segment data yet" }), damage: damage?.kind ?? "none", detected };
      if (damage === undefined) detail.mustDetect = false;
      if (!up) {
        detail.exit = n.lastExit;
        detail.output = n.output.slice(-1500);
        Object.assign(detail, await this.repairByWipe(n, `repair after ${damage?.kind ?? "damage"}`));
      }
      this.history.faultEnd(fault, "corrupt", detail);
    } finally {
      this.busy.delete(n.id);
    }
  }

  // ---- membership ----

  private async membershipLoop(endAt: number): Promise<void> {
    // Bounded by the deadline and FAULTS_MAX.
    while (!this.stopped && Date.now() < endAt && this.faults < FAULTS_MAX) {
      await this.sleep(this.rng.between(MEMBERSHIP_PAUSE_MS_MIN, MEMBERSHIP_PAUSE_MS_MAX));
      if (this.stopped || Date.now() >= endAt) break;
      await this.fault("membership");
    }
  }

  /** Admin endpoints: the leader first, then the other running members. */
  private async adminNodes(): Promise<JepsenNode[]> {
    const leader = await this.cluster.leader();
    const running = this.cluster.running();
    return leader === undefined ? running : [leader, ...running.filter((n) => n !== leader)];
  }

  private async membershipStep(): Promise<void> {
    const members = this.cluster.members();
    const spare = this.spareId();
    if (members.length < this.startingSize + EXTRA_VOTERS_MAX && spare !== undefined) await this.addMember(spare);
    else await this.removeMember();
  }

  /** Retries a membership call while the leader says to wait for nodes to catch up (bounded). */
  private async changeMembership(method: string, request: object): Promise<Record<string, unknown>> {
    const end = Date.now() + MEMBERSHIP_STEP_MS_MAX;
    // Bounded by the deadline.
    for (;;) {
      try {
        return await this.cluster.admin(await this.adminNodes(), method, request);
      } catch (e) {
        const code = (e as { code?: number }).code;
        const again = code === grpc.status.UNAVAILABLE || code === grpc.status.DEADLINE_EXCEEDED || (code === grpc.status.FAILED_PRECONDITION && /catch up|another change|uncommitted/i.test((e as Error).message));
        if (!again || Date.now() > end || this.stopped) throw e;
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  }

  /** The configuration as the leader reports it. */
  private async configuration(): Promise<{ voters: number[]; learners: number[] } | undefined> {
    try {
      const r = await this.cluster.admin(await this.adminNodes(), "clusterStatus", {});
      const self = r.self as { nodeId?: number; state?: string };
      const peers = (r.peers ?? []) as Array<{ id: number; voter: boolean }>;
      const voters = peers.filter((p) => p.voter).map((p) => p.id);
      const learners = peers.filter((p) => !p.voter).map((p) => p.id);
      if (self.nodeId !== undefined) (self.state === "learner" ? learners : voters).push(Number(self.nodeId));
      return { voters, learners };
    } catch {
      return undefined;
    }
  }

  private spareId(): number | undefined {
    return [...Array(NODE_IDS_MAX).keys()].map((i) => i + 1).find((id) => !this.cluster.nodes.has(id));
  }

  private async addMember(id: number): Promise<void> {
    this.counts.membership++;
    const fault = this.history.faultStart("membership", { change: "add", node: id });
    const detail = await this.join(id);
    this.history.faultEnd(fault, "membership", { change: "add", ...detail });
  }

  /** A new node: started with --join, added as a learner, caught up, promoted to voter. */
  private async join(id: number): Promise<Record<string, unknown>> {
    const n = await this.cluster.addNode(id);
    this.busy.add(id);
    const detail: Record<string, unknown> = { node: id };
    try {
      // Peers to discover the cluster from: every other member. Discovery takes a cluster id only
      // from a peer holding a log, so a member still rejoining (empty) cannot mislead it, and one
      // that is down is skipped until it answers.
      this.cluster.start(n, { join: true, peers: this.cluster.members().filter((m) => m !== n) });
      const added = await this.changeMembership("addLearner", { address: this.cluster.clusterAddress(n) }).catch((e: Error) => e);
      detail.addLearner = added instanceof Error ? `failed: ${added.message}` : added;
      const config = await this.configuration();
      if (added instanceof Error && !(config?.learners.includes(id) || config?.voters.includes(id))) {
        await this.cluster.stop(n, "SIGKILL", "removed");
        detail.outcome = "not added";
        return detail;
      }
      this.recovering.add(id);
      detail.caughtUp = await this.awaitCaughtUp(n);
      const promoted = await this.changeMembership("promoteMember", { nodeId: id }).catch((e: Error) => e);
      detail.promote = promoted instanceof Error ? `failed: ${promoted.message}` : promoted;
      detail.outcome = promoted instanceof Error ? "learner" : "voter";
      return detail;
    } finally {
      this.busy.delete(id);
    }
  }

  private async removeMember(): Promise<void> {
    const candidates = this.cluster.members().filter((m) => !this.busy.has(m.id) && m.state === "running");
    if (candidates.length === 0 || this.cluster.members().length <= this.startingSize) return;
    const n = this.rng.pick(candidates);
    this.busy.add(n.id);
    this.counts.membership++;
    const fault = this.history.faultStart("membership", { change: "remove", node: n.id });
    const detail: Record<string, unknown> = { change: "remove", node: n.id };
    try {
      const removed = await this.changeMembership("removeMember", { nodeId: n.id }).catch((e: Error) => e);
      detail.removeMember = removed instanceof Error ? `failed: ${removed.message}` : removed;
      // A failed call may still have taken effect (the change committed, the answer was lost, and
      // a retry was told the node "is not a member"): ask the cluster, a few times if it has no leader.
      let config = await this.configuration();
      for (let i = 0; config === undefined && i < CONFIG_TRIES_MAX; i++) {
        await new Promise((r) => setTimeout(r, CONFIG_RETRY_MS));
        config = await this.configuration();
      }
      const refusedAsGone = removed instanceof Error && /is not a member/.test(removed.message);
      const gone = !(removed instanceof Error) || refusedAsGone || (config !== undefined && !config.voters.includes(n.id) && !config.learners.includes(n.id));
      if (gone) {
        await this.cluster.stop(n, "SIGKILL", "removed");
        this.recovering.delete(n.id);
      }
      detail.outcome = gone ? "removed" : "still a member";
    } finally {
      this.busy.delete(n.id);
      this.history.faultEnd(fault, "membership", detail);
    }
  }

  /** Ends every fault: links restored, paused nodes resumed, stopped members started (repaired when they refuse). */
  async heal(): Promise<void> {
    this.stop();
    await this.cluster.network.setBlocked([]);
    for (const n of this.cluster.members()) {
      if (n.state === "paused") this.cluster.resume(n);
    }
    for (const n of this.cluster.members()) {
      if (n.state === "stopped") await this.restart(n, "heal");
    }
    const end = Date.now() + NODE_UP_WAIT_MS;
    // Bounded by the deadline: every member answering /status.
    while (Date.now() < end) {
      const statuses = await Promise.all(this.cluster.members().map((n) => this.cluster.status(n)));
      if (statuses.every((s) => s !== undefined)) break;
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  }
}
