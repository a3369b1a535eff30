/**
 * The VerityDB client library (what the `verity` CLI, the tests and the benchmarks use): Append,
 * Read, ReadAll and Subscribe over gRPC, with mutual TLS.
 *
 * Given several endpoints it sticks to one that works and moves on to the next when it is
 * unreachable or answers UNAVAILABLE (not leading and no leader known, stopping, ...). Every append
 * carries a request id (a UUID unless the caller gives one) and is retried with the same id, so a
 * retry after a lost answer returns the first result instead of appending twice. Subscriptions
 * resume after the last event they delivered.
 */

import { randomUUID } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import { CLIENT_SERVICE } from "../server/client-service.js";
import type { Plain } from "../server/grpc-methods.js";
import type { ReadEvent } from "../server/data-plane.js";
import { clientCredentials, isRetryable, targetOf, type ClientTlsFiles } from "./channel.js";

/** Tries of one call across the endpoints before it fails. */
export const CALL_ATTEMPTS_MAX = 10;
/** Backoff between tries. */
export const RETRY_DELAY_MS_MIN = 50;
export const RETRY_DELAY_MS_MAX = 1_000;
/** Deadline of one try (the server answers an append within 10 s, forwarding included). */
export const CALL_TIMEOUT_MS = 15_000;
/** Largest answer accepted (a read answer is at most 16 MiB of payload). */
const RECEIVE_BYTES_MAX = 64 * 1024 * 1024;

export type Consistency = "linearizable" | "local";
export type ExpectedVersion = number | "any" | "no-stream";

export interface NewEvent {
  type: string;
  /** Bytes, a string stored as its UTF-8 text, or any other value stored as its JSON text. */
  data: Uint8Array | string | number | boolean | null | object;
  metadata?: Record<string, string>;
  eventId?: string;
}

export interface AppendResult {
  firstPosition: number;
  lastPosition: number;
  firstVersion: number;
  lastVersion: number;
  /** The server recognised the request id: this is the first attempt's result. */
  deduplicated: boolean;
  requestId: string;
}

/** An event as stored: its position (log index), stream, version and body. */
export type StoredEvent = ReadEvent;

export interface QueryResult {
  columns: string[];
  /** One array per row, values in column order (a blob is `{"$base64": "..."}`). */
  rows: unknown[][];
  /** The row limit cut the result. */
  truncated: boolean;
  /** The position the tenant's projections were applied up to when the query ran. */
  appliedPosition: number;
}

export interface ReadResult {
  events: StoredEvent[];
  appliedPosition: number;
  lagEntries: number;
}

/** A call that failed on every try; `code` is the gRPC status of the last answer. */
export class VerityClientError extends Error {
  constructor(
    readonly code: number,
    message: string,
    readonly attempts: readonly string[],
  ) {
    super(message);
    this.name = "VerityClientError";
  }

  get codeName(): string {
    return grpc.status[this.code] ?? String(this.code);
  }
}

export interface VerityClientOptions {
  endpoints: readonly string[];
  tls?: ClientTlsFiles | undefined;
  /** Tries per call (default CALL_ATTEMPTS_MAX). */
  attempts?: number;
}

const ClientStub = grpc.makeGenericClientConstructor(CLIENT_SERVICE, "Client");
type UnaryFn = (r: Plain, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r: Plain) => void) => grpc.ClientUnaryCall;
type Stub = grpc.Client & { append: UnaryFn; read: UnaryFn; readAll: UnaryFn; query: UnaryFn; subscribe(r: Plain, o: grpc.CallOptions): grpc.ClientReadableStream<Plain> };

function encodeData(data: NewEvent["data"]): Uint8Array {
  if (data instanceof Uint8Array) return data;
  return Buffer.from(typeof data === "string" ? data : JSON.stringify(data), "utf8");
}

function expectedToProto(e: ExpectedVersion | undefined): Plain | undefined {
  if (e === undefined || e === "any") return undefined;
  if (e === "no-stream") return { noStream: true };
  return { exact: e };
}

function toStored(o: Plain): StoredEvent {
  return {
    position: Number(o.position), stream: String(o.stream), version: Number(o.version), eventId: String(o.eventId), type: String(o.type),
    data: o.data as Uint8Array, metadata: (o.metadata ?? {}) as Record<string, string>, timestampMs: Number(o.timestampMs),
  };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class VerityClient {
  private readonly credentials: grpc.ChannelCredentials;
  private readonly stubs = new Map<string, Stub>();
  /** The endpoint that answered last: calls start there. */
  private current = 0;

  constructor(private readonly options: VerityClientOptions) {
    if (options.endpoints.length === 0) throw new Error("no endpoints: give at least one host:port (--endpoints or VERITY_ENDPOINTS)");
    this.credentials = clientCredentials(options.tls);
  }

  private stub(endpoint: string): Stub {
    let s = this.stubs.get(endpoint);
    if (s === undefined) {
      s = new ClientStub(targetOf(endpoint), this.credentials, {
        "grpc.max_receive_message_length": RECEIVE_BYTES_MAX,
        "grpc.max_send_message_length": RECEIVE_BYTES_MAX,
      }) as unknown as Stub;
      this.stubs.set(endpoint, s);
    }
    return s;
  }

  /** Runs one unary call, moving through the endpoints on retryable failures, with backoff. */
  private async unary(method: "append" | "read" | "readAll" | "query", request: Plain): Promise<Plain> {
    const endpoints = this.options.endpoints;
    const attempts: string[] = [];
    const tries = this.options.attempts ?? CALL_ATTEMPTS_MAX;
    let delay = RETRY_DELAY_MS_MIN;
    let lastCode: number = grpc.status.UNAVAILABLE;
    for (let attempt = 0; attempt < tries; attempt++) {
      const endpoint = endpoints[this.current % endpoints.length]!;
      try {
        const stub = this.stub(endpoint);
        return await new Promise<Plain>((resolve, reject) =>
          stub[method](request, { deadline: new Date(Date.now() + CALL_TIMEOUT_MS) }, (e, r) => (e !== null ? reject(e) : resolve(r))),
        );
      } catch (e) {
        const err = e as grpc.ServiceError;
        lastCode = err.code ?? grpc.status.UNKNOWN;
        attempts.push(`${endpoint}: ${grpc.status[lastCode] ?? lastCode}: ${err.details || err.message}`);
        // A query the server stopped at its time limit would only run out of time again.
        const again = method === "query" ? lastCode === grpc.status.UNAVAILABLE : isRetryable(lastCode);
        if (!again) throw new VerityClientError(lastCode, err.details || err.message, attempts);
        this.current++;
        // After a full round of endpoints, wait before the next round.
        if ((attempt + 1) % endpoints.length === 0 || endpoints.length === 1) {
          await sleep(delay);
          delay = Math.min(RETRY_DELAY_MS_MAX, delay * 2);
        }
      }
    }
    throw new VerityClientError(lastCode, `no endpoint could serve the ${method} after ${attempts.length} tries: ${attempts.slice(-endpoints.length).join("; ")}`, attempts);
  }

  /** Appends `events` atomically to one stream. Retries reuse the request id, so it appends at most once. */
  async append(args: {
    tenant: string;
    stream: string;
    events: readonly NewEvent[];
    expectedVersion?: ExpectedVersion;
    requestId?: string;
  }): Promise<AppendResult> {
    const requestId = args.requestId ?? randomUUID();
    const request: Plain = {
      tenant: args.tenant,
      stream: args.stream,
      events: args.events.map((e) => ({ type: e.type, data: encodeData(e.data), metadata: e.metadata ?? {}, eventId: e.eventId ?? "" })),
      requestId,
    };
    const expected = expectedToProto(args.expectedVersion);
    if (expected !== undefined) request.expectedVersion = expected;
    const r = await this.unary("append", request);
    return {
      firstPosition: Number(r.firstPosition), lastPosition: Number(r.lastPosition), firstVersion: Number(r.firstVersion),
      lastVersion: Number(r.lastVersion), deduplicated: Boolean(r.deduplicated), requestId,
    };
  }

  /** Events of one stream from version `fromVersion` (default 0). */
  async read(args: { tenant: string; stream: string; fromVersion?: number; limit?: number; consistency?: Consistency }): Promise<ReadResult> {
    const r = await this.unary("read", {
      tenant: args.tenant, stream: args.stream, fromVersion: args.fromVersion ?? 0, limit: args.limit ?? 0, consistency: args.consistency === "local" ? 1 : 0,
    });
    return { events: ((r.events ?? []) as Plain[]).map(toStored), appliedPosition: Number(r.appliedPosition), lagEntries: Number(r.lagEntries) };
  }

  /** Events of a tenant, across its streams, from position `fromPosition`. */
  async readAll(args: { tenant: string; fromPosition?: number; limit?: number; consistency?: Consistency }): Promise<ReadResult> {
    const r = await this.unary("readAll", {
      tenant: args.tenant, fromPosition: args.fromPosition ?? 0, limit: args.limit ?? 0, consistency: args.consistency === "local" ? 1 : 0,
    });
    return { events: ((r.events ?? []) as Plain[]).map(toStored), appliedPosition: Number(r.appliedPosition), lagEntries: Number(r.lagEntries) };
  }

  /**
   * A read-only SQL query over the tenant's projections. `params` bind `:name` (as text; SQLite
   * converts them when compared with numeric columns). LINEARIZABLE (the default) answers after
   * this node's projections reached the leader's read point.
   */
  async query(args: { tenant: string; sql: string; params?: Record<string, string | number>; consistency?: Consistency; limit?: number }): Promise<QueryResult> {
    const params: Record<string, string> = {};
    for (const [k, v] of Object.entries(args.params ?? {})) params[k] = String(v);
    const r = await this.unary("query", { tenant: args.tenant, sql: args.sql, params, consistency: args.consistency === "local" ? 1 : 0, limit: args.limit ?? 0 });
    return {
      columns: (r.columns ?? []) as string[],
      rows: ((r.rowsJson ?? []) as string[]).map((row) => JSON.parse(row) as unknown[]),
      truncated: Boolean(r.truncated),
      appliedPosition: Number(r.appliedPosition),
    };
  }

  /**
   * Committed events of a tenant (or one stream) from `fromPosition`, then new ones as they come,
   * until `signal` aborts. A broken connection is resumed after the last event delivered, on the
   * next endpoint; it gives up after CALL_ATTEMPTS_MAX failures in a row without an event.
   */
  async *subscribe(args: { tenant: string; stream?: string; fromPosition?: number; signal?: AbortSignal }): AsyncGenerator<StoredEvent> {
    let next = args.fromPosition ?? 0;
    let failures = 0;
    let delay = RETRY_DELAY_MS_MIN;
    const tries = this.options.attempts ?? CALL_ATTEMPTS_MAX;
    // Bounded: ends on abort, on a non-retryable error, or after `tries` failures in a row.
    const aborted = (): boolean => args.signal?.aborted === true;
    while (!aborted()) {
      const endpoint = this.options.endpoints[this.current % this.options.endpoints.length]!;
      const call = this.stub(endpoint).subscribe({ tenant: args.tenant, stream: args.stream ?? "", fromPosition: next }, {});
      const onAbort = (): void => call.cancel();
      args.signal?.addEventListener("abort", onAbort, { once: true });
      try {
        for await (const o of call as AsyncIterable<Plain>) {
          const e = toStored(o);
          failures = 0;
          delay = RETRY_DELAY_MS_MIN;
          next = e.position + 1;
          yield e;
        }
        return;
      } catch (e) {
        const err = e as grpc.ServiceError;
        if (aborted() || err.code === grpc.status.CANCELLED) return;
        if (!isRetryable(err.code) || ++failures >= tries) {
          throw new VerityClientError(err.code ?? grpc.status.UNKNOWN, `${endpoint}: ${err.details || err.message}`, [`${endpoint}: ${err.details || err.message}`]);
        }
        this.current++;
        await sleep(delay);
        delay = Math.min(RETRY_DELAY_MS_MAX, delay * 2);
      } finally {
        args.signal?.removeEventListener("abort", onAbort);
        call.cancel();
      }
    }
  }

  close(): void {
    for (const s of this.stubs.values()) s.close();
    this.stubs.clear();
  }
}
