/**
 * Raft traffic between nodes over gRPC (proto/verity/v1/peer.proto), on the cluster port.
 *
 * - Each node dials the configured peer addresses and says `Hello` (its node id, cluster id and
 *   cluster address); the answer carries the peer's node id. Node ids are learned this way, so
 *   `--cluster-peers` lists only addresses. A peer of another cluster is refused and never used.
 * - Messages travel as `RaftBatch`es on one long-lived client stream per peer, encoded and
 *   validated by peer-codec.ts (a bad batch is dropped and logged, never handed to the core).
 * - Delivery is best effort, which Raft tolerates: while a peer is unreachable its messages are
 *   dropped (and counted), and the link redials with a bounded backoff. Every queue is bounded.
 * - With `tls`, both directions use mutual TLS against the cluster CA: a connection without a
 *   certificate from that CA never reaches a handler.
 *
 * Implements the driver's TransportPort.
 */

import * as grpc from "@grpc/grpc-js";
import { checkServerIdentity, type PeerCertificate } from "node:tls";
import { commonName } from "./identity.js";
import { hostPortOf } from "./listen.js";
import { formatHostPort } from "./setting-values.js";
import type { Message } from "../consensus/types.js";
import type { TransportPort } from "../consensus/driver.js";
import type { NodeId } from "../log/types.js";
import { decodeRaftBatch, encodeRaftBatch, type DecodeResult } from "./peer-codec.js";
import { CLUSTER_NODES_MAX } from "../limits.js";
import { protoType } from "./proto.js";
import { grpcMethod, toServiceError, type Plain } from "./grpc-methods.js";
import { ErrorCode, VerityError } from "../errors.js";

/** Batches waiting in one link's stream buffer at most; more are dropped (Raft retransmits). */
export const PEER_LINK_PENDING_BATCHES_MAX = 1024;
/** Redial backoff bounds. */
export const PEER_REDIAL_DELAY_MS_MIN = 50;
export const PEER_REDIAL_DELAY_MS_MAX = 2000;
/** How long `stop` waits for peers to end their streams before closing them. */
export const PEER_SHUTDOWN_GRACE_MS = 500;
/** A Hello that takes longer than this counts as a failed dial. */
export const PEER_HELLO_TIMEOUT_MS = 3000;
/** A link to a node outside the configuration is dropped once down this long (see pruneLinks). */
export const PEER_PRUNE_DOWN_MS = 60_000;
const PEER_PRUNE_INTERVAL_MS = 10_000;

interface Hello {
  nodeId: number;
  clusterId: string;
  clusterAddress: string;
  /** Only in answers: the answering node's last log index. */
  lastIndex?: number;
}

function helloCodec(name: "HelloRequest" | "HelloResponse") {
  const type = protoType(name);
  return {
    serialize: (h: Partial<Hello>): Buffer => Buffer.from(type.encode(type.fromObject(h)).finish()),
    deserialize: (b: Buffer): Hello => {
      const o = type.toObject(type.decode(b), { defaults: true, longs: Number }) as Hello;
      return { nodeId: Number(o.nodeId ?? 0), clusterId: String(o.clusterId ?? ""), clusterAddress: String(o.clusterAddress ?? ""), lastIndex: Number(o.lastIndex ?? 0) };
    },
  };
}

const helloRequest = helloCodec("HelloRequest");
const helloResponse = helloCodec("HelloResponse");

/** The Peer service, defined by hand so batches go through the validating codec. */
export const PEER_SERVICE: grpc.ServiceDefinition = {
  hello: {
    path: "/verity.v1.Peer/Hello",
    requestStream: false,
    responseStream: false,
    requestSerialize: helloRequest.serialize,
    requestDeserialize: helloRequest.deserialize,
    responseSerialize: helloResponse.serialize,
    responseDeserialize: helloResponse.deserialize,
  },
  raft: {
    path: "/verity.v1.Peer/Raft",
    requestStream: true,
    responseStream: false,
    requestSerialize: (messages: readonly Message[]) => Buffer.from(encodeRaftBatch(messages)),
    requestDeserialize: (b: Buffer): DecodeResult => decodeRaftBatch(b),
    responseSerialize: () => Buffer.alloc(0),
    responseDeserialize: () => ({}),
  },
  catchUp: {
    ...grpcMethod("Peer", "CatchUp", "RaftBatch", "CatchUpResult", { requestStream: true }),
    requestSerialize: (messages: readonly Message[]) => Buffer.from(encodeRaftBatch(messages)),
    requestDeserialize: (b: Buffer): DecodeResult => decodeRaftBatch(b),
  },
  forwardAppend: grpcMethod("Peer", "ForwardAppend", "AppendRequest", "AppendResponse"),
  readIndex: grpcMethod("Peer", "ReadIndex", "ReadIndexRequest", "ReadIndexResponse"),
};

/** Client requests one node asks the leader to carry out (proto/verity/v1/peer.proto). */
export interface PeerRequestHandlers {
  /** Appends a client's batch (this node leads) and answers with its AppendResponse. */
  forwardAppend(request: Plain): Promise<Plain>;
  /** A linearizable read point (this node leads). */
  readIndex(): Promise<number>;
  /**
   * Installs one APPEND of a catch-up stream from the leader `from` (this node follows): resolves
   * once it is durable, rejects when the core did not take it (then the stream ends there).
   */
  installCatchUp(message: Extract<Message, { type: "APPEND" }>): Promise<void>;
  /** This node's last log index (the answer to a catch-up stream). */
  lastIndex(): number;
}

/** How long one catch-up stream may take in all. */
export const CATCH_UP_STREAM_MS_MAX = 30 * 60 * 1000;

const PeerClient = grpc.makeGenericClientConstructor(PEER_SERVICE, "Peer");
type UnaryStub = (req: Plain, options: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: Plain) => void) => grpc.ClientUnaryCall;
type PeerClientInstance = InstanceType<typeof PeerClient> & {
  catchUp(options: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: Plain) => void): grpc.ClientWritableStream<readonly Message[]>;
  forwardAppend: UnaryStub;
  readIndex: UnaryStub;
  hello(req: Partial<Hello>, options: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: Hello) => void): grpc.ClientUnaryCall;
  raft(cb: (err: grpc.ServiceError | null) => void): grpc.ClientWritableStream<readonly Message[]>;
};

export interface TransportLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

export interface PeerTransportOptions {
  nodeId: NodeId;
  clusterId: string;
  /** host:port to listen on; port 0 picks one (see `address` after `start`). */
  listen: string;
  /** Other nodes' cluster addresses. */
  peers: readonly string[];
  /** Mutual TLS for both directions; plaintext when absent (loopback only, checked by settings). */
  tls?: { cert: Buffer; key: Buffer; ca: Buffer };
  /**
   * With TLS: the certificate identities (subject CN) with the node role (`[security] nodes`).
   * Only they may call this node's cluster port, and only they are accepted as the server end
   * of a link this node dials.
   */
  nodeIdentities?: readonly string[];
  /** Called with the messages of each valid batch addressed to this node. */
  onMessages: (messages: Message[]) => void;
  /** Serves the requests followers forward to this node when it leads. */
  requests?: PeerRequestHandlers;
  /** This node's last log index, announced in Hello answers. */
  lastIndex?: () => number;
  /**
   * Whether a node id is in this node's latest configuration. A link to a node that is not, and
   * that has been down PEER_PRUNE_DOWN_MS, is dropped (at the link cap, at once). Absent: never.
   */
  isMember?: (id: NodeId) => boolean;
  logger?: TransportLogger;
}

/** Counters for metrics and tests. */
export interface PeerTransportStats {
  sent: number;
  delivered: number;
  droppedNoLink: number;
  droppedBackpressure: number;
  rejectedBatches: number;
  /** Calls refused because the caller's certificate identity has no node role. */
  authFailures: number;
}

class PeerLink {
  client: PeerClientInstance | undefined;
  stream: grpc.ClientWritableStream<readonly Message[]> | undefined;
  peerId: NodeId | undefined;
  /** The peer's last log index as its latest Hello answer said. */
  peerLastIndex = 0;
  /** When the link last went down (undefined while up, and before the first dial). */
  downSince: number | undefined;
  private redialDelay = PEER_REDIAL_DELAY_MS_MIN;
  private timer: NodeJS.Timeout | undefined;
  /** A Hello in flight, cancelled when the link closes. */
  private helloCall: grpc.ClientUnaryCall | undefined;
  closed = false;

  constructor(
    readonly address: string,
    private readonly transport: PeerTransport,
  ) {}

  dial(): void {
    if (this.closed) return;
    this.client?.close();
    this.client = new PeerClient(this.address, this.transport.channelCredentials()) as PeerClientInstance;
    const deadline = new Date(Date.now() + PEER_HELLO_TIMEOUT_MS);
    this.helloCall = this.client.hello(this.transport.hello(), { deadline }, (err, res) => {
      this.helloCall = undefined;
      if (this.closed) return;
      if (err !== null || res === undefined) return this.retry(`hello failed: ${err?.details ?? err?.message ?? "no answer"}`);
      if (res.clusterId !== this.transport.clusterId) {
        this.transport.log("warn", { peer: this.address, peer_cluster_id: res.clusterId }, "peer belongs to another cluster; not using it");
        return this.retry("another cluster", PEER_REDIAL_DELAY_MS_MAX);
      }
      if (res.nodeId === this.transport.nodeId) {
        this.transport.log("warn", { peer: this.address }, "peer address is this node itself; not using it");
        this.closed = true;
        return;
      }
      this.peerId = res.nodeId as NodeId;
      this.peerLastIndex = res.lastIndex ?? 0;
      this.openStream();
    });
  }

  private openStream(): void {
    const stream = this.client!.raft((err) => {
      if (this.stream === stream) this.stream = undefined;
      if (!this.closed) this.retry(`stream ended: ${err?.details ?? "closed by peer"}`);
    });
    this.stream = stream;
    this.downSince = undefined;
    this.redialDelay = PEER_REDIAL_DELAY_MS_MIN;
    this.transport.linkUp(this);
  }

  private retry(why: string, delay = this.redialDelay): void {
    this.stream = undefined;
    this.downSince ??= Date.now();
    this.transport.log("info", { peer: this.address, reason: why, retry_ms: delay }, "peer link down; redialing");
    this.redialDelay = Math.min(PEER_REDIAL_DELAY_MS_MAX, this.redialDelay * 2);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.dial(), delay);
  }

  /** Writes a batch if the stream is up and not backed up; returns false when it was dropped. */
  write(messages: readonly Message[]): boolean {
    const s = this.stream;
    // The stream is in object mode: writableLength counts queued batches.
    if (s === undefined || s.writableLength >= PEER_LINK_PENDING_BATCHES_MAX) return false;
    s.write(messages);
    return true;
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.helloCall?.cancel();
    this.stream?.end();
    this.client?.close();
  }
}

export class PeerTransport implements TransportPort {
  readonly nodeId: NodeId;
  readonly clusterId: string;
  readonly stats: PeerTransportStats = { sent: 0, delivered: 0, droppedNoLink: 0, droppedBackpressure: 0, rejectedBatches: 0, authFailures: 0 };
  private readonly server = new grpc.Server();
  private readonly links = new Map<string, PeerLink>();
  private readonly byId = new Map<NodeId, PeerLink>();
  private pruneTimer: NodeJS.Timeout | undefined;
  private boundAddress = "";

  constructor(private readonly options: PeerTransportOptions) {
    this.nodeId = options.nodeId;
    this.clusterId = options.clusterId;
  }

  /** The address peers reach this node at (with the chosen port when listening on port 0). */
  get address(): string {
    return this.boundAddress;
  }

  /** Node ids of the peers with a working link. */
  connectedPeers(): NodeId[] {
    return [...this.byId.entries()].filter(([, l]) => l.stream !== undefined).map(([id]) => id).sort((a, b) => a - b);
  }

  async start(): Promise<void> {
    this.server.addService(PEER_SERVICE, {
      hello: (call: grpc.ServerUnaryCall<Hello, Hello>, cb: grpc.sendUnaryData<Partial<Hello>>) => this.onHello(call, cb),
      raft: (call: grpc.ServerReadableStream<DecodeResult, unknown>, cb: grpc.sendUnaryData<unknown>) => this.onRaft(call, cb),
      catchUp: (call: grpc.ServerReadableStream<DecodeResult, Plain>, cb: grpc.sendUnaryData<Plain>) => this.onCatchUp(call, cb),
      forwardAppend: (call: grpc.ServerUnaryCall<Plain, Plain>, cb: grpc.sendUnaryData<Plain>) =>
        this.serveRequest(call, cb, (h) => h.forwardAppend(call.request)),
      readIndex: (call: grpc.ServerUnaryCall<Plain, Plain>, cb: grpc.sendUnaryData<Plain>) =>
        this.serveRequest(call, cb, async (h) => ({ index: await h.readIndex() })),
    });
    const port = await new Promise<number>((resolve, reject) =>
      this.server.bindAsync(this.options.listen, this.serverCredentials(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    this.boundAddress = formatHostPort({ host: hostPortOf(this.options.listen).host, port });
    for (const address of this.options.peers) this.addPeer(address);
    this.pruneTimer = setInterval(() => this.pruneLinks(PEER_PRUNE_DOWN_MS), PEER_PRUNE_INTERVAL_MS);
    this.pruneTimer.unref();
  }

  /** The node id announced by the peer at `address`, once its Hello was answered. */
  peerIdAt(address: string): NodeId | undefined {
    return this.links.get(address)?.peerId;
  }

  /** The highest last log index the connected peers announced (0 when none holds entries). */
  peersLastIndex(): number {
    let max = 0;
    for (const link of this.byId.values()) max = Math.max(max, link.peerLastIndex);
    return max;
  }

  /** The address this node dials a peer at, when it has a link to it. */
  addressOf(id: NodeId): string | undefined {
    return this.byId.get(id)?.address;
  }

  /**
   * Drops links to nodes outside this node's latest configuration that have been down at least
   * `downMs` (jepsen-lite bug 4: links to removed members were redialed forever and counted
   * against CLUSTER_NODES_MAX until new members could no longer be dialed). A link that is up is
   * never dropped, so a node still catching up (whose configuration may be old) keeps every
   * working link; a dropped node that comes back dials in and is dialed back as before.
   */
  pruneLinks(downMs: number, now = Date.now()): number {
    const isMember = this.options.isMember;
    if (isMember === undefined) return 0;
    let dropped = 0;
    for (const link of [...this.links.values()]) {
      const id = link.peerId;
      if (id === undefined || link.stream !== undefined || link.downSince === undefined) continue;
      if (now - link.downSince < downMs || isMember(id)) continue;
      this.links.delete(link.address);
      if (this.byId.get(id) === link) this.byId.delete(id);
      link.close();
      dropped++;
      this.log("info", { peer: link.address, peer_id: id }, "dropped the link to a node outside the configuration that has been down");
    }
    return dropped;
  }

  /** Starts dialing a peer address (for members added while running). */
  addPeer(address: string): void {
    if (this.links.has(address) || address === this.boundAddress) return;
    if (this.links.size >= CLUSTER_NODES_MAX) this.pruneLinks(0);
    if (this.links.size >= CLUSTER_NODES_MAX) {
      this.log("warn", { address, links: this.links.size }, `not dialing ${address}: this node already has ${CLUSTER_NODES_MAX} peer links, the most a cluster has`);
      return;
    }
    const link = new PeerLink(address, this);
    this.links.set(address, link);
    link.dial();
  }

  send(messages: readonly Message[]): void {
    const byPeer = new Map<NodeId, Message[]>();
    for (const m of messages) {
      const list = byPeer.get(m.to);
      if (list === undefined) byPeer.set(m.to, [m]);
      else list.push(m);
    }
    for (const [to, batch] of byPeer) {
      const link = this.byId.get(to);
      if (link === undefined) {
        this.stats.droppedNoLink += batch.length;
        continue;
      }
      if (link.write(batch)) this.stats.sent += batch.length;
      else this.stats.droppedBackpressure += batch.length;
    }
  }

  /**
   * Asks peer `to` to carry out a client request (it should be the leader). Rejects with the
   * peer's gRPC status, or UNAVAILABLE when there is no link to it.
   */
  request(to: NodeId, method: "forwardAppend" | "readIndex", request: Plain, timeoutMs: number): Promise<Plain> {
    const client = this.byId.get(to)?.client;
    if (client === undefined) {
      return Promise.reject(new VerityError(ErrorCode.UNAVAILABLE, `no connection to the leader (node ${to}) from this node yet; retry shortly, or use another endpoint`));
    }
    return new Promise<Plain>((resolve, reject) =>
      client[method](request, { deadline: new Date(Date.now() + timeoutMs) }, (err, res) => (err !== null ? reject(err) : resolve(res ?? {}))),
    );
  }

  /**
   * Opens a catch-up stream to peer `to`: `send` writes one batch and resolves when the stream can
   * take more; `finish` ends it and resolves with the follower's last index.
   */
  openCatchUp(to: NodeId): { send(messages: readonly Message[]): Promise<void>; finish(): Promise<number>; cancel(): void } {
    const client = this.byId.get(to)?.client;
    if (client === undefined) throw new VerityError(ErrorCode.UNAVAILABLE, `no connection to node ${to}`);
    let answer: (r: { err: grpc.ServiceError | null; res: Plain | undefined }) => void = () => {};
    const answered = new Promise<{ err: grpc.ServiceError | null; res: Plain | undefined }>((r) => (answer = r));
    const stream = client.catchUp({ deadline: new Date(Date.now() + CATCH_UP_STREAM_MS_MAX) }, (err, res) => answer({ err, res }));
    // Rejects once the follower answers, so a `send` waiting for room stops waiting; only `send` observes it.
    const ended = answered.then(({ err }) => {
      throw err ?? new VerityError(ErrorCode.UNAVAILABLE, "the follower ended the catch-up stream early");
    });
    ended.catch(() => {});
    return {
      send: (messages) =>
        stream.write(messages) ? Promise.resolve() : Promise.race([new Promise<void>((r) => stream.once("drain", () => r())), ended]),
      finish: async () => {
        stream.end();
        const { err, res } = await answered;
        if (err !== null) throw err;
        return Number(res?.lastIndex ?? 0);
      },
      cancel: () => stream.cancel(),
    };
  }

  /** Closes every link, then the server: gracefully for PEER_SHUTDOWN_GRACE_MS, then by force. */
  async stop(): Promise<void> {
    clearInterval(this.pruneTimer);
    for (const link of this.links.values()) link.close();
    // Inbound streams belong to the other nodes' links, which this node cannot close: bound the wait.
    await new Promise<void>((resolve) => {
      const force = setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, PEER_SHUTDOWN_GRACE_MS);
      this.server.tryShutdown(() => {
        clearTimeout(force);
        resolve();
      });
    });
  }

  // ---- used by PeerLink ----

  hello(): Partial<Hello> {
    return { nodeId: this.nodeId, clusterId: this.clusterId, clusterAddress: this.boundAddress, lastIndex: this.options.lastIndex?.() ?? 0 };
  }

  linkUp(link: PeerLink): void {
    const id = link.peerId!;
    const previous = this.byId.get(id);
    if (previous !== undefined && previous !== link) previous.close();
    this.byId.set(id, link);
    this.log("info", { peer: link.address, peer_id: id }, "peer link up");
  }

  log(level: "info" | "warn", fields: object, msg: string): void {
    this.options.logger?.[level]({ node_id: this.nodeId, ...fields }, msg);
  }

  channelCredentials(): grpc.ChannelCredentials {
    return linkCredentials(this.options.tls, this.options.nodeIdentities ?? []);
  }

  private isNode(identity: string): boolean {
    return (this.options.nodeIdentities ?? []).includes(identity);
  }

  /** With TLS, the caller's certificate identity must have the node role; answers and counts a refusal. */
  private refuseUnlessNode(call: { getAuthContext(): { sslPeerCertificate?: PeerCertificate } }): string | undefined {
    if (this.options.tls === undefined) return undefined;
    const identity = commonName(call.getAuthContext().sslPeerCertificate);
    if (identity !== undefined && this.isNode(identity)) return undefined;
    this.stats.authFailures++;
    const why = `certificate identity "${identity ?? "(none)"}" has no node role: only identities in [security] nodes may use the cluster port`;
    this.log("warn", { identity: identity ?? null }, "refused a peer call: " + why);
    return why;
  }

  private serverCredentials(): grpc.ServerCredentials {
    const tls = this.options.tls;
    return tls === undefined
      ? grpc.ServerCredentials.createInsecure()
      : grpc.ServerCredentials.createSsl(tls.ca, [{ private_key: tls.key, cert_chain: tls.cert }], true);
  }

  // ---- handlers ----

  private onHello(call: grpc.ServerUnaryCall<Hello, Hello>, cb: grpc.sendUnaryData<Partial<Hello>>): void {
    const refused = this.refuseUnlessNode(call);
    if (refused !== undefined) {
      cb({ code: grpc.status.PERMISSION_DENIED, details: refused });
      return;
    }
    const req = call.request;
    // Discovery: a node joining with a new data directory asks which cluster this is.
    if (req.clusterId === "") {
      cb(null, this.hello());
      return;
    }
    if (req.clusterId !== this.clusterId) {
      cb({ code: grpc.status.FAILED_PRECONDITION, details: `this node is in cluster ${this.clusterId}, not ${req.clusterId}: check --cluster-peers` });
      return;
    }
    // A node we do not dial yet (a new member) is dialed back at the address it gave.
    if (req.clusterAddress !== "" && !this.byId.has(req.nodeId as NodeId)) this.addPeer(req.clusterAddress);
    cb(null, this.hello());
  }

  /** The request handlers, when the caller is a node and this node serves them; else answers the refusal. */
  private handlersFor(call: { getAuthContext(): { sslPeerCertificate?: PeerCertificate } }, cb: grpc.sendUnaryData<Plain>): PeerRequestHandlers | undefined {
    const refused = this.refuseUnlessNode(call);
    if (refused !== undefined) {
      cb({ code: grpc.status.PERMISSION_DENIED, details: refused });
      return undefined;
    }
    const handlers = this.options.requests;
    if (handlers === undefined) cb({ code: grpc.status.UNAVAILABLE, details: "this node is still starting; retry shortly" });
    return handlers;
  }

  private serveRequest(call: grpc.ServerUnaryCall<Plain, Plain>, cb: grpc.sendUnaryData<Plain>, body: (h: PeerRequestHandlers) => Promise<Plain>): void {
    const handlers = this.handlersFor(call, cb);
    if (handlers === undefined) return;
    body(handlers).then(
      (res) => cb(null, res),
      (e: unknown) => cb(toServiceError(e)),
    );
  }

  /**
   * A leader streams committed entries to this node: each batch must be one APPEND from the same
   * leader to this node; each is installed (durable) before the next is read.
   */
  private onCatchUp(call: grpc.ServerReadableStream<DecodeResult, Plain>, cb: grpc.sendUnaryData<Plain>): void {
    const handlers = this.handlersFor(call, cb);
    if (handlers === undefined) return;
    const install = async (): Promise<void> => {
      let leader: NodeId | undefined;
      // Bounded by the leader's stream, which ends at its commit index (and by its deadline).
      for await (const batch of call as AsyncIterable<DecodeResult>) {
        if (!batch.ok) throw new VerityError(ErrorCode.INVALID_ARGUMENT, `invalid catch-up batch: ${batch.reason}`);
        for (const m of batch.messages) {
          if (m.type !== "APPEND" || m.to !== this.nodeId || (leader !== undefined && m.from !== leader)) {
            throw new VerityError(ErrorCode.INVALID_ARGUMENT, `a catch-up stream carries APPENDs from one leader to this node, not ${m.type} from ${m.from} to ${m.to}`);
          }
          leader = m.from;
          await handlers.installCatchUp(m);
        }
      }
    };
    install().then(
      () => cb(null, { lastIndex: handlers.lastIndex() }),
      (e: unknown) => {
        this.log("warn", { error: e instanceof Error ? e.message : String(e) }, "catch-up stream from the leader stopped");
        cb(toServiceError(e));
      },
    );
  }

  private onRaft(call: grpc.ServerReadableStream<DecodeResult, unknown>, cb: grpc.sendUnaryData<unknown>): void {
    const refused = this.refuseUnlessNode(call);
    if (refused !== undefined) {
      cb({ code: grpc.status.PERMISSION_DENIED, details: refused });
      return;
    }
    call.on("data", (batch: DecodeResult) => {
      if (!batch.ok) {
        this.stats.rejectedBatches++;
        this.log("warn", { reason: batch.reason }, "dropped an invalid Raft batch from a peer");
        return;
      }
      const mine = batch.messages.filter((m) => m.to === this.nodeId);
      if (mine.length === 0) return;
      this.stats.delivered += mine.length;
      this.options.onMessages(mine);
    });
    call.on("end", () => cb(null, {}));
    call.on("error", () => {});
  }
}

/** Credentials for dialing a peer: with TLS, the server end must present a node identity too. */
export function linkCredentials(tls: { cert: Buffer; key: Buffer; ca: Buffer } | undefined, nodeIdentities: readonly string[]): grpc.ChannelCredentials {
  if (tls === undefined) return grpc.credentials.createInsecure();
  return grpc.credentials.createSsl(tls.ca, tls.key, tls.cert, {
    // The server end of a link must be a node too, not merely hold a certificate from the CA.
    checkServerIdentity: (host, cert) => {
      const hostError = checkServerIdentity(host, cert);
      if (hostError !== undefined) return hostError;
      const identity = commonName(cert);
      if (identity !== undefined && nodeIdentities.includes(identity)) return undefined;
      return new Error(`the peer at ${host} presents certificate identity "${identity ?? "(none)"}", which is not in [security] nodes`);
    },
  });
}

/** How often a joining node asks its peers for the cluster id. */
export const DISCOVERY_RETRY_MS = 500;

/**
 * Asks the peers, in turn, which cluster they belong to (a Hello with an empty cluster id), until
 * one answers or `abort` fires. Used by a node joining with a new data directory.
 */
export async function discoverClusterId(
  peers: readonly string[],
  tls: { cert: Buffer; key: Buffer; ca: Buffer } | undefined,
  nodeIdentities: readonly string[],
  abort: AbortSignal | undefined,
  onRetry: (why: string) => void,
): Promise<string> {
  // Bounded by `abort`: a joining node waits for its cluster as long as the operator lets it.
  for (let attempt = 0; ; attempt++) {
    const found = await askPeersForCluster(peers, tls, nodeIdentities, abort, onRetry);
    if (found.cluster !== undefined) return found.cluster.clusterId;
    await new Promise((r) => setTimeout(r, Math.min(DISCOVERY_RETRY_MS * (attempt + 1), PEER_REDIAL_DELAY_MS_MAX)));
  }
}

/** What one round of discovery Hellos found. */
export interface DiscoveryRound {
  /** The first peer that answered holding a log: a formed cluster (a forming node answers with last index 0). */
  readonly cluster: { readonly clusterId: string; readonly address: string; readonly lastIndex: number } | undefined;
  /** How many peers answered at all. */
  readonly answered: number;
}

/**
 * Asks each peer once, in order, which cluster it is in. Only a peer holding a log speaks for a
 * cluster: a node still forming one (or waiting to join) answers with the id it would use and last
 * index 0, which is not yet a cluster anyone can join.
 */
export async function askPeersForCluster(
  peers: readonly string[],
  tls: { cert: Buffer; key: Buffer; ca: Buffer } | undefined,
  nodeIdentities: readonly string[],
  abort: AbortSignal | undefined,
  onRetry: (why: string) => void,
): Promise<DiscoveryRound> {
  const credentials = linkCredentials(tls, nodeIdentities);
  let answered = 0;
  for (const address of peers) {
    if (abort?.aborted === true) throw new Error("stopped while looking for the cluster of --cluster-peers");
    const client = new PeerClient(address, credentials) as PeerClientInstance;
    const answer = await new Promise<Hello | undefined>((resolve) => {
      client.hello({ nodeId: 0, clusterId: "", clusterAddress: "" }, { deadline: new Date(Date.now() + PEER_HELLO_TIMEOUT_MS) }, (err, res) => {
        if (err !== null) onRetry(`${address}: ${err.details || err.message}`);
        resolve(err === null ? res : undefined);
      });
    });
    client.close();
    if (answer === undefined) continue;
    answered++;
    const lastIndex = answer.lastIndex ?? 0;
    if (answer.clusterId !== "" && lastIndex > 0) return { cluster: { clusterId: answer.clusterId, address, lastIndex }, answered };
  }
  return { cluster: undefined, answered };
}
