/** Certificate identities: a client or node certificate's subject CN is the name VerityDB maps to a role. */

import type { PeerCertificate } from "node:tls";

/** The certificate's subject CN, or undefined when it has none. */
export function commonName(cert: PeerCertificate | undefined): string | undefined {
  const cn: unknown = cert?.subject?.CN;
  if (typeof cn === "string") return cn;
  return Array.isArray(cn) && typeof cn[0] === "string" ? cn[0] : undefined;
}
