/**
 * The Admin API from the command line and from tests: a gRPC client over `--endpoints` with mutual
 * TLS. Calls go to the endpoints in order; one that is unreachable, or is not the leader for an
 * operation that needs the leader, is skipped for the next.
 */

import * as grpc from "@grpc/grpc-js";
import { ADMIN_SERVICE } from "../server/admin-service.js";
import { clientCredentials, targetOf, type ClientTlsFiles } from "./channel.js";

/** How long one call may take (a membership change waits for its commit on the server). */
export const ADMIN_CALL_TIMEOUT_MS = 20_000;

export type { ClientTlsFiles } from "./channel.js";

export interface AdminClientOptions {
  endpoints: readonly string[];
  tls: ClientTlsFiles | undefined;
}

const AdminStub = grpc.makeGenericClientConstructor(ADMIN_SERVICE, "Admin");
type Stub = Record<string, (r: object, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r: Record<string, unknown>) => void) => void> & {
  close(): void;
};

/** A failed call, with every endpoint's answer. */
export class AdminCallError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

export class AdminApi {
  private readonly credentials: grpc.ChannelCredentials;

  constructor(private readonly options: AdminClientOptions) {
    this.credentials = clientCredentials(options.tls);
  }

  /** Calls `method` on the first endpoint that answers it (UNAVAILABLE moves on to the next). */
  async call(method: string, request: object): Promise<{ endpoint: string; response: Record<string, unknown> }> {
    const failures: string[] = [];
    let lastCode: number = grpc.status.UNAVAILABLE;
    for (const endpoint of this.options.endpoints) {
      const stub = new AdminStub(targetOf(endpoint), this.credentials) as unknown as Stub;
      try {
        const response = await new Promise<Record<string, unknown>>((resolve, reject) =>
          stub[method]!(request, { deadline: new Date(Date.now() + ADMIN_CALL_TIMEOUT_MS) }, (e, r) => (e ? reject(e) : resolve(r))),
        );
        return { endpoint, response };
      } catch (e) {
        const err = e as grpc.ServiceError;
        lastCode = err.code ?? grpc.status.UNKNOWN;
        failures.push(`${endpoint}: ${err.details || err.message}`);
        if (err.code !== grpc.status.UNAVAILABLE && err.code !== grpc.status.DEADLINE_EXCEEDED) {
          throw new AdminCallError(lastCode, failures.join("; "));
        }
      } finally {
        stub.close();
      }
    }
    throw new AdminCallError(lastCode, failures.length === 0 ? "no endpoints given" : failures.join("; "));
  }
}
