/**
 * EVENTS log entries (proto/verity/v1/entries.proto EventRecord) to and from `EventEntry`, the
 * decoded form apply-events.ts decides on. Decoding never throws on bad bytes: a committed entry
 * that does not decode is reported as undefined and applied as void on every node alike.
 */

import type protobuf from "protobufjs";
import { protoType } from "../server/proto.js";
import type { EventEntry, ExpectedVersion } from "./apply-events.js";

let recordType: protobuf.Type | undefined;
const eventRecord = (): protobuf.Type => (recordType ??= protoType("EventRecord"));

/** The body of one event as the leader proposes it. */
export interface NewEventRecord {
  readonly stream: string;
  readonly eventId: string;
  readonly type: string;
  readonly data: Uint8Array;
  readonly metadata: Readonly<Record<string, string>>;
  readonly timestampMs: number;
  readonly batch: { readonly requestId: string; readonly count: number; readonly seq: number; readonly expectedVersion: ExpectedVersion | undefined };
}

function expectedToProto(e: ExpectedVersion): object {
  switch (e.kind) {
    case "any":
      return { any: true };
    case "no-stream":
      return { noStream: true };
    case "exact":
      return { exact: e.version };
  }
}

/** Reads an ExpectedVersion message (as decoded with `oneofs: true`); undefined when unset. */
export function expectedFromProto(o: unknown): ExpectedVersion | undefined {
  if (typeof o !== "object" || o === null) return undefined;
  const v = o as { kind?: string; exact?: unknown };
  switch (v.kind) {
    case "any":
      return { kind: "any" };
    case "noStream":
      return { kind: "no-stream" };
    case "exact":
      return { kind: "exact", version: Number(v.exact) };
    default:
      return undefined;
  }
}

export function encodeEventRecord(r: NewEventRecord): Uint8Array {
  const t = eventRecord();
  const batch: Record<string, unknown> = { requestId: r.batch.requestId, count: r.batch.count, seq: r.batch.seq };
  if (r.batch.expectedVersion !== undefined) batch.expectedVersion = expectedToProto(r.batch.expectedVersion);
  return t.encode(
    t.fromObject({
      stream: r.stream, eventId: r.eventId, type: r.type, data: r.data, metadata: r.metadata, timestampMs: r.timestampMs, batch,
    }),
  ).finish();
}

/** Decodes the payload of the EVENTS entry at `position` of `tenant`; undefined when it does not decode. */
export function decodeEventRecord(position: number, tenant: string, payload: Uint8Array): EventEntry | undefined {
  let o: Record<string, unknown>;
  try {
    const t = eventRecord();
    o = t.toObject(t.decode(payload), { longs: Number, defaults: true, oneofs: true }) as Record<string, unknown>;
  } catch {
    return undefined;
  }
  const b = (o.batch ?? {}) as Record<string, unknown>;
  return {
    position,
    tenant,
    stream: String(o.stream),
    eventId: String(o.eventId),
    type: String(o.type),
    data: o.data as Uint8Array,
    metadata: (o.metadata ?? {}) as Record<string, string>,
    timestampMs: Number(o.timestampMs),
    batch: {
      requestId: String(b.requestId ?? ""),
      count: Number(b.count ?? 0),
      seq: Number(b.seq ?? 0),
      expectedVersion: expectedFromProto(b.expectedVersion),
    },
  };
}

/** An ADMIN entry's command (proto AdminCommand), with its body as plain JSON for the projector. */
export type AdminCommand =
  | { readonly kind: "createTenant"; readonly body: Record<string, never> }
  | { readonly kind: "migrate"; readonly body: { readonly name: string; readonly sql: string } }
  | { readonly kind: "createProjection"; readonly body: { readonly definitionJson: string; readonly fromStart: boolean } }
  | { readonly kind: "rebuildProjection"; readonly body: { readonly name: string } }
  | { readonly kind: "setReadOnly"; readonly body: { readonly on: boolean; readonly reason: string } };

let adminType: protobuf.Type | undefined;
const adminCommandType = (): protobuf.Type => (adminType ??= protoType("AdminCommand"));

export function encodeAdminCommand(c: AdminCommand): Uint8Array {
  const t = adminCommandType();
  return t.encode(t.fromObject({ [c.kind]: c.body })).finish();
}

/** Decodes an ADMIN entry's payload; undefined when it does not decode. */
export function decodeAdminCommand(payload: Uint8Array): AdminCommand | undefined {
  try {
    const t = adminCommandType();
    const o = t.toObject(t.decode(payload), { defaults: true, oneofs: true }) as Record<string, unknown>;
    const kind = o.command as AdminCommand["kind"] | undefined;
    const body = (o[kind ?? ""] ?? {}) as Record<string, unknown>;
    switch (kind) {
      case "createTenant":
        return { kind, body: {} };
      case "migrate":
        return { kind, body: { name: String(body.name ?? ""), sql: String(body.sql ?? "") } };
      case "createProjection":
        return { kind, body: { definitionJson: String(body.definitionJson ?? ""), fromStart: Boolean(body.fromStart) } };
      case "rebuildProjection":
        return { kind, body: { name: String(body.name ?? "") } };
      case "setReadOnly":
        return { kind, body: { on: Boolean(body.on), reason: String(body.reason ?? "") } };
      default:
        return undefined;
    }
  } catch {
    return undefined;
  }
}
