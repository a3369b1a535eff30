/** What every VerityDB gRPC client shares: credentials from the TLS files, and endpoint targets. */

import { readFileSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";

export interface ClientTlsFiles {
  ca: string;
  cert: string;
  key: string;
}

/** Mutual TLS from the files (read once), or plaintext without them. */
export function clientCredentials(tls: ClientTlsFiles | undefined): grpc.ChannelCredentials {
  return tls === undefined
    ? grpc.credentials.createInsecure()
    : grpc.credentials.createSsl(readFileSync(tls.ca), readFileSync(tls.key), readFileSync(tls.cert));
}

/**
 * The gRPC target for an endpoint. 127.0.0.1 becomes localhost, so the TLS server name is a host
 * name (certificates name both; Node warns about IP addresses as server names).
 */
export function targetOf(endpoint: string): string {
  return endpoint.replace(/^127\.0\.0\.1:/, "localhost:");
}

/**
 * Codes after which the same call may succeed on another endpoint or a little later.
 * RESOURCE_EXHAUSTED is not one: it mostly means the request is over a size limit.
 */
export function isRetryable(code: number | undefined): boolean {
  return code === grpc.status.UNAVAILABLE || code === grpc.status.DEADLINE_EXCEEDED || code === grpc.status.ABORTED;
}
