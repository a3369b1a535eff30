/**
 * gRPC method definitions over the protobufjs messages of proto/verity/v1, shared by every service
 * VerityDB serves or calls (Admin, Client, the Peer calls that carry client requests). Messages
 * become plain objects with 64-bit integers as numbers (positions and versions stay below 2^53).
 */

import * as grpc from "@grpc/grpc-js";
import { VerityError, grpcStatusOf } from "../errors.js";
import type protobuf from "protobufjs";
import { protoType } from "./proto.js";

export type Plain = Record<string, unknown>;

/** Serializer and deserializer of one message type, loaded on first use. */
export function messageCodec(name: string): { serialize(o: Plain): Buffer; deserialize(b: Buffer): Plain } {
  let type: protobuf.Type | undefined;
  const t = (): protobuf.Type => (type ??= protoType(name));
  return {
    serialize: (o) => Buffer.from(t().encode(t().fromObject(o)).finish()),
    deserialize: (b) => t().toObject(t().decode(b), { longs: Number, defaults: true, oneofs: true }) as Plain,
  };
}

/** One method of `service` (for example "Admin") taking `request` and answering `response`. */
export function grpcMethod(
  service: string,
  method: string,
  request: string,
  response: string,
  streaming: { requestStream?: boolean; responseStream?: boolean } = {},
): grpc.MethodDefinition<Plain, Plain> {
  const req = messageCodec(request);
  const res = messageCodec(response);
  return {
    path: `/verity.v1.${service}/${method}`,
    requestStream: streaming.requestStream ?? false,
    responseStream: streaming.responseStream ?? false,
    requestSerialize: req.serialize,
    requestDeserialize: req.deserialize,
    responseSerialize: res.serialize,
    responseDeserialize: res.deserialize,
  };
}

/** A gRPC error from an answer of another node (passed on unchanged when forwarded). */
function isServiceError(e: unknown): e is { code: number; details: string } {
  return typeof e === "object" && e !== null && typeof (e as { code?: unknown }).code === "number" && typeof (e as { details?: unknown }).details === "string";
}

/** The status a handler answers for `e`: a VerityError's mapped code, a peer's status, or INTERNAL. */
export function toServiceError(e: unknown): Partial<grpc.StatusObject> {
  if (e instanceof VerityError) return { code: grpcStatusOf[e.code], details: e.message };
  if (isServiceError(e)) return { code: e.code, details: e.details };
  return { code: grpc.status.INTERNAL, details: `internal error: ${e instanceof Error ? e.message : String(e)}; please report it with the node's log` };
}
