/**
 * Creates the benchmark's tenants through the Admin API's CreateTenant (a replicated command),
 * since appends to a tenant that does not exist are refused. A server built before tenants
 * existed answers UNIMPLEMENTED; then there is nothing to create.
 */

import * as grpc from "@grpc/grpc-js";
import { grpcMethod } from "../src/server/grpc-methods.js";
import { targetOf } from "../src/client/channel.js";

/** Tries of one CreateTenant while the new cluster settles (UNAVAILABLE: no leader yet, ...). */
const CREATE_ATTEMPTS_MAX = 50;
const CREATE_RETRY_MS = 200;
const CREATE_TIMEOUT_MS = 15_000;

const TenantAdmin = grpc.makeGenericClientConstructor({ createTenant: grpcMethod("Admin", "CreateTenant", "TenantRequest", "CommandResponse") }, "Admin");
type Stub = grpc.Client & { createTenant(r: object, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null) => void): void };

function createOnce(stub: Stub, tenant: string): Promise<grpc.ServiceError | null> {
  return new Promise((resolve) => stub.createTenant({ tenant }, { deadline: new Date(Date.now() + CREATE_TIMEOUT_MS) }, (e) => resolve(e)));
}

/**
 * Creates each tenant on the cluster through `endpoint` (plaintext). Returns false when the server
 * has no CreateTenant (it accepts any tenant), true when they exist now.
 */
export async function createTenants(endpoint: string, tenants: readonly string[]): Promise<boolean> {
  const stub = new TenantAdmin(targetOf(endpoint), grpc.credentials.createInsecure()) as unknown as Stub;
  try {
    for (const tenant of tenants) {
      // Bounded: CREATE_ATTEMPTS_MAX tries.
      for (let attempt = 1; ; attempt++) {
        const e = await createOnce(stub, tenant);
        if (e === null || e.code === grpc.status.ALREADY_EXISTS) break;
        if (e.code === grpc.status.UNIMPLEMENTED) return false;
        const retryable = e.code === grpc.status.UNAVAILABLE || e.code === grpc.status.DEADLINE_EXCEEDED;
        if (!retryable || attempt >= CREATE_ATTEMPTS_MAX) {
          throw new Error(`cannot create tenant "${tenant}" on ${endpoint}: ${grpc.status[e.code] ?? e.code}: ${e.details || e.message}`);
        }
        await new Promise((r) => setTimeout(r, CREATE_RETRY_MS));
      }
    }
    return true;
  } finally {
    stub.close();
  }
}
