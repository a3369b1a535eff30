/**
 * The Admin gRPC service (proto/verity/v1/admin.proto) on the client port: cluster and node
 * status, membership changes and leadership transfer. With TLS, only certificate identities in
 * `[security] admins` may call it; anyone else gets PERMISSION_DENIED naming the identity.
 * Refusals from the core map to gRPC status through the one table in src/errors.ts.
 */

import * as grpc from "@grpc/grpc-js";
import { grpcStatusOf, type ErrorCode } from "../errors.js";
import type { NodeId } from "../log/types.js";
import type { MembershipChange } from "../consensus/types.js";
import { grpcMethod, toServiceError } from "./grpc-methods.js";
import type { TenantAdmin } from "./tenant-admin.js";
import type { EncryptionAdmin } from "./encryption-admin.js";

/** What the service needs from the node (src/server/node.ts implements it). */
export interface AdminTarget {
  /** The caller's certificate identity ("" in plaintext; undefined when it has none). */
  identityOf(peer: string): string | undefined;
  /** Identities with the admin role; consulted only when `tlsEnabled`. */
  readonly adminIdentities: readonly string[];
  readonly tlsEnabled: boolean;
  nodeStatus(): Record<string, unknown>;
  clusterStatus(): Record<string, unknown>;
  /** Resolves with the new leader once leadership moved, or throws an AdminError. */
  transferLeadership(to: number): Promise<number>;
  /** Resolves with the committed configuration, or throws an AdminError. */
  changeMembership(change: MembershipChange | { type: "ADD_LEARNER_AT"; address: string }): Promise<Record<string, unknown>>;
  /** Tenants, schema and projections. */
  tenantAdmin(): TenantAdmin;
  /** The commit index this node knows. */
  commitIndex(): number;
  /** At-rest encryption status and rotation of this node's files. */
  encryptionAdmin(): EncryptionAdmin;
}

/** A refusal with its error code, mapped to a gRPC status for the caller. */
export class AdminError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
  ) {
    super(message);
  }
}

const unary = (method: string, request: string, response: string) => grpcMethod("Admin", method, request, response);

export const ADMIN_SERVICE: grpc.ServiceDefinition = {
  clusterStatus: unary("ClusterStatus", "ClusterStatusRequest", "ClusterStatusResponse"),
  nodeStatus: unary("NodeStatus", "NodeStatusRequest", "NodeStatus"),
  addLearner: unary("AddLearner", "AddLearnerRequest", "MembershipResponse"),
  promoteMember: unary("PromoteMember", "MemberRequest", "MembershipResponse"),
  removeMember: unary("RemoveMember", "MemberRequest", "MembershipResponse"),
  transferLeadership: unary("TransferLeadership", "TransferLeadershipRequest", "TransferLeadershipResponse"),
  createTenant: unary("CreateTenant", "TenantRequest", "CommandResponse"),
  listTenants: unary("ListTenants", "ListTenantsRequest", "ListTenantsResponse"),
  showTenant: unary("ShowTenant", "TenantRequest", "TenantInfo"),
  migrate: unary("Migrate", "MigrateRequest", "CommandResponse"),
  showSchema: unary("ShowSchema", "TenantRequest", "SchemaInfo"),
  createProjection: unary("CreateProjection", "CreateProjectionRequest", "CommandResponse"),
  projectionStatus: unary("ProjectionStatus", "TenantRequest", "ProjectionStatusResponse"),
  rebuildProjection: unary("RebuildProjection", "ProjectionRequest", "CommandResponse"),
  setReadOnly: unary("SetReadOnly", "SetReadOnlyRequest", "CommandResponse"),
  encryptionStatus: unary("EncryptionStatus", "EncryptionStatusRequest", "EncryptionStatusResponse"),
  rotateEncryption: unary("RotateEncryption", "RotateEncryptionRequest", "EncryptionStatusResponse"),
};

type Call = grpc.ServerUnaryCall<Record<string, unknown>, Record<string, unknown>>;
type Done = grpc.sendUnaryData<Record<string, unknown>>;

/** Builds the handlers; `onAuthFailure` counts refused callers. */
export function adminHandlers(target: AdminTarget, onAuthFailure: () => void): grpc.UntypedServiceImplementation {
  const guarded = (body: (request: Record<string, unknown>) => Promise<Record<string, unknown>>) => (call: Call, done: Done) => {
    if (target.tlsEnabled) {
      const identity = target.identityOf(call.getPeer());
      if (identity === undefined || !target.adminIdentities.includes(identity)) {
        onAuthFailure();
        done({
          code: grpc.status.PERMISSION_DENIED,
          details: `certificate identity "${identity ?? "(none)"}" has no admin role: add it to [security] admins to use the admin API`,
        });
        return;
      }
    }
    body(call.request).then(
      (response) => done(null, response),
      (e: unknown) => done(e instanceof AdminError ? { code: grpcStatusOf[e.code], details: e.message } : toServiceError(e)),
    );
  };
  const nodeId = (request: Record<string, unknown>): NodeId => {
    const id = Number(request.nodeId);
    if (!Number.isSafeInteger(id) || id < 1) throw new AdminError("INVALID_ARGUMENT", `node_id ${String(request.nodeId)} is not a positive integer`);
    return id as NodeId;
  };
  return {
    clusterStatus: guarded(async () => target.clusterStatus()),
    nodeStatus: guarded(async () => target.nodeStatus()),
    transferLeadership: guarded(async (r) => ({ newLeader: await target.transferLeadership(Number(r.to ?? 0)) })),
    addLearner: guarded(async (r) => {
      const address = String(r.address ?? "");
      if (!/^[^\s:]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$/.test(address)) {
        throw new AdminError("INVALID_ARGUMENT", `address "${address}" is not host:port: give the new node's cluster address`);
      }
      return target.changeMembership({ type: "ADD_LEARNER_AT", address });
    }),
    promoteMember: guarded(async (r) => target.changeMembership({ type: "PROMOTE_LEARNER", node: nodeId(r) })),
    removeMember: guarded(async (r) => target.changeMembership({ type: "REMOVE_NODE", node: nodeId(r) })),
    createTenant: guarded(async (r) => target.tenantAdmin().createTenant(String(r.tenant ?? ""))),
    listTenants: guarded(async () => ({ tenants: await target.tenantAdmin().listTenants() })),
    showTenant: guarded(async (r) => ({ ...(await target.tenantAdmin().showTenant(String(r.tenant ?? ""))) })),
    migrate: guarded(async (r) => target.tenantAdmin().migrate(String(r.tenant ?? ""), String(r.sql ?? ""), String(r.name ?? ""))),
    showSchema: guarded(async (r) => (await target.tenantAdmin().schema(String(r.tenant ?? ""))) as Record<string, unknown>),
    createProjection: guarded(async (r) => target.tenantAdmin().createProjection(String(r.tenant ?? ""), String(r.definition ?? ""), Boolean(r.fromStart))),
    projectionStatus: guarded(async (r) => (await target.tenantAdmin().projectionStatus(String(r.tenant ?? ""), target.commitIndex())) as Record<string, unknown>),
    rebuildProjection: guarded(async (r) => target.tenantAdmin().rebuildProjection(String(r.tenant ?? ""), String(r.projection ?? ""))),
    setReadOnly: guarded(async (r) => target.tenantAdmin().setReadOnly(Boolean(r.on), String(r.reason ?? ""))),
    encryptionStatus: guarded(async () => ({ ...(await target.encryptionAdmin().status()) })),
    rotateEncryption: guarded(async (r) => ({ ...(await target.encryptionAdmin().rotate({ rewrapOnly: Boolean(r.rewrapOnly) })) })),
  };
}
