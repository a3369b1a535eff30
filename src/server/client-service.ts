/**
 * The Client gRPC service (proto/verity/v1/client.proto) on the client port: Append, Read,
 * ReadAll and Subscribe. With TLS, a caller needs a role for the tenant it names: a
 * `[[security.clients]]` grant listing the tenant, or the admin role (every tenant). Anyone else
 * gets PERMISSION_DENIED naming the identity, and the refusal is counted.
 */

import * as grpc from "@grpc/grpc-js";
import { ErrorCode, VerityError } from "../errors.js";
import type { ClientGrant } from "./setting-kinds.js";
import { grpcMethod, toServiceError, type Plain } from "./grpc-methods.js";
import { READ_LIMIT_DEFAULT, READ_LIMIT_MAX, READ_WAIT_MS, checkStream, checkTenant, type DataPlane, type ReadEvent } from "./data-plane.js";
import type { Projector } from "../projections/projector.js";
import type { QueryPool } from "../projections/query-pool.js";
import type { EventStateMachine } from "./event-apply.js";
import { traced } from "./tracing.js";

/** Events a subscription reads from the index per page. */
export const SUBSCRIBE_PAGE_EVENTS = 500;
/** How long a caught-up subscription waits for new events before it checks again. */
export const SUBSCRIBE_IDLE_WAIT_MS = 1_000;

export const CLIENT_SERVICE: grpc.ServiceDefinition = {
  append: grpcMethod("Client", "Append", "AppendRequest", "AppendResponse"),
  read: grpcMethod("Client", "Read", "ReadRequest", "ReadResponse"),
  readAll: grpcMethod("Client", "ReadAll", "ReadAllRequest", "ReadResponse"),
  subscribe: grpcMethod("Client", "Subscribe", "SubscribeRequest", "Event", { responseStream: true }),
  query: grpcMethod("Client", "Query", "QueryRequest", "QueryResponse"),
};

export interface ClientServiceTarget {
  /** The caller's certificate identity; undefined when it has none. */
  identityOf(peer: string): string | undefined;
  readonly tlsEnabled: boolean;
  readonly adminIdentities: readonly string[];
  readonly clientGrants: readonly ClientGrant[];
  readonly dataPlane: DataPlane;
  readonly stateMachine: EventStateMachine;
  readonly projector: Projector;
  readonly queryPool: QueryPool;
}

export interface ClientServiceMetrics {
  onAuthFailure(): void;
  /** One finished call: `method`, its gRPC status code, and its duration in seconds. */
  onCall(method: "append" | "read" | "read_all" | "query", code: number, seconds: number, events: number): void;
}

type Unary = grpc.ServerUnaryCall<Plain, Plain>;

function toEventMessage(e: ReadEvent): Plain {
  return { ...e };
}

/** The handlers; `target()` is undefined while the node starts (calls get UNAVAILABLE). */
export function clientHandlers(target: () => ClientServiceTarget | undefined, metrics: ClientServiceMetrics): grpc.UntypedServiceImplementation {
  const resolve = (call: { getPeer(): string }, tenant: string): ClientServiceTarget => {
    const t = target();
    if (t === undefined) throw new VerityError(ErrorCode.UNAVAILABLE, "the node is still starting; retry shortly");
    checkTenant(tenant);
    if (!t.tlsEnabled) return t;
    const identity = t.identityOf(call.getPeer());
    const allowed = identity !== undefined && (t.adminIdentities.includes(identity) || t.clientGrants.some((g) => g.identity === identity && g.tenants.includes(tenant)));
    if (!allowed) {
      metrics.onAuthFailure();
      const has = t.clientGrants.some((g) => g.identity === identity);
      throw new VerityError(
        ErrorCode.PERMISSION_DENIED,
        has
          ? `certificate identity "${identity}" may not use tenant "${tenant}": add the tenant to its [[security.clients]] tenants`
          : `certificate identity "${identity ?? "(none)"}" has no client role: add a [[security.clients]] table with identity = "${identity ?? "..."}" and tenants = ["${tenant}"]`,
      );
    }
    return t;
  };

  const unary = (method: "append" | "read" | "read_all" | "query", body: (call: Unary) => Promise<{ response: Plain; events: number }>) => (call: Unary, done: grpc.sendUnaryData<Plain>) => {
    const started = performance.now();
    body(call).then(
      ({ response, events }) => {
        metrics.onCall(method, grpc.status.OK, (performance.now() - started) / 1000, events);
        done(null, response);
      },
      (e: unknown) => {
        const status = toServiceError(e);
        metrics.onCall(method, status.code ?? grpc.status.UNKNOWN, (performance.now() - started) / 1000, 0);
        done(status);
      },
    );
  };

  const limitOf = (r: Plain): number => {
    const limit = Number(r.limit ?? 0);
    return limit === 0 ? READ_LIMIT_DEFAULT : Math.min(limit, READ_LIMIT_MAX);
  };

  return {
    append: unary("append", (call) => {
      const r = call.request;
      const events = ((r.events ?? []) as unknown[]).length;
      return traced("verity.write", { "verity.tenant": String(r.tenant ?? ""), "verity.stream": String(r.stream ?? ""), "verity.events": events }, async (span) => {
        const t = resolve(call, String(r.tenant ?? ""));
        const answer = await t.dataPlane.append(r);
        span?.setAttributes({ "verity.position.first": answer.firstPosition, "verity.deduplicated": answer.deduplicated });
        return { response: { ...answer }, events };
      });
    }),
    read: unary("read", (call) => traced("verity.query", { "verity.method": "Read", "verity.tenant": String(call.request.tenant ?? "") }, async () => {
      const r = call.request;
      const tenant = String(r.tenant ?? "");
      const t = resolve(call, tenant);
      const stream = checkStream(String(r.stream ?? ""));
      const { applied, lag } = await t.dataPlane.barrier(Number(r.consistency ?? 0) === 0);
      const rows = t.stateMachine.store.streamEvents(tenant, stream, Number(r.fromVersion ?? 0), limitOf(r));
      const events = await t.dataPlane.load(rows);
      return { response: { events: events.map(toEventMessage), appliedPosition: applied, lagEntries: lag }, events: events.length };
    })),
    readAll: unary("read_all", (call) => traced("verity.query", { "verity.method": "ReadAll", "verity.tenant": String(call.request.tenant ?? "") }, async () => {
      const r = call.request;
      const tenant = String(r.tenant ?? "");
      const t = resolve(call, tenant);
      const { applied, lag } = await t.dataPlane.barrier(Number(r.consistency ?? 0) === 0);
      const rows = t.stateMachine.store.tenantEvents(tenant, Number(r.fromPosition ?? 0), limitOf(r));
      const events = await t.dataPlane.load(rows);
      return { response: { events: events.map(toEventMessage), appliedPosition: applied, lagEntries: lag }, events: events.length };
    })),
    query: unary("query", (call) => traced("verity.query", { "verity.method": "Query", "verity.tenant": String(call.request.tenant ?? "") }, async () => {
      const r = call.request;
      const tenant = String(r.tenant ?? "");
      const t = resolve(call, tenant);
      const params = (r.params ?? {}) as Record<string, string>;
      const linearizable = Number(r.consistency ?? 0) === 0;
      const { applied } = await t.dataPlane.barrier(linearizable);
      const projections = await t.projector.tenant(tenant); // NOT_FOUND for an unknown tenant
      if (linearizable && !(await t.projector.waitProjected(tenant, applied, READ_WAIT_MS))) {
        throw new VerityError(ErrorCode.UNAVAILABLE, `this node's projections of tenant "${tenant}" did not reach the read point ${applied} within ${READ_WAIT_MS} ms (a rebuild or a long backlog); retry, or query with consistency LOCAL`);
      }
      const answeredAt = projections.appliedPosition;
      const result = await t.projector.query(t.queryPool, tenant, { sql: String(r.sql ?? ""), params, limit: Number(r.limit ?? 0) });
      return {
        // The position read in the rows' own snapshot; the one read before is only a fallback.
        response: { columns: result.columns, rowsJson: result.rows.map((row) => JSON.stringify(row)), truncated: result.truncated, appliedPosition: result.position ?? answeredAt },
        events: result.rows.length,
      };
    })),
    subscribe: (call: grpc.ServerWritableStream<Plain, Plain>) => {
      subscribe(call, resolve).catch((e: unknown) => {
        // grpc-js turns an 'error' event into the call's final status.
        if (!call.cancelled) call.emit("error", toServiceError(e));
      });
    },
  };
}

/**
 * Sends the tenant's (or one stream's) committed events from `from_position` on, then follows new
 * ones as this node applies them, until the client cancels. Flow control: it waits for the
 * stream to drain before reading the next page, so a slow subscriber holds at most one page.
 */
async function subscribe(
  call: grpc.ServerWritableStream<Plain, Plain>,
  resolve: (call: { getPeer(): string }, tenant: string) => ClientServiceTarget,
): Promise<void> {
  const r = call.request;
  const tenant = String(r.tenant ?? "");
  const t = resolve(call, tenant);
  const stream = String(r.stream ?? "") === "" ? undefined : checkStream(String(r.stream));
  let next = Math.max(1, Number(r.fromPosition ?? 0));
  let wake: (() => void) | undefined;
  const unsubscribe = t.stateMachine.onApplied(() => wake?.());
  const cancelled = new Promise<void>((done) => call.on("cancelled", () => done()));
  try {
    // Bounded by the client: the loop ends when it cancels or the stream fails.
    while (!call.cancelled && !call.destroyed) {
      const rows = t.stateMachine.store.tenantEvents(tenant, next, SUBSCRIBE_PAGE_EVENTS, stream);
      if (rows.length === 0) {
        await Promise.race([
          new Promise<void>((done) => {
            wake = done;
            setTimeout(done, SUBSCRIBE_IDLE_WAIT_MS);
          }),
          cancelled,
        ]);
        wake = undefined;
        continue;
      }
      const events = await t.dataPlane.load(rows);
      for (const e of events) {
        if (!call.write(toEventMessage(e))) {
          await Promise.race([new Promise<void>((done) => call.once("drain", () => done())), cancelled]);
        }
        if (call.cancelled) return;
      }
      next = events[events.length - 1]!.position + 1;
    }
  } finally {
    unsubscribe();
  }
}
