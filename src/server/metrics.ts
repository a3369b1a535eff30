/**
 * Prometheus metrics (prom-client) with the operations guide's names, served as GET /metrics on
 * `telemetry.metrics_address`. Each metric is registered when the part of the node that feeds it
 * exists; the guide's query, write and tenant metrics join with those features.
 */

import * as http from "node:http";
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import { listenOn } from "./listen.js";

export class NodeMetrics {
  readonly registry = new Registry();
  readonly logEntries = new Counter({ name: "verity_log_entries_total", help: "Log entries written to this node's log", registers: [this.registry] });
  readonly logBytes = new Counter({ name: "verity_log_bytes_total", help: "Payload bytes written to this node's log", registers: [this.registry] });
  readonly logAppendSeconds = new Histogram({
    name: "verity_log_append_duration_seconds",
    help: "Time from handing entries to the log until they were durable (fsync latency included)",
    buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
    registers: [this.registry],
  });
  readonly commits = new Counter({ name: "verity_consensus_commits_total", help: "Committed entries applied on this node", registers: [this.registry] });
  readonly view = new Gauge({ name: "verity_consensus_view", help: "Current consensus view (Raft term)", registers: [this.registry] });
  readonly leader = new Gauge({ name: "verity_consensus_leader", help: "Node id of the current leader (0: none known)", registers: [this.registry] });
  readonly consensusSeconds = new Histogram({
    name: "verity_consensus_duration_seconds",
    help: "Time per Ready batch of the consensus loop, by phase: persist (term, vote and entries durable before messages leave) and apply",
    labelNames: ["phase"],
    buckets: [0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5],
    registers: [this.registry],
  });
  readonly elections = new Counter({ name: "verity_consensus_elections_total", help: "Elections this node started (became candidate)", registers: [this.registry] });
  readonly followerLag = new Gauge({
    name: "verity_consensus_follower_lag_entries",
    help: "On the leader: entries each member's log trails the leader's last index",
    labelNames: ["peer"],
    registers: [this.registry],
  });
  readonly writeSeconds = new Histogram({
    name: "verity_write_duration_seconds",
    help: "Append calls on this node, from arrival to answer (forwarding and commit included), by gRPC status",
    labelNames: ["status"],
    buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });
  readonly querySeconds = new Histogram({
    name: "verity_query_duration_seconds",
    help: "Read calls on this node (Read, ReadAll), read point included, by method and gRPC status",
    labelNames: ["method", "status"],
    buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [this.registry],
  });
  readonly appendedEvents = new Counter({ name: "verity_events_appended_total", help: "Events appended to streams (applied on this node)", registers: [this.registry] });
  readonly readEvents = new Counter({ name: "verity_events_read_total", help: "Events returned by reads on this node", labelNames: ["method"], registers: [this.registry] });
  readonly forwardedWrites = new Counter({ name: "verity_forwarded_writes_total", help: "Appends this node forwarded to the leader", registers: [this.registry] });
  readonly catchUpStreams = new Counter({ name: "verity_catch_up_streams_total", help: "Followers this leader caught up by streaming committed entries, by result", labelNames: ["result"], registers: [this.registry] });
  readonly catchUpEntries = new Counter({ name: "verity_catch_up_entries_total", help: "Entries this leader streamed to catch followers up", registers: [this.registry] });
  readonly activeTenants = new Gauge({ name: "verity_active_tenants", help: "Tenants with at least one stream", registers: [this.registry] });
  readonly appliedPosition = new Gauge({
    name: "verity_projection_applied_position",
    help: "Last log position applied on this node (no label), and per tenant the position its projections are applied up to",
    labelNames: ["tenant"],
    registers: [this.registry],
  });
  readonly authFailures = new Counter({
    name: "verity_auth_failures_total",
    help: "Calls refused for a missing, foreign or role-less certificate identity",
    labelNames: ["port"],
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: "verity_process_" });
  }
}

/** Serves GET /metrics on its own port (plain HTTP; the settings keep it on loopback unless TLS or --insecure). */
export class MetricsServer {
  private readonly server: http.Server;
  private boundAddress = "";

  constructor(
    private readonly metrics: NodeMetrics,
    private readonly listen: string,
    private readonly beforeScrape: () => void,
  ) {
    this.server = http.createServer((req, res) => void this.handle(req, res));
  }

  get address(): string {
    return this.boundAddress;
  }

  async start(): Promise<void> {
    this.boundAddress = await listenOn(this.server, this.listen);
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (req.method !== "GET" || (req.url ?? "").split("?")[0] !== "/metrics") {
      res.writeHead(404, { "content-type": "text/plain" }).end("only GET /metrics is served on this port\n");
      return;
    }
    this.beforeScrape();
    res.writeHead(200, { "content-type": this.metrics.registry.contentType });
    res.end(await this.metrics.registry.metrics());
  }
}
