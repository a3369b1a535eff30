/**
 * One VerityDB node: the data directory, the Raft core and its driver, the peer transport on the
 * cluster port, a ticker, and the client port (gRPC plus HTTP `/health/live`, `/health/ready`,
 * `/status`).
 *
 * Forming a cluster needs no coordination service:
 * - The cluster id of a multi-node cluster is derived from `cluster_name` and the sorted cluster
 *   addresses of its first members (this node's and `--cluster-peers`), so every node computes the
 *   same one; a single node picks a random one.
 * - The first configuration is this node plus the node ids its peers announce in `Hello`. It is
 *   saved in meta/state.json, so later starts need no peers.
 *
 * Time: one tick is TICK_MS. `heartbeat_interval` and `election_timeout_min` become tick counts;
 * the core draws each election timeout from [min, 2 x min), which is the guide's 150ms..300ms.
 */

import { createHash, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import type * as http from "node:http";
import * as grpc from "@grpc/grpc-js";
import type { Logger } from "pino";
import { RaftCore } from "../consensus/raft.js";
import { RaftDriver } from "../consensus/driver.js";
import { startStateFromDisk } from "../consensus/driver-start.js";
import { Xoshiro128StarStar } from "../consensus/prng.js";
import { Role, type MembershipConfig } from "../consensus/types.js";
import { encodeConfig, membershipConfig } from "../consensus/membership.js";
import { RecordKind } from "../log/types.js";
import type { DataDir } from "../log/data-dir.js";
import { ErrorCode, FailedPreconditionError, VerityError } from "../errors.js";
import type { NodeId } from "../log/types.js";
import { INFLIGHT_BYTES_MAX, INFLIGHT_MESSAGES_MAX, APPEND_RPC_BYTES_MAX } from "../limits.js";
import { ClientListener } from "./client-listener.js";
import { MetricsServer, NodeMetrics } from "./metrics.js";
import { ADMIN_SERVICE, AdminError, adminHandlers, type AdminTarget } from "./admin-service.js";
import { EncryptionAdmin } from "./encryption-admin.js";
import { HealthImplementation } from "grpc-health-check";
import type { MembershipChange } from "../consensus/types.js";
import type { LogStoragePort } from "../consensus/driver.js";
import { PeerTransport, askPeersForCluster, discoverClusterId } from "./peer-transport.js";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { formatHostPort } from "./setting-values.js";
import type { Settings } from "./settings.js";
import { forTarget } from "../logger.js";
import { EventStore } from "../projections/event-store.js";
import { EventStateMachine } from "./event-apply.js";
import { DataPlane } from "./data-plane.js";
import { CATCH_UP_LAG_ENTRIES, catchUpPort } from "./catch-up.js";
import { Projector } from "../projections/projector.js";
import { QueryPool } from "../projections/query-pool.js";
import { QUERY_WORKERS_DEFAULT } from "../projections/query-limits.js";
import { TenantAdmin } from "./tenant-admin.js";
import { CLIENT_SERVICE, clientHandlers, type ClientServiceTarget } from "./client-service.js";
import type { ClientGrant } from "./setting-kinds.js";
import { BATCH_BYTES_MAX } from "../limits.js";

/** Length of one consensus tick. */
export const TICK_MS = 10;
/** How long a new cluster waits for every peer's Hello before it keeps waiting with a warning. */
export const BOOTSTRAP_WAIT_LOG_MS = 5_000;
/** How long a stopping leader waits for leadership to move before it stops anyway. */
export const TRANSFER_WAIT_MS = 3_000;
/** How often a new data directory waiting to form a cluster asks its peers whether they hold one. */
const REJOIN_ASK_INTERVAL_MS = 2_000;

/**
 * A new, empty data directory chose a cluster id while its peers were unreachable, and they turn
 * out to hold the log of another cluster: the server opens the directory again with theirs.
 */
export class WrongNewClusterError extends FailedPreconditionError {
  constructor(
    readonly chosen: string,
    readonly clusterId: string,
    readonly peer: string,
  ) {
    super(`this new data directory took cluster id ${chosen} while its peers were unreachable, but ${peer} holds the log of cluster ${clusterId}: rejoining that cluster`);
  }
}

/** How long an admin membership change waits for the new node's Hello and for its entry to commit. */
export const MEMBERSHIP_WAIT_MS = 10_000;

/** The cluster id every first member derives from the same settings. */
export function derivedClusterId(clusterName: string, addresses: readonly string[]): string {
  const h = createHash("sha256").update(`verity-cluster\n${clusterName}\n${[...addresses].sort().join("\n")}`).digest("hex");
  // Shaped as a version-8 (custom) UUID.
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-8${h.slice(13, 16)}-${((parseInt(h.slice(16, 17), 16) & 3) | 8).toString(16)}${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

const ROLE_NAMES: Record<Role, string> = {
  [Role.LEADER]: "leader",
  [Role.FOLLOWER]: "follower",
  [Role.CANDIDATE]: "candidate",
  [Role.PRE_CANDIDATE]: "candidate",
};

/** Room above the largest batch for the rest of an Append request. */
const GRPC_MESSAGE_BYTES_MAX = BATCH_BYTES_MAX + 1024 * 1024;

export class VerityNode implements AdminTarget, ClientServiceTarget {
  private ticker: NodeJS.Timeout | undefined;
  /** Members to make voters again once caught up, after --force-recover (this process only). */
  private readonly promoteAfterRecovery = new Set<number>();
  private promoting = false;
  private readonly lastSeen = new Map<number, number>();
  private peerAuthFailuresCounted = 0;
  /** Called when the node can no longer run (the driver stopped on a failure). */
  onFatal: ((error: unknown) => void) | undefined;

  private constructor(
    private readonly settings: Settings,
    private readonly logger: Logger,
    private readonly consensusLogger: Logger,
    readonly dir: DataDir,
    readonly transport: PeerTransport,
    private driver: RaftDriver | undefined,
    readonly listener: ClientListener,
    readonly metrics: NodeMetrics,
    readonly metricsServer: MetricsServer,
    private readonly health: HealthImplementation,
    readonly tlsEnabled: boolean,
    readonly stateMachine: EventStateMachine,
    readonly dataPlane: DataPlane,
    readonly projector: Projector,
    readonly queryPool: QueryPool,
  ) {
    this.tenants = new TenantAdmin({
      driver: () => this.driver,
      stateMachine,
      projector,
      tenantsMax: settings.limits.tenantsMax,
      notLeader: () => {
        const leader = this.driver?.raft.softState().leader ?? 0;
        return new VerityError(ErrorCode.NOT_LEADER, `node ${this.dir.meta.nodeId} is not the leader: ${leader === 0 ? "no leader is known yet; retry shortly" : `send this to node ${leader}`}`);
      },
    });
  }

  private readonly tenants: TenantAdmin;

  tenantAdmin(): TenantAdmin {
    return this.tenants;
  }

  commitIndex(): number {
    return this.driver?.raft.hardState().commit ?? 0;
  }

  private get applied(): number {
    return this.stateMachine.appliedIndex;
  }

  /** The cluster id the first members of a cluster derive (undefined for a single node: a random one). */
  static clusterIdFor(settings: Settings): string | undefined {
    const peers = settings.clusterPeers.map(formatHostPort);
    return peers.length === 0 ? undefined : derivedClusterId(settings.server.clusterName, [formatHostPort(settings.server.clusterAddress), ...peers]);
  }

  /**
   * The cluster id to open the data directory with. An existing directory keeps the one it has
   * (peers check it in every Hello). A new one joining (`--join`) asks its peers; a new one forming
   * a cluster derives it from the settings, as the other first members do.
   */
  static async clusterIdForDataDir(settings: Settings, abort: AbortSignal | undefined, logger: Logger): Promise<string | undefined> {
    if (existsSync(join(settings.storage.dataDir, "meta", "state.json"))) return undefined;
    if (!settings.join) {
      const derived = VerityNode.clusterIdFor(settings);
      if (derived === undefined) return undefined;
      // A member restarted with an empty data directory (the guide's Single Node Failure) must take
      // the cluster's id from its peers: the one its own --cluster-peers derive differs once the
      // membership has changed (jepsen-lite bug 3). A peer holding a log speaks for a formed
      // cluster; when none does (all new, or none reachable), this node is forming one.
      const round = await askPeersForCluster(settings.clusterPeers.map(formatHostPort), loadTls(settings), settings.security.nodes, abort, () => {});
      if (round.cluster === undefined) return derived;
      logger.info(
        { cluster_id: round.cluster.clusterId, peer: round.cluster.address, peer_last_index: round.cluster.lastIndex },
        "new data directory, and a peer holds a log: rejoining its cluster (it syncs from the leader before it votes)",
      );
      return round.cluster.clusterId;
    }
    let warned = false;
    const id = await discoverClusterId(settings.clusterPeers.map(formatHostPort), loadTls(settings), settings.security.nodes, abort, (why) => {
      if (!warned) logger.warn({ reason: why }, "joining: no peer has answered yet; retrying (check --cluster-peers)");
      warned = true;
    });
    logger.info({ cluster_id: id }, "joining the cluster of --cluster-peers");
    return id;
  }

  /**
   * Starts the node on an opened data directory (which it closes on `stop`). `abort` ends a
   * start that is still waiting for its peers (a SIGTERM while a new cluster forms); then
   * everything opened so far is closed again and the call throws.
   */
  static async start(settings: Settings, root: Logger, dir: DataDir, abort?: AbortSignal): Promise<VerityNode> {
    const logger = forTarget(root, "verity_server");
    const clusterAddress = formatHostPort(settings.server.clusterAddress);
    const peers = settings.clusterPeers.map(formatHostPort);
    const tls = loadTls(settings);
    const nodeId = dir.meta.nodeId as NodeId;
    // Callbacks below reach the node once it exists (messages or requests arriving before are dropped).
    const ref: { node?: VerityNode } = {};
    const transport = new PeerTransport({
      nodeId, clusterId: dir.meta.clusterId, listen: clusterAddress, peers, tls, nodeIdentities: settings.security.nodes,
      onMessages: (messages) => ref.node?.receive(messages),
      logger: forTarget(root, "verity_cluster"),
      requests: {
        forwardAppend: async (request) => ({ ...(await started().dataPlane.appendForwarded(request)) }),
        readIndex: () => started().dataPlane.readIndex(),
        installCatchUp: (m) => started().installCatchUp(m),
        lastIndex: () => dir.log.lastIndex,
      },
      lastIndex: () => dir.log.lastIndex,
      isMember: (id) => {
        const config = ref.node?.driver?.raft.currentConfig();
        return config === undefined || config.voters.includes(id) || config.learners.includes(id);
      },
    });
    const started = (): VerityNode => {
      if (ref.node === undefined) throw new VerityError(ErrorCode.UNAVAILABLE, "the node is still starting; retry shortly");
      return ref.node;
    };
    const store = await EventStore.open(settings.storage.dataDir, { encryption: dir.encryption, logger: forTarget(root, "verity_projections") });
    if (store.appliedPosition > dir.log.lastIndex) {
      store.close();
      throw new FailedPreconditionError(
        `the event index (${store.path}) has applied up to position ${store.appliedPosition}, beyond the log's last index ${dir.log.lastIndex}: ` +
          "it belongs to another copy of this data directory. Stop the node, move the state/ directory aside, and start again to rebuild it from the log",
      );
    }
    const consensusLogger = forTarget(root, "verity_consensus");
    const metrics = new NodeMetrics();
    const stateMachine = new EventStateMachine(
      store,
      consensusLogger,
      (d) => {
        if (d.kind === "appended") {
          metrics.appendedEvents.inc(d.events.length);
          ref.node?.projector.wake(d.tenant);
        }
      },
      (tenant) => ref.node?.projector.wake(tenant),
    );
    const dataPlane = new DataPlane({
      driver: () => ref.node?.driver,
      transport,
      stateMachine,
      log: dir.log,
      limits: { recordBytesMax: settings.limits.recordBytesMax, batchBytesMax: settings.limits.batchBytesMax },
      nodeId,
      onForwarded: () => metrics.forwardedWrites.inc(),
      streamsPerTenantMax: settings.limits.streamsPerTenantMax,
    });
    const projector = new Projector({
      store,
      dataDir: settings.storage.dataDir,
      load: (rows) => dataPlane.load(rows),
      checkpointInterval: settings.projections.checkpointIntervalEntries,
      logger: forTarget(root, "verity_projections"),
      onProgress: (tenant, position) => metrics.appliedPosition.set({ tenant }, position),
      encryption: dir.encryption,
    });
    // `verity-admin encryption rotate` re-wraps the SQLite key sidecars after the log's headers.
    dir.registerRewrap("sqlite", (encryption) => projector.rewrapKeySidecars(encryption));
    await transport.start();
    const grpcServer = new grpc.Server({ "grpc.max_receive_message_length": GRPC_MESSAGE_BYTES_MAX });
    // Services are registered before any connection arrives; they reach the node once it exists.
    const health = new HealthImplementation({ "": "NOT_SERVING" });
    health.addToServer(grpcServer);
    grpcServer.addService(ADMIN_SERVICE, adminHandlers(lateAdminTarget(() => ref.node), () => metrics.authFailures.inc({ port: "client" })));
    grpcServer.addService(
      CLIENT_SERVICE,
      clientHandlers(() => ref.node, {
        onAuthFailure: () => metrics.authFailures.inc({ port: "client" }),
        onCall: (method, code, seconds, events) => {
          const status = grpc.status[code] ?? String(code);
          if (method === "append") metrics.writeSeconds.observe({ status }, seconds);
          else metrics.querySeconds.observe({ method, status }, seconds);
          if (events > 0 && method !== "append") metrics.readEvents.inc({ method }, events);
        },
      }),
    );
    const listener = new ClientListener({
      onAuthFailure: () => metrics.authFailures.inc({ port: "client" }),
      listen: formatHostPort(settings.server.bindAddress),
      tls: tls === undefined ? undefined : { ...tls, requireClientCert: settings.security.requireClientCert },
      grpcServer,
      http: (req, res) => {
        if (ref.node === undefined) {
          res.writeHead(503).end();
          return;
        }
        ref.node.serveHttp(req, res);
      },
    });
    await listener.start();
    const metricsServer = new MetricsServer(metrics, formatHostPort(settings.telemetry.metricsAddress), () => ref.node?.refreshGauges());
    await metricsServer.start();
    const queryPool = new QueryPool({ workers: QUERY_WORKERS_DEFAULT, timeoutMs: settings.limits.queryMsMax, rowsMax: settings.limits.queryRowsMax });
    const node = new VerityNode(settings, logger, consensusLogger, dir, transport, undefined, listener, metrics, metricsServer, health, tls !== undefined, stateMachine, dataPlane, projector, queryPool);
    ref.node = node;
    logger.info(
      {
        node_id: nodeId, cluster_id: dir.meta.clusterId, client_address: listener.address, cluster_address: transport.address,
        metrics_address: metricsServer.address, peers,
      },
      "listening",
    );
    try {
      const bootstrap = await node.bootstrapConfig(peers.length, abort);
      if (settings.forceRecover) await node.forceRecover(bootstrap);
      await node.startConsensus(bootstrap);
      node.projector.wakeAll();
    } catch (e) {
      await node.stop().catch(() => {});
      throw e;
    }
    return node;
  }

  /** The first configuration: saved in meta, or this node plus every peer's announced id. */
  private async bootstrapConfig(peerCount: number, abort: AbortSignal | undefined): Promise<MembershipConfig> {
    const saved = this.dir.meta.membership;
    if (saved !== undefined) return membershipConfig(saved.voters as NodeId[], saved.learners as NodeId[]);
    if (this.settings.join) {
      // Not a member yet: no vote, no campaign, until the leader adds this node and its log says so.
      await this.dir.saveCommittedMembership(0, [], []);
      this.logger.info({}, "waiting to be added to the cluster (verity-admin member add / the Admin API's AddLearner)");
      return membershipConfig([]);
    }
    const self = this.dir.meta.nodeId as NodeId;
    const started = Date.now();
    let warned = false;
    let asked = started;
    // Waits until every peer answers, or the start is aborted (SIGTERM); says what it waits for.
    while (this.transport.connectedPeers().length < peerCount) {
      if (abort?.aborted === true) throw new FailedPreconditionError("stopped before the cluster formed: not every peer in --cluster-peers answered");
      // A new, empty data directory whose peers were all unreachable when it chose its cluster id
      // derived one, which is wrong if they hold a cluster's log: their Hellos refuse it forever
      // (jepsen-lite bug 3b). Ask them now and then; once one answers holding a log of another
      // cluster, start again as a member of that cluster.
      if (this.dir.log.lastIndex === 0 && Date.now() - asked >= REJOIN_ASK_INTERVAL_MS) {
        asked = Date.now();
        const round = await askPeersForCluster(this.settings.clusterPeers.map(formatHostPort), loadTls(this.settings), this.settings.security.nodes, abort, () => {});
        if (round.cluster !== undefined && round.cluster.clusterId !== this.dir.meta.clusterId) {
          throw new WrongNewClusterError(this.dir.meta.clusterId, round.cluster.clusterId, round.cluster.address);
        }
      }
      if (!warned && Date.now() - started > BOOTSTRAP_WAIT_LOG_MS) {
        warned = true;
        this.logger.warn(
          { connected: this.transport.connectedPeers(), expected: peerCount },
          "forming a new cluster: waiting for every peer in --cluster-peers to answer (check that they run and are reachable)",
        );
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    const config = membershipConfig([self, ...this.transport.connectedPeers()]);
    // Peers holding entries: this node was a member before and lost its disk. It must not vote
    // before it holds what they hold (it may have forgotten a vote, or entries a commit counted on).
    const peersHold = this.transport.peersLastIndex();
    if (peersHold > 0 && this.dir.log.lastIndex === 0) {
      await this.dir.saveRecoverUntil(peersHold);
      this.logger.warn(
        { peers_last_index: peersHold },
        "this node's data directory is new but its peers hold a log: rejoining an existing cluster; it syncs from the leader and votes again once it holds their last index",
      );
    }
    await this.dir.saveCommittedMembership(0, config.voters, config.learners);
    this.logger.info({ voters: config.voters }, "new cluster formed");
    return config;
  }

  /**
   * The guide's "Majority Failure" procedure (`--force-recover`): this node, the survivor with the
   * highest commit index, continues the cluster alone. It appends a configuration in which it is
   * the only voter and every other member is a learner, and records it as committed: the quorum
   * that could confirm anything else is gone. The other members, started again, get its log as
   * learners and are promoted back to voters once caught up (`promoteAfterRecovery`). Entries that
   * only the lost members held are lost.
   */
  async forceRecover(bootstrap: MembershipConfig): Promise<void> {
    if (this.dir.log.lastIndex === 0) {
      throw new FailedPreconditionError("--force-recover needs this node's old data directory, and this one has an empty log: start the surviving node with the highest commit index with it");
    }
    const self = this.dir.meta.nodeId as NodeId;
    const start = await startStateFromDisk(this.dir, bootstrap, this.stateMachine.store.appliedPosition);
    const before = start.membership[start.membership.length - 1]!.config;
    const others = [...before.voters, ...before.learners].filter((id) => id !== self);
    const config = membershipConfig([self], others);
    const log = this.dir.log;
    const term = Math.max(1, this.dir.meta.term);
    if (term !== this.dir.meta.term) await this.dir.saveTermAndVote(term, 0);
    const index = log.lastIndex + 1;
    await log.append([{ term, index, kind: RecordKind.MEMBERSHIP, tenant: "", payload: encodeConfig(config) }]);
    await this.dir.saveCommittedMembership(index, config.voters, config.learners);
    for (const id of others) this.promoteAfterRecovery.add(id);
    this.logger.warn(
      { previous_voters: before.voters, previous_learners: before.learners, learners: others, index },
      "force-recover: this node continues the cluster as its only voter; every entry in its log counts as committed. " +
        "Start the other members one at a time: each syncs from this node as a learner and becomes a voter again once caught up",
    );
  }

  /** After --force-recover: promotes the old members back to voters, one at a time, once caught up. */
  private promoteRecoveredMembers(): void {
    const d = this.driver;
    if (this.promoting || this.promoteAfterRecovery.size === 0 || d === undefined) return;
    const s = d.raft.status();
    if (s.role !== Role.LEADER) return;
    const ready = s.progress.find((p) => this.promoteAfterRecovery.has(p.id) && s.config.learners.includes(p.id) && p.match >= s.commit);
    if (ready === undefined) return;
    this.promoting = true;
    this.changeMembership({ type: "PROMOTE_LEARNER", node: ready.id }).then(
      () => {
        this.promoteAfterRecovery.delete(ready.id);
        this.logger.info({ node: ready.id }, "force-recover: a returning member caught up and is a voter again");
      },
      (e: unknown) => this.logger.warn({ node: ready.id, error: e instanceof Error ? e.message : String(e) }, "force-recover: promoting a returning member failed; retrying"),
    ).finally(() => {
      this.promoting = false;
    });
  }

  private async startConsensus(bootstrap: MembershipConfig): Promise<void> {
    const c = this.settings.consensus;
    const heartbeatTicks = Math.max(1, Math.round(c.heartbeatIntervalMs / TICK_MS));
    const electionTicks = Math.max(heartbeatTicks + 1, Math.round(c.electionTimeoutMsMin / TICK_MS));
    const core = new RaftCore(
      {
        id: this.dir.meta.nodeId as NodeId, electionTicks, heartbeatTicks, preVote: true, checkQuorum: true,
        entriesPerRpcMax: c.entriesPerRpcMax, appendRpcBytesMax: APPEND_RPC_BYTES_MAX, catchUpLagEntries: CATCH_UP_LAG_ENTRIES,
        inflightMessagesMax: INFLIGHT_MESSAGES_MAX, inflightBytesMax: INFLIGHT_BYTES_MAX,
        prng: new Xoshiro128StarStar(Number.parseInt(randomUUID().slice(0, 8), 16)),
        onEvent: (line) => this.consensusLogger.info({}, line),
      },
      await startStateFromDisk(this.dir, bootstrap, this.stateMachine.store.appliedPosition),
    );

    const m = this.metrics;
    this.driver = new RaftDriver(core, {
      log: measuredLog(this.dir.log, m),
      clock: performance,
      hardState: this.dir,
      transport: this.transport,
      catchUp: catchUpPort({
        nodeId: this.dir.meta.nodeId as NodeId,
        log: this.dir.log,
        transport: this.transport,
        leaderTerm: () => (core.softState().role === Role.LEADER ? core.hardState().term : undefined),
        entriesPerBatch: c.entriesPerRpcMax,
        bytesPerBatch: APPEND_RPC_BYTES_MAX,
        onStreamed: (to, entries, bytes, ms) => {
          m.catchUpStreams.inc({ result: "ok" });
          m.catchUpEntries.inc(entries);
          this.consensusLogger.info({ peer: to, entries, bytes, ms: Math.round(ms) }, "caught up a follower by streaming committed entries");
        },
        onFailed: (to, reason) => {
          m.catchUpStreams.inc({ result: "failed" });
          this.consensusLogger.warn({ peer: to, reason }, "streaming catch-up failed; replicating entry by entry instead");
        },
      }),
      stateMachine: {
        apply: (entries) => {
          this.stateMachine.apply(entries);
          m.commits.inc(entries.length);
          m.appliedPosition.set(this.applied);
        },
      },
      observer: {
        onSoftState: (s) => {
          m.leader.set(s.leader);
          if (s.role === Role.CANDIDATE) m.elections.inc();
          this.consensusLogger.info({ state: ROLE_NAMES[s.role], leader: s.leader, view: core.hardState().term }, "role changed");
        },
        onHardState: (h) => {
          m.view.set(h.term);
          this.dataPlane.onCommitted(h.commit);
        },
        onReadStates: (states) => this.dataPlane.onReadStates(states),
        onPhase: (phase, ms) => m.consensusSeconds.observe({ phase }, ms / 1000),
        onFailure: (e) => {
          // A node that cannot persist must not go on answering as if healthy: stop it, so that a
          // supervisor restarts it and it recovers from what is really on disk.
          this.logger.error({ error: e instanceof Error ? e.message : String(e) }, "consensus stopped: a disk or port failed; exiting so the node restarts from disk");
          this.onFatal?.(e);
        },
      },
    });
    let ticks = 0;
    let serving = false;
    this.ticker = setInterval(() => {
      this.driver?.tick();
      // grpc.health.v1 follows /health/ready, checked every 10 ticks.
      if (ticks % 100 === 0) this.promoteRecoveredMembers();
      if (++ticks % 10 === 0 && this.ready() !== serving) {
        serving = !serving;
        this.health.setStatus("", serving ? "SERVING" : "NOT_SERVING");
      }
    }, TICK_MS);
  }

  /** One APPEND of a leader's catch-up stream: stepped like any message, then waited for until durable. */
  async installCatchUp(m: Extract<import("../consensus/types.js").Message, { type: "APPEND" }>): Promise<void> {
    const d = this.driver;
    if (d === undefined) throw new VerityError(ErrorCode.UNAVAILABLE, "the node is still starting; retry shortly");
    this.receive([m]);
    await d.idle();
    const last = m.entries[m.entries.length - 1];
    if (last !== undefined && (this.dir.log.lastIndex < last.index || this.dir.log.termAt(last.index) !== last.term)) {
      throw new VerityError(ErrorCode.FAILED_PRECONDITION, `node ${this.dir.meta.nodeId} did not take entries up to ${last.index} (view ${d.raft.hardState().term}, leader ${d.raft.softState().leader}); the leader replicates entry by entry instead`);
    }
  }

  private receive(messages: readonly import("../consensus/types.js").Message[]): void {
    const now = Date.now();
    for (const m of messages) {
      this.lastSeen.set(m.from, now);
      this.driver?.step(m);
    }
  }

  /** Brings the gauges that are cheaper to read than to track up to date (called before a scrape). */
  refreshGauges(): void {
    const s = this.driver?.raft.status();
    if (s === undefined) return;
    this.metrics.view.set(s.term);
    this.metrics.leader.set(s.leader);
    this.metrics.activeTenants.set(this.stateMachine.store.tenantCount());
    this.metrics.followerLag.reset();
    if (s.role === Role.LEADER) {
      for (const p of s.progress) if (p.id !== s.id) this.metrics.followerLag.set({ peer: String(p.id) }, Math.max(0, s.lastIndex - p.match));
    }
    const failures = this.transport.stats.authFailures;
    this.metrics.authFailures.inc({ port: "cluster" }, failures - this.peerAuthFailuresCounted);
    this.peerAuthFailuresCounted = failures;
  }

  // ---------------------------------------------------------------- AdminTarget

  private encryptionAdminValue: EncryptionAdmin | undefined;

  /** `encryption status` / `encryption rotate` for this node's files (src/server/encryption-admin.ts). */
  encryptionAdmin(): EncryptionAdmin {
    this.encryptionAdminValue ??= new EncryptionAdmin(this.dir, this.settings.encryption, this.logger);
    return this.encryptionAdminValue;
  }

  get adminIdentities(): readonly string[] {
    return this.settings.security.admins;
  }

  get clientGrants(): readonly ClientGrant[] {
    return this.settings.security.clients;
  }

  identityOf(peer: string): string | undefined {
    return this.listener.identityOf(peer);
  }

  nodeStatus(): Record<string, unknown> {
    const s = this.driver?.raft.status();
    const segments = this.dir.log.segments();
    return {
      nodeId: this.dir.meta.nodeId,
      state: s === undefined ? "starting" : ROLE_NAMES[s.role],
      view: s?.term ?? this.dir.meta.term,
      commitIndex: s?.commit ?? 0,
      appliedIndex: this.applied,
      leaderId: s?.leader ?? 0,
      clientAddress: this.listener.address,
      clusterAddress: this.transport.address,
      syncMode: this.dir.log.mode,
      diskBytes: segments.reduce((n, seg) => n + seg.bytes, 0),
      segments: segments.length,
      readOnly: this.stateMachine.store.readOnly() !== undefined,
      readOnlyReason: this.stateMachine.store.readOnly() ?? "",
    };
  }

  clusterStatus(): Record<string, unknown> {
    const s = this.driver?.raft.status();
    const peers = s === undefined ? [] : [...s.config.voters, ...s.config.learners].filter((id) => id !== s.id);
    return {
      self: this.nodeStatus(),
      peers: peers.map((id) => ({
        id,
        address: this.transport.addressOf(id) ?? "",
        state: id === s!.leader ? "leader" : s!.config.learners.includes(id) ? "learner" : "follower",
        voter: s!.config.voters.includes(id),
        matchIndex: s!.progress.find((p) => p.id === id)?.match ?? 0,
        lastSeenMs: this.lastSeen.get(id) ?? 0,
      })),
    };
  }

  private requireLeader(): RaftDriver {
    const d = this.driver;
    const s = d?.raft.status();
    if (d === undefined || s === undefined || s.role !== Role.LEADER) {
      const leader = s?.leader ?? 0;
      const where = leader === 0 ? "no leader is known yet; retry shortly" : `the leader is node ${leader} (${this.transport.addressOf(leader as NodeId) ?? "address unknown"}); send this there`;
      throw new AdminError("NOT_LEADER", `node ${this.dir.meta.nodeId} is not the leader: ${where}`);
    }
    return d;
  }

  async transferLeadership(to: number): Promise<number> {
    const d = this.requireLeader();
    const s = d.raft.status();
    const target = to !== 0
      ? to
      : s.progress.filter((p) => p.id !== s.id && s.config.voters.includes(p.id)).sort((a, b) => b.match - a.match)[0]?.id;
    if (target === undefined) throw new AdminError("FAILED_PRECONDITION", "there is no other voter to hand leadership to");
    const accepted = d.input((core) => core.transferLeader(target as NodeId));
    if (!accepted.ok) throw new AdminError(accepted.code, accepted.message);
    const until = Date.now() + TRANSFER_WAIT_MS;
    // Bounded by TRANSFER_WAIT_MS.
    while (Date.now() < until) {
      const now = d.raft.status();
      if (now.role !== Role.LEADER && now.leader !== 0 && now.leader !== s.id) return now.leader;
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new AdminError("UNAVAILABLE", `leadership did not move to node ${target} within ${TRANSFER_WAIT_MS} ms; check that it is up and caught up`);
  }

  async changeMembership(change: MembershipChange | { type: "ADD_LEARNER_AT"; address: string }): Promise<Record<string, unknown>> {
    const d = this.requireLeader();
    let resolved: MembershipChange;
    if (change.type === "ADD_LEARNER_AT") {
      this.transport.addPeer(change.address);
      const until = Date.now() + MEMBERSHIP_WAIT_MS;
      let id = this.transport.peerIdAt(change.address);
      // Bounded by MEMBERSHIP_WAIT_MS.
      while (id === undefined && Date.now() < until) {
        await new Promise((r) => setTimeout(r, 50));
        id = this.transport.peerIdAt(change.address);
      }
      if (id === undefined) {
        throw new AdminError("UNAVAILABLE", `no VerityDB node of this cluster answered at ${change.address} within ${MEMBERSHIP_WAIT_MS} ms: start it with --cluster-peers naming this cluster, then retry`);
      }
      resolved = { type: "ADD_LEARNER", node: id };
    } else {
      resolved = change;
    }
    const result = d.input((core) => core.changeMembership(resolved));
    if (!result.ok) throw new AdminError(result.code, result.message);
    const until = Date.now() + MEMBERSHIP_WAIT_MS;
    // Bounded by MEMBERSHIP_WAIT_MS.
    while (d.raft.status().commit < result.index) {
      if (Date.now() > until) throw new AdminError("UNAVAILABLE", `the membership change at index ${result.index} did not commit within ${MEMBERSHIP_WAIT_MS} ms`);
      await new Promise((r) => setTimeout(r, 20));
    }
    const config = d.raft.currentConfig();
    return { index: result.index, voters: config.voters, learners: config.learners };
  }

  /** The guide's /status JSON. */
  status(): object {
    const d = this.driver;
    const s = d?.raft.status();
    const leader = s?.leader ?? 0;
    const members = s === undefined ? [] : [...s.config.voters, ...s.config.learners].filter((id) => id !== s.id);
    return {
      node_id: this.dir.meta.nodeId,
      state: s === undefined ? "starting" : ROLE_NAMES[s.role],
      view: s?.term ?? this.dir.meta.term,
      commit_index: s?.commit ?? 0,
      applied_index: this.applied,
      leader_id: leader,
      read_only: this.stateMachine.store.readOnly() !== undefined,
      cluster: {
        peers: members.map((id) => {
          const seen = this.lastSeen.get(id);
          return {
            id,
            state: id === leader ? "leader" : s!.config.learners.includes(id) ? "learner" : "follower",
            last_seen: seen === undefined ? null : new Date(seen).toISOString(),
          };
        }),
      },
    };
  }

  /** Ready: a leader is known and everything known committed is applied. */
  ready(): boolean {
    const s = this.driver?.raft.status();
    return s !== undefined && s.leader !== 0 && this.applied >= s.commit;
  }

  serveHttp(req: http.IncomingMessage, res: http.ServerResponse): void {
    const path = (req.url ?? "").split("?")[0];
    const send = (code: number, body: object): void => {
      res.writeHead(code, { "content-type": "application/json" });
      res.end(JSON.stringify(body) + "\n");
    };
    if (req.method !== "GET") return send(405, { error: "only GET is served here" });
    if (path === "/health/live") return send(200, { status: "live" });
    if (path === "/health/ready") {
      return this.ready() ? send(200, { status: "ready" }) : send(503, { status: "not ready", reason: "no leader known yet, or applying committed entries" });
    }
    if (path === "/status") return send(200, this.status());
    return send(404, { error: `no such path: ${path}; try /health/live, /health/ready or /status` });
  }

  /** A leader hands leadership to a caught-up voter first; then everything stops. */
  async stop(): Promise<void> {
    const d = this.driver;
    if (d !== undefined && d.raft.softState().role === Role.LEADER) {
      const s = d.raft.status();
      const target = s.progress.filter((p) => p.id !== s.id && s.config.voters.includes(p.id)).sort((a, b) => b.match - a.match)[0];
      if (target !== undefined) {
        d.input((core) => core.transferLeader(target.id));
        const until = Date.now() + TRANSFER_WAIT_MS;
        // Bounded by TRANSFER_WAIT_MS.
        while (Date.now() < until && d.raft.softState().role === Role.LEADER) await new Promise((r) => setTimeout(r, 20));
        this.logger.info({ to: target.id, transferred: d.raft.softState().role !== Role.LEADER }, "leadership transfer before shutdown");
      }
    }
    clearInterval(this.ticker);
    await d?.stop();
    this.stateMachine.failPending("the node is stopping before the append committed; its outcome is unknown: retry with the same request id on another endpoint");
    this.dataPlane.stop();
    await this.listener.stop();
    await this.metricsServer.stop();
    await this.transport.stop();
    this.projector.close();
    await this.queryPool.close();
    this.stateMachine.store.close();
    await this.encryptionAdminValue?.close();
    await this.dir.close();
  }
}

function loadTls(settings: Settings): { cert: Buffer; key: Buffer; ca: Buffer } | undefined {
  const s = settings.security;
  if (s.tlsCert === undefined || s.tlsKey === undefined) return undefined;
  if (s.tlsCa === undefined) {
    throw new FailedPreconditionError(
      "[security] tls_cert and tls_key are set but tls_ca is not: nodes authenticate each other with mutual TLS, " +
        "so set tls_ca to the CA certificate that signed the cluster's certificates",
    );
  }
  return { cert: readFileSync(s.tlsCert), key: readFileSync(s.tlsKey), ca: readFileSync(s.tlsCa) };
}

/** The log as the driver sees it, counting entries, bytes and append latency. */
function measuredLog(log: LogStoragePort, m: NodeMetrics): LogStoragePort {
  return {
    get firstIndex() {
      return log.firstIndex;
    },
    get lastIndex() {
      return log.lastIndex;
    },
    termRuns: () => log.termRuns(),
    read: (from, to, maxBytes) => log.read(from, to, maxBytes),
    truncateSuffix: (from, committed) => log.truncateSuffix(from, committed),
    append: async (entries) => {
      const started = performance.now();
      await log.append(entries);
      m.logAppendSeconds.observe((performance.now() - started) / 1000);
      m.logEntries.inc(entries.length);
      m.logBytes.inc(entries.reduce((n, e) => n + e.payload.length, 0));
    },
  };
}

/** An AdminTarget that reaches the node once it exists (the gRPC services are registered before). */
function lateAdminTarget(node: () => VerityNode | undefined): AdminTarget {
  const get = (): VerityNode => {
    const n = node();
    if (n === undefined) throw new AdminError("UNAVAILABLE", "the node is still starting; retry shortly");
    return n;
  };
  return {
    identityOf: (peer) => node()?.identityOf(peer),
    get adminIdentities() {
      return node()?.adminIdentities ?? [];
    },
    get tlsEnabled() {
      return node()?.tlsEnabled ?? true;
    },
    nodeStatus: () => get().nodeStatus(),
    clusterStatus: () => get().clusterStatus(),
    transferLeadership: (to) => get().transferLeadership(to),
    changeMembership: (change) => get().changeMembership(change),
    tenantAdmin: () => get().tenantAdmin(),
    commitIndex: () => get().commitIndex(),
    encryptionAdmin: () => get().encryptionAdmin(),
  };
}
